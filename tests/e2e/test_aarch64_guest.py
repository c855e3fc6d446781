"""An aarch64 guest (what an Apple Silicon Mac boots, there with hvf), here emulated under TCG.

`arch = "aarch64"` in devenv.toml: QEMU's `virt` machine, the arm64 build of
the same debian-12 image (ci/test.sh builds it as root through qemu-user),
direct kernel boot, the guest agent and docker running natively in the
guest. The one part of the Apple Silicon path this cannot reach is hvf
itself (and a pulled image's UEFI boot: this image's kernel is started by
QEMU, which needs no firmware).

Its own VM, booted in this module and deleted at its end. The module sorts
first, so the boot happens before the shared VM of the other modules starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.images import cache
from devenv.provision.engines import LOCAL_IMAGE
from tests.e2e.conftest import Devenv

pytestmark = pytest.mark.e2e

NAME = "arm64"
UNAVAILABLE = "DEVENV_E2E_AARCH64_UNAVAILABLE"  # set by ci/test.sh, with the reason, when it could not build the image


@pytest.fixture(scope="module")
def arm(devenv_cli: Devenv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Devenv, Path]]:
    why = os.environ.get(UNAVAILABLE)
    if why:
        pytest.skip(f"no aarch64 image on this host: {why}")
    if shutil.which("qemu-system-aarch64") is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-system-aarch64 is missing; ci/test.sh installs it")
        pytest.skip("qemu-system-aarch64 is not installed (ci/test.sh installs it)")
    if cache.read_record("debian-12", "aarch64") is None:
        if os.environ.get("CI"):
            pytest.fail("the aarch64 debian-12 image is not cached; ci/test.sh builds it")
        pytest.skip("no cached aarch64 debian-12 image: `sudo devenv image build debian-12 --arch aarch64`")
    project = tmp_path_factory.mktemp("arm-project")
    (project / "devenv.toml").write_text(f'name = "{NAME}"\narch = "aarch64"\nmemory = "1536MiB"\n')
    (project / "from-host.txt").write_text("mounted on aarch64\n")
    d = Devenv(devenv_cli.home, devenv_cli.env, project)
    started = d.run("start", timeout=1200)
    try:
        assert started.returncode == 0, started.stderr.decode(errors="replace")
        assert f"instance `{NAME}` is running (backend qemu)" in started.stdout.decode()
        assert "start QEMU (tcg)" in started.stderr.decode()  # auto: another arch is emulated
        yield d, d.home / "instances" / NAME
    finally:
        d.run("delete", "--force", "-n", NAME, timeout=300)


def test_the_guest_is_aarch64_on_the_virt_machine(arm: tuple[Devenv, Path]) -> None:
    d, inst = arm
    assert d.ok("exec", "--", "uname", "-m").stdout == b"aarch64\n"
    argv = json.loads((inst / "qemu.argv").read_text())
    assert os.path.basename(argv[0]) == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt,memory-backend=ram0"  # its RAM in a file, for suspend
    assert argv[argv.index("-cpu") + 1] == "max,pauth-impdef=on"  # QARMA5 in software made every boot 2.3x slower
    assert "-kernel" in argv and "-bios" not in argv  # QEMU starts the image's kernel: no firmware needed
    assert "console=ttyAMA0" in argv[argv.index("-append") + 1]  # the PL011 UART, where readiness is announced
    st = json.loads(d.ok("status", "--json").stdout)
    assert (st["state"], st["arch"]) == ("running", "aarch64")
    assert b"  arch: aarch64\n" in d.ok("status").stdout


def test_the_engine_runs_arm64_containers_for_the_hosts_docker_cli(arm: tuple[Devenv, Path]) -> None:
    d, inst = arm
    sock = inst / "sock" / "docker.sock"
    env = {**d.env, "DOCKER_HOST": f"unix://{sock}"}
    version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Arch}}"], env=env, capture_output=True, timeout=120, check=False
    )
    assert (version.returncode, version.stdout) == (0, b"arm64\n"), version.stderr
    ran = subprocess.run(
        ["docker", "run", "--rm", LOCAL_IMAGE, "uname", "-m"], env=env, capture_output=True, timeout=300, check=False
    )
    assert (ran.returncode, ran.stdout) == (0, b"aarch64\n"), ran.stderr


def test_the_project_folder_and_the_agents_exec_path(arm: tuple[Devenv, Path]) -> None:
    d, _ = arm
    assert d.ok("exec", "--", "cat", "from-host.txt").stdout == b"mounted on aarch64\n"
    data = os.urandom(1 << 20)
    r = d.run("exec", "--", "sh", "-c", "sha256sum; exit 5", input=data)
    assert (r.returncode, r.stdout.split()[0]) == (5, hashlib.sha256(data).hexdigest().encode())


def test_stop_is_a_clean_power_off(arm: tuple[Devenv, Path]) -> None:
    """virt without firmware has no ACPI: QMP's powerdown reaches the guest as the gpio-keys power button."""
    d, inst = arm
    t0 = time.monotonic()
    d.ok("stop", "--shutdown", timeout=300)
    took = time.monotonic() - t0
    assert json.loads(d.ok("status", "--json").stdout)["state"] == "stopped"
    assert took < 60, f"stop took {took:.0f} s: the guest ignored the power button and was quit after the wait"
    assert b"reboot: Power down" in (inst / "serial.log").read_bytes()
