"""The VM backend's own code, whatever the hypervisor, against devenv.testing's sshd driver: seconds, no QEMU.

The "guest" is this host behind a real OpenSSH sshd of the instance's own
(its pinned host key, only its key accepted), with the real host agent, the
real guest agent and the host's real docker engine behind the forwarded
socket. What is asserted is what a user sees and what the VM backend decides
(steps, status, exit codes, files, errors); the QEMU driver runs the same
code in tests/e2e against a real guest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import hostagent, instance, paths, registry
from devenv.backends.base import InstanceRef, StepReporter
from devenv.backends.vm import VmBackend
from devenv.backends.vm.driver import Boot, BootStalled
from devenv.errors import StateError
from devenv.hostagent import client
from devenv.hostos import ping_unix
from devenv.testing import sshd_driver
from tests.steprecorder import StepRecorder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guest agent reads Linux /proc"),
]

ENGINE = "/var/run/docker.sock"
NAME = "vmt"


def _engine_or_skip() -> None:
    if not os.access(sshd_driver.SSHD, os.X_OK):
        pytest.skip(f"{sshd_driver.SSHD} is missing (ci/setup-linux.sh installs openssh-server)")
    if not ping_unix(ENGINE, timeout=2.0):
        if os.environ.get("CI"):
            pytest.fail(f"no docker engine answers at {ENGINE}; ci/setup-linux.sh --engine starts one")
        pytest.skip(f"no docker engine answers at {ENGINE} (the sshd driver's guest engine is the host's)")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private DEVENV_HOME and docker config, and the two sshd drivers registered as backends."""
    _engine_or_skip()
    root = tmp_path_factory.mktemp("vmb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEVENV_HOME", str(root / "home"))
        mp.setenv("DOCKER_CONFIG", str(root / "docker"))  # start makes a docker context: never the user's own
        mp.setenv(registry.EXTRA_ENV, sshd_driver.EXTRA_DRIVERS)  # for the host agent and the CLI processes
        registry.add_extra_drivers(sshd_driver.EXTRA_DRIVERS)  # and for this one
        try:
            yield root
        finally:
            for inst in instance.all_instances():
                if isinstance(inst, instance.Instance):
                    instance.delete(inst.name, True, StepRecorder())
            for item in sshd_driver.EXTRA_DRIVERS.split(";"):  # every one added above: later tests see none
                registry.unregister(item.partition("=")[0])


def _start(home: Path, name: str, backend: str = "sshd-test") -> tuple[instance.Instance, list[str]]:
    project = home / f"project-{name}"
    project.mkdir(exist_ok=True)
    (project / "devenv.toml").write_text(f'name = "{name}"\nbackend = "{backend}"\n')
    steps = StepRecorder()
    inst, _ = instance.start(name, {}, project / "devenv.toml", steps)
    return inst, steps.seen


@pytest.fixture(scope="module")
def started(home: Path) -> tuple[instance.Instance, list[str]]:
    return _start(home, NAME)


def test_start_runs_the_shared_steps_after_the_drivers_own(started: tuple[instance.Instance, list[str]]) -> None:
    _, seen = started
    assert seen == [
        "nothing to make: the guest is this host",
        "generate SSH keys and the first-boot seed",
        "prepare the first-boot seed",
        "start sshd",
        "boot: waiting for the guest's sshd",
        "guest ready: provisioning (first boot) and engine start",
        "log in with the pinned host key; host agent and guest agent",
        "docker engine answers",
        f"docker context devenv-{NAME}",
    ]


def test_status_is_running_with_the_endpoint_the_agent_and_the_engine(
    started: tuple[instance.Instance, list[str]],
) -> None:
    inst, _ = started
    st = inst.status()
    assert st.state == "running", st
    port = (inst.dir / paths.SSH_PORT).read_text().strip()
    assert st.details["ssh"] == f"127.0.0.1:{port}"
    assert st.details["agent"] == "connected"
    assert st.details["docker_host"] == hostagent.docker_env(inst.dir)["DOCKER_HOST"]
    assert st.details["pid"] == int((inst.dir / sshd_driver.PID_FILE).read_text())


