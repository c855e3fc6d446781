"""A VM driver for tests whose "guest" is this host, reached through a real OpenSSH sshd of the instance's own.

The VM backend's own tests (start, readiness, the host agent, the engine
check, exec, cp, status, stop, a crash) then run the real shared code
against a real sshd, the real guest agent and the host's real docker engine,
in seconds instead of a TCG boot's minutes. The driver is what a hypervisor
would be, minus the hypervisor: launch starts an sshd (-D, as its own
session) that serves the instance's pinned host key and accepts only its
key, and the sshd's pid is "the VM".

What a real guest does at the end of its boot, it does itself once the sshd
answers: with a console it writes DEVENV-READY there (the serial console of
a VM), without one (`SshdDriver(console=False)`, the path a WSL2 distro will
take) it writes the guest's provisioning record that the VM backend reads
over SSH. `SshdDriver(jump=True)` reaches its guest through a jump host, as
a remote hypervisor's guest is reached: OpenSSH's `ssh -W` through the same
sshd, so every SSH path (readiness, host agent, exec, ssh-config) takes the
proxy. The guest user is the current user, which is what the endpoint says.
Nothing here needs root; as root, sshd's privilege-separation folder is made
when missing, as the tests' own sshd fixture does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from devenv import paths
from devenv.backends.base import InstanceRef, StepReporter
from devenv.backends.vm.driver import AgentPlan, Boot, DriverFeatures, Endpoint, VmState, tail, with_console
from devenv.errors import BackendUnavailable, DevenvError, StateError, Timeout
from devenv.provision.readiness import ssh_banner
from devenv.provision.userdata import FAILED_PREFIX, READY_LINE

SSHD = os.environ.get("DEVENV_TEST_SSHD", "/usr/sbin/sshd")
PID_FILE = "sshd.vm.pid"  # the "VM process": the sshd listener
CONFIG = "sshd.config"
LOG = "sshd.log"
CONSOLE = "console.log"
GUEST_STATE = "guest-state"  # the guest's /var/lib/devenv, for a guest without a console
BIND_HOST = "127.0.0.2"  # the host agent's listeners: this "guest" must not see them as its own ports
RELOCATE_TO = "relocate-to"  # in the instance dir: what relocate() answers, for tests of the agent's move


def relocate(inst_dir: Path, port: int) -> str:
    """A test's answer to the host agent's "where does sshd answer now?" (AgentPlan.relocate): INST_DIR/relocate-to."""
    try:
        return (inst_dir / RELOCATE_TO).read_text().strip()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SshdDriver:
    name = "sshd-test"
    features = DriverFeatures(mounts=())  # the guest is the host: its files are already there
    host_address = "127.0.0.1"

    def __init__(self, console: bool = True, fail_provisioning: str = "", jump: bool = False) -> None:
        self.has_console = console
        self.fail_provisioning = fail_provisioning  # "step rc": the guest reports DEVENV-FAILED instead
        self.jump = jump

    # -- the Driver protocol --------------------------------------------------

    def check(self, inst: InstanceRef) -> None:
        if not os.access(SSHD, os.X_OK):
            raise BackendUnavailable(f"{SSHD} is missing", "sudo apt-get install openssh-server")

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        step("nothing to make: the guest is this host")

    def delete(self, inst: InstanceRef) -> None:
        """sshd keeps nothing outside the instance directory."""

    def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
        step("start sshd")
        port = _free_port()
        (inst.dir / paths.SSH_PORT).write_text(f"{port}\n")
        self._write_config(inst, port)
        if os.getuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for stale in (CONSOLE, LOG):
            (inst.dir / stale).unlink(missing_ok=True)
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(inst.dir / CONFIG), "-E", str(inst.dir / LOG)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        (inst.dir / PID_FILE).write_text(f"{proc.pid}\n")
        self._announce_when_up(inst, port, proc)
        return Boot(emulated=False, watch=self._alive_check(inst))

    def attach(self, inst: InstanceRef, step: StepReporter) -> Boot:
        step(f"sshd is already running (pid {self._pid(inst)})")
        return Boot(emulated=False, watch=self._alive_check(inst))

    def power_down(self, inst: InstanceRef, step: StepReporter, timeout: float) -> bool:
        pid = self._pid(inst)
        if pid is None:
            return True
        step(f"SIGTERM sshd; up to {timeout:.0f} s for it to exit")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if self._wait_exit(inst, pid, timeout):
            return True
        step.fail()
        return False

    def force_off(self, inst: InstanceRef, step: StepReporter) -> None:
        pid = self._pid(inst)
        if pid is None:
            return
        step(f"kill sshd (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if not self._wait_exit(inst, pid, 10):
            raise StateError(f"sshd (pid {pid}) did not stop, even when killed", f"see `ps -p {pid}`")

    def state(self, inst: InstanceRef) -> VmState:
        pid = self._pid(inst)
        return VmState("off") if pid is None else VmState("running", details={"pid": pid})

    def endpoint(self, inst: InstanceRef) -> Endpoint | None:
        try:
            port = int((inst.dir / paths.SSH_PORT).read_text().strip())
        except (OSError, ValueError):
            return None
        user = pwd.getpwuid(os.getuid()).pw_name
        if not self.jump:
            return Endpoint("127.0.0.1", port, user)
        proxy = (  # the jump host is this same sshd: it then opens direct-tcpip to itself
            "ssh", "-F", "/dev/null", "-i", str(inst.dir / paths.SSH_KEY), "-p", str(port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={inst.dir / paths.SSH_KNOWN_HOSTS}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias=devenv-{inst.name}", "-o", "StrictHostKeyChecking=yes",
            "-W", "%h:%p", f"{user}@127.0.0.1",
        )  # fmt: skip
        return Endpoint("127.0.0.1", port, user, proxy)

    def console_log(self, inst: InstanceRef) -> Path | None:
        return inst.dir / CONSOLE if self.has_console else None

    def agent_plan(self, inst: InstanceRef) -> AgentPlan:
        agent = Path(__file__).parent.parent / "guestagent" / "agent.py"
        return AgentPlan(
            vm_pid_file=inst.dir / PID_FILE,
            guest_agent_command=f"{sys.executable} {agent}",
            bind_host=BIND_HOST,
        )

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return [inst.dir / LOG]

    def failure(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        said = tail(inst.dir / LOG, 8)
        parts = [message, f"sshd said:\n{said}"] if said else [message]
        return cls(with_console(parts, self.console_log(inst)), hint)

    # -- this "VM" ------------------------------------------------------------

    def _pid(self, inst: InstanceRef) -> int | None:
        """The listener's pid while it is our sshd: its command line names this instance's config."""
        from devenv.pidutil import runs_as

        try:
            pid = int((inst.dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (a test): no zombie left
        return pid if runs_as(pid, os.fsencode(inst.dir / CONFIG)) else None

    def _wait_exit(self, inst: InstanceRef, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._pid(inst) == pid:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _alive_check(self, inst: InstanceRef) -> Callable[[], None]:
        def check() -> None:
            if self._pid(inst) is None:
                raise self.failure(
                    inst, "the sshd exited while the guest was booting", "see sshd.log", StateError, exited=True
                )

        return check

    def _announce_when_up(self, inst: InstanceRef, port: int, proc: subprocess.Popen[bytes]) -> None:
        """What a booted guest says once its sshd runs: on the console, else in its provisioning record."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None and not ssh_banner(port, timeout=1.0):
            time.sleep(0.05)
        step, _, rc = self.fail_provisioning.partition(" ")
        line = f"{FAILED_PREFIX} step={step} rc={rc} log=/tmp/provision.log" if step else READY_LINE
        if self.has_console:
            with open(inst.dir / CONSOLE, "a", encoding="utf-8") as f:
                f.write(f"[    1.000000] sshd started\n{line}\n")
            return
        state = inst.dir / GUEST_STATE
        state.mkdir(exist_ok=True)
        if step:
            (state / "failed").write_text(f"step={step} rc={rc} log=/tmp/provision.log\n")
        else:
            (state / "provisioned").touch()

    def _write_config(self, inst: InstanceRef, port: int) -> None:
        root = os.getuid() == 0
        user = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {inst.dir / paths.SSH_HOST_KEY}",
            "PidFile none",
            f"AuthorizedKeysFile {inst.dir / paths.SSH_PUBKEY}",
            f"AllowUsers {user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",  # the instance dir may live under a world-writable /tmp in tests
            f"UsePAM {'yes' if root else 'no'}",  # PAM as non-root cannot work
            "AllowTcpForwarding yes",
            "AllowStreamLocalForwarding yes",
            "PermitTTY yes",
            "X11Forwarding no",
            "PrintMotd no",
            "UseDNS no",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100",
            "MaxSessions 100",
            "LogLevel DEBUG1",  # names each direct-tcpip target: the jump host's tests read it
        ]
        if not self.has_console:
            lines.append(f"SetEnv DEVENV_STATE_DIR={inst.dir / GUEST_STATE}")
        (inst.dir / CONFIG).write_text("\n".join(lines) + "\n")


# For DEVENV_EXTRA_DRIVERS (devenv/registry.py): the drivers as backends of every devenv process started with it
EXTRA_DRIVERS = (
    "sshd-test=devenv.testing.sshd_driver:SshdDriver;"
    "sshd-noconsole=devenv.testing.sshd_driver:ConsolelessSshdDriver;"
    "sshd-jump=devenv.testing.sshd_driver:JumpSshdDriver"
)


class ConsolelessSshdDriver(SshdDriver):
    """The same "guest" without a console: readiness comes over SSH from the guest's provisioning record."""

    def __init__(self) -> None:
        super().__init__(console=False)


class JumpSshdDriver(SshdDriver):
    """The same "guest" behind a jump host (an OpenSSH ProxyCommand): as a remote hypervisor's guest is reached."""

    def __init__(self) -> None:
        super().__init__(jump=True)
