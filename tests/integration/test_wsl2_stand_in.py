"""The WSL2 driver for real on Linux, with only wsl.exe replaced: tests/wsl_stand_in.py on PATH as `wsl.exe`.

What runs is devenv's own code end to end (the VM backend, the WSL2 driver,
the export of the built debian-12 image, provisioning, the host agent, the
guest's docker engine answering through it and running a container) against
a distro that is a systemd-nspawn container of the exported rootfs, whose
sshd devenv reaches on 127.0.0.1 through the stand-in's copy of WSL's
localhost forwarding. What it does not prove: anything about the real
wsl.exe beyond the recorded outputs the stand-in replays, Windows paths
(/mnt/c), or WSL's own kernel (the container runs on this host's).

Needs root (nspawn, nsenter), systemd-nspawn, socat, qemu-img, debugfs and
the built debian-12 image in the cache (ci/test.sh builds it); skipped with
the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import hostagent, instance
from devenv.backends.drivers.wslexe import Wsl
from devenv.errors import StateError
from tests.steprecorder import StepRecorder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stand-in runs Linux containers"),
]

STAND_IN = Path(__file__).resolve().parent.parent / "wsl_stand_in.py"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the stand-in wsl.exe starts systemd-nspawn containers, which needs root"
    for tool in ("systemd-nspawn", "nsenter", "socat", "qemu-img"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (the stand-in wsl.exe needs it)"
    if shutil.which("debugfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        return "`debugfs` (e2fsprogs) is missing: the image cannot be exported"
    return None


def _built_image() -> Path:
    from devenv.images import cache

    record = cache.read_record("debian-12", "x86_64")
    if record is None or record.source != "built":
        pytest.skip("no built debian-12 image in the cache (`devenv image build debian-12` makes it)")
    return record.disk


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    why = _why_not()
    if why:
        pytest.skip(why)
    disk = _built_image()
    root = tmp_path_factory.mktemp("wsl")
    (root / "bin").mkdir()
    (root / "bin" / "wsl.exe").symlink_to(STAND_IN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{root / 'bin'}:{os.environ['PATH']}")
        mp.setenv("WSL_STAND_IN_STATE", str(root / "wsl-state"))
        mp.setenv("DEVENV_HOME", str(root / "home"))
        mp.setenv("DEVENV_CACHE", str(root / "cache"))  # the rootfs tarball goes here, not into the shared cache
        mp.setenv("DOCKER_CONFIG", str(root / "docker"))
        (root / "image.qcow2").symlink_to(disk)
        try:
            yield root
        finally:
            for inst in instance.all_instances():
                if isinstance(inst, instance.Instance):
                    instance.delete(inst.name, True, StepRecorder())
            for name in _listing():  # the stand-in's containers end with their distros
                subprocess.run(["wsl.exe", "--unregister", name], capture_output=True, check=False)


def _listing() -> dict[str, str]:
    return {d.name: d.state for d in Wsl().distros()}


def _project(env: Path, name: str) -> Path:
    project = env / f"project-{name}"
    project.mkdir(exist_ok=True)
    toml = project / "devenv.toml"
    toml.write_text(f'name = "{name}"\nbackend = "wsl2"\nimage = "{env / "image.qcow2"}"\n')
    return toml


def _devenv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devenv", *args], capture_output=True, text=True, timeout=300)


def test_import_start_exec_stop_delete_through_the_stand_in(env: Path) -> None:
    from devenv.images import wslexport

    # a distro of the user's own with devenv's prefix, made without devenv: it must survive everything below
    tarball = wslexport.export(env / "image.qcow2")
    subprocess.run(
        ["wsl.exe", "--import", "devenv-theirs", str(env / "theirs"), str(tarball), "--version", "2"], check=True
    )

    steps = StepRecorder()
    inst, _ = instance.start("wt", {}, _project(env, "wt"), steps)
    assert "import the WSL2 distro devenv-wt (wsl.exe --import)" in steps.seen
    assert (
        "find where sshd answers: 127.0.0.1:{}, else the distro's own address".format(
            (inst.dir / "ssh.port").read_text().strip()
        )
        in steps.seen
    )
    assert _listing() == {"devenv-theirs": "Stopped", "devenv-wt": "Running"}
    status = inst.status()
    assert status.state == "running", status.reason
    assert status.details["agent"] == "connected"
    assert status.details["ssh"] == f"127.0.0.1:{(inst.dir / 'ssh.port').read_text().strip()}"
    # the guest's sshd listens on the port WSL's localhost forwarding holds: never a (failed) forward of its own
    ssh_port = int((inst.dir / "ssh.port").read_text())
    time.sleep(2)  # the guest agent's port list has come in
    forwards = hostagent.state(inst.dir)["forwards"]
    assert all(f["host_port"] != ssh_port and f["status"] == "active" for f in forwards), forwards

    ran = _devenv("exec", "-n", "wt", "--", "sh", "-c", "cat /etc/devenv/wsl-owner; id -un; exit 3")
    assert ran.returncode == 3, ran.stderr
    owner, user = ran.stdout.splitlines()
    assert json.loads(owner)["instance"] == "wt" and json.loads(owner)["dir"] == str(inst.dir)
    assert user == "devenv"
    docker = subprocess.run(
        ["docker", "--context", "devenv-wt", "version", "--format", "{{.Server.Os}}"], capture_output=True, text=True
    )
    assert docker.stdout.strip() == "linux", docker.stderr
    from devenv.provision.engines import LOCAL_IMAGE

    hello = subprocess.run(
        ["docker", "--context", "devenv-wt", "run", "--rm", LOCAL_IMAGE, "echo", "hi from a container"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert hello.stdout == "hi from a container\n", hello.stderr

    steps = StepRecorder()
    instance.stop("wt", False, steps)
    assert steps.seen[-2:] == [
        "stop the engine (docker.service) and sync the disk",
        "terminate devenv-wt (wsl.exe --terminate)",
    ]
    assert _listing()["devenv-wt"] == "Stopped"
    assert instance.get("wt").status().state == "stopped"

    steps = StepRecorder()
    instance.start("wt", {}, _project(env, "wt"), steps)
    assert not any(s.startswith("import") for s in steps.seen)  # imported once
    assert _devenv("exec", "-n", "wt", "--", "true").returncode == 0

    instance.delete("wt", True, StepRecorder())
    assert _listing() == {"devenv-theirs": "Stopped"}
    assert not (env / "home" / "instances" / "wt").exists()


def test_an_instance_whose_distro_name_is_taken_is_refused(env: Path) -> None:
    if "devenv-theirs" not in _listing():
        from devenv.images import wslexport

        tarball = wslexport.export(env / "image.qcow2")
        subprocess.run(["wsl.exe", "--import", "devenv-theirs", str(env / "theirs"), str(tarball), "--version", "2"])
    with pytest.raises(StateError) as e:
        instance.start("theirs", {}, _project(env, "theirs"), StepRecorder())
    assert e.value.message == (
        "a WSL distro named devenv-theirs exists that devenv did not make for this instance; devenv leaves it alone"
    )
    assert _listing() == {"devenv-theirs": "Stopped"}