def test_the_engine_answers_through_the_forwarded_socket(
    started: tuple[instance.Instance, list[str]], home: Path
) -> None:
    inst, _ = started
    env = {**os.environ, **inst.backend().docker_env(inst.ref)}
    r = subprocess.run(["docker", "version", "--format", "{{.Server.Os}}"], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, "linux"), r.stderr


def test_exec_through_the_agent_and_over_ssh_gives_output_and_exit_code(
    started: tuple[instance.Instance, list[str]],
) -> None:
    inst, _ = started
    for ask_agent in (True, False):  # the host agent's fd-passing exec; plain SSH when it is not asked
        r = _exec(inst.name, ask_agent)
        assert (r.returncode, r.stdout, r.stderr) == (7, "hi /\n", "err\n"), ask_agent


def _exec(name: str, ask_agent: bool) -> subprocess.CompletedProcess[str]:
    """`devenv exec` as the CLI runs it, in a process of its own (_EXEC below), stdin from /dev/null."""
    return subprocess.run(
        [sys.executable, "-c", _EXEC, name, str(ask_agent)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


# `devenv exec` as the CLI runs it, in a process of its own
_EXEC = """
import sys
from devenv import instance
from devenv.backends.base import ExecRequest
inst = instance.get(sys.argv[1])
req = ExecRequest(["sh", "-c", "echo hi $PWD; echo err >&2; exit 7"], cwd="/", ask_agent=sys.argv[2] == "True")
sys.exit(inst.backend().exec(inst.ref, req))
"""


def test_the_agent_runs_commands_in_the_guest(started: tuple[instance.Instance, list[str]], tmp_path: Path) -> None:
    inst, _ = started
    with open(os.devnull, "rb") as i, open(tmp_path / "o", "wb") as o, open(tmp_path / "e", "wb") as e:
        code = client.exec(
            inst.dir, ["sh", "-c", "echo $$ >&2; exit 3"], {}, None,
            stdin_fd=i.fileno(), stdout_fd=o.fileno(), stderr_fd=e.fileno(),
        )  # fmt: skip
    assert code == 3 and int((tmp_path / "e").read_text()) > 1


def test_cp_in_and_out_and_ssh_config(started: tuple[instance.Instance, list[str]], tmp_path: Path) -> None:
    inst, _ = started
    backend = inst.backend()
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(100_000))
    guest = tmp_path / "guest-copy.bin"  # the guest's filesystem is this host's
    backend.copy_in(inst.ref, src, str(guest))
    back = tmp_path / "back.bin"
    backend.copy_out(inst.ref, str(guest), back)
    assert back.read_bytes() == src.read_bytes()
    text = backend.ssh_config(inst.ref)
    assert f"Port {(inst.dir / paths.SSH_PORT).read_text().strip()}" in text and "HostName 127.0.0.1" in text
    assert (inst.dir / paths.SSH_CONFIG).read_text() == text  # start keeps the file for an Include


def test_a_killed_vm_is_broken_and_start_boots_it_again(
    started: tuple[instance.Instance, list[str]], home: Path
) -> None:
    inst, _ = started
    pid = int((inst.dir / sshd_driver.PID_FILE).read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (st := inst.status()).state != "broken" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert st.state == "broken" and st.reason.startswith("the VM process is gone"), st
    _, seen = _start(home, NAME)
    assert "start sshd" in seen and inst.status().state == "running"


def test_stop_powers_down_and_status_says_stopped(started: tuple[instance.Instance, list[str]]) -> None:
    inst, _ = started
    steps = StepRecorder()
    instance.stop(NAME, False, steps)
    assert steps.seen == ["stop the host agent", "SIGTERM sshd; up to 90 s for it to exit"]
    assert inst.status().state == "stopped"
    assert not hostagent.is_running(inst.dir)


def test_without_a_console_readiness_comes_over_ssh(home: Path) -> None:
    inst, seen = _start(home, "quiet", "sshd-noconsole")
    assert "guest ready: provisioning (first boot) and engine start" in seen
    assert inst.status().state == "running"
    assert (inst.dir / sshd_driver.GUEST_STATE / "provisioned").exists()
    assert not (inst.dir / sshd_driver.CONSOLE).exists()


def test_a_guest_that_reports_a_failed_provisioning_stops_the_start(home: Path) -> None:
    for console in (True, False):  # the console's line, or the guest's record read over SSH
        name = f"fail-{'console' if console else 'ssh'}"
        inst = instance.create(name, instance.resolve_config(name, {"backend": "sshd-test"}, None), StepRecorder())
        backend = VmBackend(sshd_driver.SshdDriver(console=console, fail_provisioning="engine 3"))
        try:
            with pytest.raises(StateError) as err:
                backend.start(inst.ref, StepRecorder())
            assert err.value.message.startswith("provisioning failed in step `engine` (exit code 3)"), console
            assert f"devenv shell -n {name}" in err.value.hint
            assert not (inst.dir / "provisioned").exists()
        finally:
            backend.stop(inst.ref, True, StepRecorder())


def test_a_stalled_boot_takes_the_drivers_retry_after_the_host_agent_stops(home: Path) -> None:
    """The shape of QEMU's silent-guest fallback, with a driver that stalls once and boots the second time."""

    class StallsOnce(sshd_driver.SshdDriver):
        retried = False

        def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
            super().launch(inst, step)

            def stalled() -> None:
                raise BootStalled("the guest said nothing", "hint", retry=self.again)

            return Boot(emulated=False, watch=stalled)

        def again(self, step: StepReporter) -> Boot:
            self.retried = True
            return Boot(emulated=False, watch=lambda: None)

    inst = instance.create("stall", instance.resolve_config("stall", {"backend": "sshd-test"}, None), StepRecorder())
    (inst.dir / "provisioned").touch()  # a provisioned guest: start launches the host agent early
    driver = StallsOnce()
    steps = StepRecorder()
    VmBackend(driver).start(inst.ref, steps)
    assert driver.retried
    stall = steps.seen.index("✗")
    assert steps.seen[stall - 1] == "boot: waiting for the guest's sshd"
    assert steps.seen[stall + 1] == "stop the host agent"
    assert steps.seen[stall + 2 :][:1] == ["boot: waiting for the guest's sshd"]
    assert VmBackend(driver).status(inst.ref).state in ("running", "starting")
    VmBackend(driver).stop(inst.ref, True, StepRecorder())


def test_a_guest_behind_a_jump_host_is_reached_through_it_on_every_path(home: Path, tmp_path: Path) -> None:
    """The endpoint's proxy (an OpenSSH `ssh -W` jump, here through the guest's own sshd) carries every SSH path."""
    inst, seen = _start(home, "jumped", "sshd-jump")
    assert "log in with the pinned host key; host agent and guest agent" in seen
    assert inst.status().state == "running"
    for ask_agent in (True, False):  # the host agent's connection, and exec's own over plain SSH
        r = _exec(inst.name, ask_agent)
        assert (r.returncode, r.stdout) == (7, "hi /\n"), (ask_agent, r.stderr)
    text = inst.backend().ssh_config(inst.ref)
    assert "\n  ProxyCommand ssh -F /dev/null -i " in text and " -W %h:%p " in text, text
    (tmp_path / "config").write_text(text)
    r = subprocess.run(
        ["ssh", "-F", str(tmp_path / "config"), f"devenv-{inst.name}", "echo", "through-the-jump"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (0, "through-the-jump\n"), r.stderr
    # the jump host (the same sshd) opened a channel to the guest's sshd for each: never a direct connection
    port = (inst.dir / paths.SSH_PORT).read_text().strip()
    jumps = (inst.dir / sshd_driver.LOG).read_text().count(f"target 127.0.0.1 port {port}")
    assert jumps >= 4, jumps  # the host agent, status's banner probe, exec over SSH, plain OpenSSH
