"""The QEMU backend: one detached QEMU process per instance.

Start boots the instance's overlay disk with its cloud-init seed and waits for
each requirement in turn (process, SSH port, first-boot provisioning, SSH
login with the pinned key, guest agent, engine), each with its own timeout
and, on failure, a hint plus the tail of the serial console. Status is read
from the pid file, the process table, the serial console and an SSH banner
probe every time; nothing about a running VM is cached on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv import paths
from devenv.atomicfile import write_atomic
from devenv.backends.base import ExecRequest, Features, InstanceRef, Status, StepReporter
from devenv.backends.qemuargs import (
    AARCH64_FIRMWARE,
    NeedsDirectKernel,
    VmSpec,
    build_argv,
    find_firmware,
    kernel_cmdline,
    microvm_tcg_cmdline,
    qemu_binary_name,
    resolve_machine,
)
from devenv.errors import (
    BackendUnavailable,
    CommandFailed,
    ConfigError,
    DevenvError,
    NotSupported,
    StateError,
    Timeout,
)
from devenv.progress import CopyProgress, DownloadProgress
from devenv.provision.keys import GUEST_USER
from devenv.provision.readiness import (
    ANNOUNCED_FIRST_PROBE,
    ConsoleWatch,
    console_readiness,
    ssh_banner,
    wait_for_sshd,
)

if TYPE_CHECKING:
    from devenv.transport.ssh import SSHConnection

HOST_ADDRESS = "10.0.2.2"  # the host as QEMU user networking shows it to the guest
IMAGE_RECORD = "image.json"  # which base image (kernel, initrd, cmdline) this instance boots
QEMU_LOG = "qemu.log"  # QEMU's own stdout/stderr
PROVISIONED = "provisioned"  # the guest reported ready once: its user, groups and agent unit exist
SERIAL_TAIL = 25

# Per-step timeouts, scaled up under TCG where everything is ~10x slower. A first boot
# also runs cloud-init's provisioning; under TCG on a 2-core CI host an emulated aarch64
# guest took 136 s to sshd and more than 284 s more to provision, past 420 s.
BOOT_TIMEOUT = {"tcg": 420.0, "default": 180.0}
FIRST_BOOT_TIMEOUT = {"tcg": 900.0, "default": 300.0}
SILENT_BOOT_LIMIT = 60.0  # s: a console still empty this long under kvm/hvf/whpx is a guest that does not run
STOP_TIMEOUT = 90.0
POWER_BUTTON_EVERY = 5.0  # s between presses while stop waits: one made during early boot is lost
MOUNT_WAIT = 90.0  # start waits this long for the mounts, then warns and leaves them to the host agent


class GuestSilent(Timeout):
    """The console stayed empty under a hardware accelerator: the guest does not run there, TCG may."""


ACCEL_HUNG = "accel-hung"  # in the instance dir: the accelerator auto picked hung this guest; tcg from then on


@dataclass(frozen=True)
class _Boot:
    """What every QEMU launch of one start shares, the first one and a fallback's."""

    inst: InstanceRef
    binary: str
    image: dict[str, str]
    arch: str


class AcceleratorFailed(CommandFailed):
    """QEMU exited right after launch and its log names the accelerator: nothing booted, TCG may."""

    def __init__(self, message: str, hint: str, reason: str) -> None:
        super().__init__(message, hint)
        self.reason = reason  # QEMU's first error line


def _accelerator_error(log: Path, accel: str) -> str | None:
    """QEMU's first error line in its log when that names `accel` (see hostos.qemu_error_line)."""
    from devenv.hostos import qemu_error_line

    try:
        return qemu_error_line(log.read_text(errors="replace"), accel)
    except OSError:
        return None


def _accel_timeout(accel: str, *, first_boot: bool = False) -> float:
    """The budget for boot to ready: the first boot provisions too, so it gets more."""
    table = FIRST_BOOT_TIMEOUT if first_boot else BOOT_TIMEOUT
    return table["tcg"] if accel == "tcg" else table["default"]


def read_pid(inst_dir: Path) -> int | None:
    try:
        return int((inst_dir / paths.QEMU_PID).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_is_ours(pid: int, inst_dir: Path) -> bool:
    """Alive, and really our QEMU: a pid left in qemu.pid by a crash or a host reboot may be anyone's now.

    Our QEMU's command line names this instance's QMP socket. Only Windows
    cannot show another process's command line; there a live pid counts.
    """
    from devenv.pidutil import command_line, pid_alive

    if not pid_alive(pid):  # never os.kill(pid, 0): on Windows that terminates the process
        return False
    cmdline = command_line(pid)
    return cmdline is None or os.fsencode(inst_dir / paths.QMP_SOCK) in cmdline


# QMP run states (query-status) in which the guest does not run although QEMU does, and what to say.
# Left out: running; prelaunch and the migration states, which are QEMU's own business.
STOPPED_RUN_STATES = {
    "paused": "the VM is paused (QEMU's `stop`, or a debugger)",
    "io-error": "QEMU paused the VM because a disk write failed: is the host's disk full?",
    "suspended": "the guest suspended itself to RAM",
    "internal-error": "QEMU stopped the VM on an internal error (see qemu.log)",
    "guest-panicked": "the guest kernel panicked (see the console log)",
    "watchdog": "the guest's watchdog fired",
    "shutdown": "the guest shut down but QEMU stays",
}
RESUMABLE = {"paused", "io-error", "suspended"}  # QMP `cont` (or system_wakeup) lets these run on


def resume_vm(qmp: Path, state: str) -> None:
    """Let a VM in one of the RESUMABLE states run on: a suspended guest is woken, a paused one continued."""
    from devenv.backends.qmp import Qmp

    with Qmp(qmp) as q:
        q.command("system_wakeup" if state == "suspended" else "cont")


def vm_run_state(qmp: Path, timeout: float = 2.0) -> str | None:
    """QEMU's own word on the VM (QMP query-status), None when QMP does not answer."""
    from devenv.backends.qmp import Qmp

    try:
        with Qmp(qmp, timeout=timeout) as q:
            status = q.command("query-status").get("status")
    except (DevenvError, OSError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def powered_off_by_guest(serial: Path) -> bool:
    """The console's last kernel line says the guest powered itself off (`poweroff` inside), not a crash."""
    return tail(serial, 3).rstrip().endswith(("reboot: Power down", "reboot: System halted"))


def sshd_timeout_hint(serial: Path, name: str) -> str:
    """What to do when the guest's sshd never answered; an empty console means the kernel hung early.

    With `quiet` on the kernel command line the first console line comes from
    userspace, so a console still empty at the deadline points at the kernel
    (seen under TCG: both vCPUs spinning in the kernel, nothing written to the disk).
    """
    try:
        silent = serial.stat().st_size == 0
    except OSError:
        silent = True
    if silent:
        return (
            "the console stayed empty, so the guest kernel hung early in boot (TCG guests do, rarely): "
            f"boot it again with `devenv stop --force -n {name}` and `devenv start -n {name}`"
        )
    return (
        "the guest may be stuck in boot: read the console above; "
        "under TCG a first boot takes minutes (DEVENV_QEMU_ACCEL shows which accelerator is used)"
    )


def host_tsc_khz(cpuinfo: str = "/proc/cpuinfo", cpufreq: str = "/sys/devices/system/cpu/cpu0/cpufreq") -> int | None:
    """The host's TSC rate in kHz, which is the rate of a TCG guest's TSC (QEMU reads the host's counter).

    Known without privileges only on an x86_64 Linux host whose `cpu MHz` in
    /proc/cpuinfo is the TSC's rate: a constant TSC whose rate the kernel was
    told rather than measured (tsc_known_freq: CPUID or the hypervisor; a
    measured cpu_khz can be off from the TSC by a few percent), and neither
    frequency scaling nor APERF/MPERF (with either, `cpu MHz` is the core's
    current clock). That is the usual virtual machine or CI runner, where TCG is
    what runs; elsewhere None.
    """
    if os.path.exists(cpufreq):
        return None
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            first = f.read().split("\n\n", 1)[0]
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = set(fields.get("flags", "").split())
    if not {"constant_tsc", "tsc_known_freq"} <= flags or "aperfmperf" in flags:
        return None
    try:
        mhz = float(fields.get("cpu MHz", ""))
    except ValueError:
        return None
    return round(mhz * 1000) if mhz > 0 else None


def _machine(inst: InstanceRef, arch: str, direct_kernel: bool, accel: str, *, creating: bool) -> tuple[str, str]:
    """The QEMU machine type and the kernel arguments it needs, or a ConfigError naming the config line.

    While creating, the instance directory is a temporary one that goes with the
    error, so the message names the project's devenv.toml instead of a line in it.
    """
    from devenv import config

    where = "devenv.toml" if creating else config.line_of(inst.dir / paths.INSTANCE_CONFIG, "machine")
    setting = f"{where}: field `machine` = {json.dumps(inst.config.machine)}"
    change = (
        "remove `machine` from devenv.toml" if creating else "delete the instance, remove `machine` from devenv.toml"
    )
    change += ' (the default, "auto", picks q35 on x86_64 and virt on aarch64)'
    try:
        machine = resolve_machine(inst.config.machine, arch, direct_kernel=direct_kernel)
    except ValueError as e:
        hint = change
        if isinstance(e, NeedsDirectKernel):
            hint += ", or use an image QEMU boots directly (debian-12 built by `devenv image build`, ubuntu-24.04)"
        raise ConfigError([f"{setting}: {e}"], hint + " and start again") from None
    if machine != "microvm" or accel != "tcg":
        return machine, ""
    khz = host_tsc_khz()
    if khz is None:
        raise ConfigError(
            [
                f"{setting} under TCG needs the host's TSC rate, which this host does not tell"
                " (microvm has no timer the guest kernel can measure it against under TCG)"
            ],
            f"use a hardware accelerator, or {change} and start again",
        )
    return machine, microvm_tcg_cmdline(khz)


# How to install what a guest of another arch needs, by host system ("linux": Debian's names, then Fedora's).
_INSTALL_HINTS = {
    "qemu-system-aarch64": {
        "macos": "brew install qemu",
        "windows": "winget install SoftwareFreedomConservancy.QEMU",
        "linux": "sudo apt-get install qemu-system-arm qemu-efi-aarch64 (Fedora: dnf install qemu-system-aarch64)",
    },
    "qemu-system-x86_64": {
        "macos": "brew install qemu",
        "windows": "winget install SoftwareFreedomConservancy.QEMU",
        "linux": "sudo apt-get install qemu-system-x86 (Fedora: dnf install qemu-system-x86)",
    },
    "aarch64 firmware": {
        "macos": "brew install qemu (it ships edk2-aarch64-code.fd)",
        "windows": "install QEMU from qemu.org or MSYS2 (both ship edk2-aarch64-code.fd)",
        "linux": "sudo apt-get install qemu-efi-aarch64 (Fedora: dnf install edk2-aarch64)",
    },
}


def _install_hint(what: str, system: str) -> str:
    hints = _INSTALL_HINTS[what]
    return hints.get(system, hints["linux"])


def _has_9p(binary: str) -> bool:
    from devenv.runner import run

    try:
        out = run([binary, "-device", "help"], timeout=10)
    except (DevenvError, OSError):
        return False
    return "virtio-9p-pci" in out.stdout + out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    """Could QEMU's user-mode net listen on 127.0.0.1:port now? It binds with SO_REUSEADDR, so do we.

    Not on Windows, where SO_REUSEADDR would let the bind share a port in use.
    """
    with socket.socket() as s:
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _hung_before(inst_dir: Path) -> str | None:
    """The accelerator auto picked that once left this instance's guest silent (see ACCEL_HUNG)."""
    try:
        return (inst_dir / ACCEL_HUNG).read_text().strip() or None
    except OSError:
        return None


def _cwd_or_none() -> str | None:
    """The host's working directory; None when it was deleted under us (the command runs in the guest home)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _ssh_port_was_taken(log: Path, port: int) -> bool:
    """QEMU's log says it could not listen on the SSH forward's port (another program has it)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "Could not set up host forwarding rule" in text and f"127.0.0.1:{port}-:22" in text


def ssh_port_for(inst_dir: Path) -> int:
    """The SSH port the instance had last time while it is free, else a new one.

    So `devenv ssh-config` pasted into ~/.ssh/config, or an editor's
    remote-SSH host, stays right across restarts (ssh.config is rewritten
    each start all the same).
    """
    try:
        previous = int((inst_dir / paths.SSH_PORT).read_text().strip())
    except (OSError, ValueError):
        previous = 0
    return previous if 1024 <= previous <= 65535 and port_free(previous) else free_port()


def tail(path: Path, lines: int = SERIAL_TAIL) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


class QemuBackend:
    name = "qemu"
    features = Features(
        vm=True,
        ssh=True,
        port_forwarding=True,
        mounts=("9p", "sshfs"),
        accelerators=("kvm", "hvf", "whpx", "tcg"),
    )

    # -- helpers --------------------------------------------------------------

    def _accel(self, inst: InstanceRef, arch: str) -> str:
        return self._accel_choice(inst, arch)[0]

    def _accel_choice(self, inst: InstanceRef, arch: str) -> tuple[str, str]:
        """The accelerator for a guest of `arch` and who chose it (see accelerator_choice).

        hvf, kvm and whpx run only the host's own architecture.
        """
        from devenv import config
        from devenv.backends.availability import ACCEL_ENV, accelerator_choice
        from devenv.hostos import current

        host = current()
        accel, source = accelerator_choice(host, inst.config.accelerator, arch)
        if source == "auto" and accel != "tcg" and _hung_before(inst.dir) == accel:
            return "tcg", "auto"  # it hung this guest before: not another minute of silence per start
        if arch != host.arch and accel != "tcg":  # only a setting can have named another (auto gives tcg)
            by_env = source == ACCEL_ENV
            where = ACCEL_ENV if by_env else config.line_of(inst.dir / paths.INSTANCE_CONFIG, "accelerator")
            raise ConfigError(
                [f"{where}: accelerator {accel!r} cannot run this {arch} guest on a {host.arch} host"],
                f"{f'unset {ACCEL_ENV}' if by_env else 'remove `accelerator` from devenv.toml'}:"
                f" another architecture is emulated (tcg), which auto picks",
            )
        return accel, source

    def _arch(self, inst: InstanceRef) -> str:
        """The guest's architecture: devenv.toml's `arch`, by default the host's."""
        from devenv.hostos import current

        return current().arch if inst.config.arch == "auto" else inst.config.arch

    def _image(self, inst: InstanceRef) -> dict[str, str]:
        try:
            data = json.loads((inst.dir / IMAGE_RECORD).read_text())
        except (OSError, ValueError):
            raise StateError(
                f"instance `{inst.name}` has no image record ({IMAGE_RECORD})",
                f"it was not created completely; `devenv delete -n {inst.name}` and start it again",
            ) from None
        assert isinstance(data, dict)
        return {k: str(v) for k, v in data.items() if v is not None}

    def _port(self, inst: InstanceRef) -> int | None:
        try:
            return int((inst.dir / paths.SSH_PORT).read_text().strip())
        except (OSError, ValueError):
            return None

    def _running_pid(self, inst: InstanceRef) -> int | None:
        pid = read_pid(inst.dir)
        return pid if pid is not None and pid_is_ours(pid, inst.dir) else None

    def _fail(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        """The error with QEMU's own log and the console's last lines.

        `exited`: QEMU is gone. It reports its own errors in qemu.log before it
        exits, so an empty log means a signal: a crash or the OOM killer (seen
        once here: QEMU 7.2 segfaulted under TCG right after launch).
        """
        serial = tail(inst.dir / paths.SERIAL_LOG)
        qemu_log = tail(inst.dir / QEMU_LOG, 8)
        parts = [message]
        if qemu_log:
            parts.append(f"QEMU said:\n{qemu_log}")
        elif exited:
            parts[0] += (
                f", and {inst.dir / QEMU_LOG} is empty: it was killed or crashed"
                " (the host's kernel log, `dmesg`, names a segfault or the OOM killer)"
            )
        if serial:
            parts.append(f"last lines of the serial console ({inst.dir / paths.SERIAL_LOG}):\n{serial}")
        return cls("\n".join(parts), hint)

    def connection(self, inst: InstanceRef, timeout: float = 60.0) -> SSHConnection:
        from devenv.transport.ssh import SSHConnection, SSHTarget

        port = self._port(inst)
        if port is None:
            raise StateError(f"instance `{inst.name}` has no SSH port; is it running?", f"devenv start -n {inst.name}")
        target = SSHTarget.for_instance(inst.dir, port=port, user=GUEST_USER)
        conn = SSHConnection(target, boot_timeout=timeout)
        conn.connect(timeout)
        return conn

    # -- lifecycle ------------------------------------------------------------

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        from devenv.images import catalog, overlay
        from devenv.provision import prepare_seed

        arch = self._arch(inst)
        self._check_qemu(arch)
        step(f"find image {inst.config.image}")
        record = catalog.resolve(inst.config.image, arch, progress=DownloadProgress(f"pulling {inst.config.image}"))
        accel = self._accel(inst, record.arch)
        _machine(inst, record.arch, record.kernel is not None, accel, creating=True)  # before any disk
        step(f"create a {inst.config.disk // 1024**3} GiB overlay disk on {record.name}")
        overlay.create_overlay(record.disk, inst.dir / paths.DISK, inst.config.disk)
        image = {
            "name": record.name,
            "arch": record.arch,
            "base": str(record.disk),
            "kernel": str(record.kernel) if record.kernel else None,
            "initrd": str(record.initrd) if record.initrd else None,
            "cmdline": record.cmdline,
        }
        (inst.dir / IMAGE_RECORD).write_text(json.dumps(image, indent=2) + "\n")
        step("generate SSH keys and the cloud-init seed")
        prepare_seed(inst.dir, inst.config, host_address=HOST_ADDRESS)

    def _check_qemu(self, arch: str) -> str:
        from devenv.hostos import current

        binary = shutil.which(qemu_binary_name(arch))
        has_img = shutil.which("qemu-img") is not None
        if binary is None or not has_img:
            from devenv.backends.availability import qemu

            host = current()
            if arch != host.arch and has_img:
                raise BackendUnavailable(
                    f"{qemu_binary_name(arch)} was not found on PATH: it runs {arch} guests",
                    _install_hint(qemu_binary_name(arch), host.system),
                )
            probe = qemu(host)
            raise BackendUnavailable(probe.detail or "QEMU is not installed", probe.fix)
        return binary

    def start(self, inst: InstanceRef, step: StepReporter) -> None:
        from devenv.provision import prepare_seed

        image = self._image(inst)
        arch = image.get("arch") or self._arch(inst)
        boot = _Boot(inst, self._check_qemu(arch), image, arch)
        accel, source = self._accel_choice(inst, arch)
        pid = self._running_pid(inst)
        if pid is None:
            # a machine this image or host cannot boot is refused before anything changes
            machine, extra_cmdline = _machine(inst, arch, bool(image.get("kernel")), accel, creating=False)
            step("prepare the cloud-init seed")
            prepare_seed(inst.dir, inst.config, host_address=HOST_ADDRESS)
            accel = self._launch_or_fall_back(boot, step, (accel, source), machine, extra_cmdline)
        else:
            step(f"QEMU is already running (pid {pid})")
            accel = self._running_accel(inst) or accel
            self._resume_if_stopped(inst, step)
            port = self._port(inst)
            if port is not None:  # (re)written for one started before devenv kept the file
                self._write_ssh_config(inst, port)
        provisioned = inst.dir / PROVISIONED
        announces = provisioned.exists()  # provisioned: devenv-ready.service reports every boot
        if announces:
            self._launch_agent_early(inst)
        try:
            self._wait_ready(inst, step, announces=announces, accel=accel)
        except GuestSilent:
            if source != "auto" or accel == "tcg":
                raise  # named in devenv.toml or the environment: the error stands
            self._silent_to_tcg(boot, step, accel)
            self._wait_ready(inst, step, announces=announces, accel="tcg")
        provisioned.touch()
        self._start_agent(inst, step)

    def _resume_if_stopped(self, inst: InstanceRef, step: StepReporter) -> None:
        """A VM QEMU paused (a full disk, `stop`, a suspend) runs on from where it was: nothing is lost."""

        qmp = inst.dir / paths.QMP_SOCK
        state = vm_run_state(qmp)
        if state in STOPPED_RUN_STATES and state not in RESUMABLE:  # waiting for a boot would never end
            raise StateError(
                f"{STOPPED_RUN_STATES[state]}: QEMU says `{state}`",
                f"`devenv stop -n {inst.name} && devenv start -n {inst.name}` boots it again",
            )
        if state not in RESUMABLE:
            return
        step(f"resume the VM ({state})")
        resume_vm(qmp, state)
        deadline = time.monotonic() + 10
        while (now := vm_run_state(qmp)) in RESUMABLE and time.monotonic() < deadline:
            time.sleep(0.2)
        if now != "running":
            raise StateError(
                f"the VM of `{inst.name}` does not run on: QEMU says `{now}`",
                "io-error: free space on the host disk and run `devenv start` again"
                if now == "io-error"
                else f"see `devenv logs -n {inst.name}`",
            )

    def _launch_or_fall_back(
        self, boot: _Boot, step: StepReporter, choice: tuple[str, str], machine: str, extra_cmdline: str
    ) -> str:
        """Launch QEMU under the chosen accelerator, or under TCG when one auto picked crashes it; which ran."""
        accel, source = choice
        step(f"start QEMU ({accel})")
        try:
            self._launch(boot, accel, machine, extra_cmdline)
        except AcceleratorFailed as e:
            if source != "auto":
                raise
            self._fall_back_to_tcg(boot, step, accel, e.reason)
            return "tcg"
        return accel

    def _launch_agent_early(self, inst: InstanceRef) -> None:
        """Start the host agent while the guest boots: its login and guest agent overlap the wait.

        The agent retries SSH until the guest answers, so by the time the guest
        reports ready it is usually connected. A failure here is not final:
        _start_agent launches it again and reports what went wrong. Never on
        the first boot: cloud-init is still creating the user and its groups
        then, and a session logged in before that would lack the engine's
        socket group for as long as it lives.
        """
        from devenv import hostagent

        with contextlib.suppress(hostagent.AgentStartError, OSError):
            hostagent.launch(inst.dir, user=GUEST_USER, wait=0)

    def _start_agent(self, inst: InstanceRef, step: StepReporter) -> None:
        """The host agent holds the SSH connection: engine socket, forwards, mounts, fast exec."""
        from devenv import hostagent
        from devenv.provision.engines import engine

        step("log in with the pinned host key; host agent and guest agent")
        try:
            st = hostagent.launch(inst.dir, user=GUEST_USER, wait=90)
        except hostagent.AgentStartError as e:
            raise StateError(str(e), f"see {inst.dir / paths.HOSTAGENT_LOG}") from None
        if st.get("state") != "connected":
            raise Timeout(
                f"the host agent did not connect to the guest: {st.get('last_error') or st.get('state')}",
                f"see {inst.dir / paths.HOSTAGENT_LOG}",
            )
        step(f"{inst.config.runtime} engine answers")
        self._check_engine(inst)
        if inst.config.mounts:
            step(f"mount {', '.join(m.location for m in inst.config.mounts)}")
            st = self._wait_mounts(inst, st, len(inst.config.mounts))
        for m in st.get("mounts", []):
            if m.get("state") == "failed":
                sys.stderr.write(f"devenv: warning: mount {m.get('guest')} failed: {m.get('reason', '')}\n")
            elif m.get("state") != "mounted":  # _wait_mounts gave up waiting: the agent goes on trying
                sys.stderr.write(
                    f"devenv: warning: mount {m.get('guest')} is still {m.get('state')} after {MOUNT_WAIT:.0f} s;"
                    f" `devenv status -n {inst.name}` shows when it is there\n"
                )
        if engine(inst.config.runtime).docker_api:
            step(f"docker context devenv-{inst.name}")
            hostagent.ensure_docker_context(inst.name, inst.dir)

    def _launch(self, boot: _Boot, accel: str, machine: str, extra_cmdline: str) -> None:
        inst, binary, image, arch = boot.inst, boot.binary, boot.image, boot.arch
        serial = inst.dir / paths.SERIAL_LOG
        if serial.exists():
            os.replace(serial, inst.dir / (paths.SERIAL_LOG + ".1"))
        qmp = inst.dir / paths.QMP_SOCK
        if not paths.socket_path_fits(qmp):
            raise StateError(
                f"the instance path is too long for a unix socket: {qmp}",
                "set DEVENV_HOME to a shorter directory, such as ~/.devenv",
            )
        console = "ttyS0" if arch == "x86_64" else "ttyAMA0"
        cmdline = kernel_cmdline(image.get("cmdline", ""), console, aslr=inst.config.aslr, accel=accel)
        cmdline = f"{cmdline} {extra_cmdline}".strip()
        if not inst.config.aslr and not image.get("kernel"):
            sys.stderr.write(
                "devenv: warning: aslr = false needs an image whose kernel QEMU boots directly;"
                " this one boots through its firmware, so the guest keeps address-space randomisation\n"
            )
        # The SSH port is found free, released, and only then bound by QEMU: another program (a second
        # `devenv start`) may take it in between. QEMU then says so at once, and a new port is tried.
        for attempt in range(3):
            port = ssh_port_for(inst.dir)
            self._write_ssh_config(inst, port)
            spec = VmSpec(
                name=inst.name,
                arch=arch,
                accel=accel,
                cpus=inst.config.cpus,
                memory=inst.config.memory,
                disk=inst.dir / paths.DISK,
                cidata=inst.dir / paths.CIDATA,
                ssh_port=port,
                serial_log=serial,
                qmp_socket=qmp,
                pid_file=inst.dir / paths.QEMU_PID,
                kernel=Path(image["kernel"]) if image.get("kernel") else None,
                initrd=Path(image["initrd"]) if image.get("initrd") else None,
                cmdline=cmdline,
                firmware=self._firmware(arch, direct_kernel=bool(image.get("kernel"))),
                shares=self._shares(inst, binary),
                machine=machine,
            )
            try:
                self._run_qemu(inst, build_argv(spec, binary), accel)
                return
            except AcceleratorFailed:
                raise
            except CommandFailed:
                if attempt == 2 or not _ssh_port_was_taken(inst.dir / QEMU_LOG, port):
                    raise
                (inst.dir / paths.SSH_PORT).unlink()  # ssh_port_for then picks a new one

    def _run_qemu(self, inst: InstanceRef, argv: list[str], accel: str) -> None:
        """QEMU detached from the CLI, until its pid file and QMP socket are there (or it exited)."""
        for stale in (paths.QMP_SOCK, paths.QEMU_PID):
            (inst.dir / stale).unlink(missing_ok=True)
        (inst.dir / "qemu.argv").write_text(json.dumps(argv) + "\n")
        with open(inst.dir / QEMU_LOG, "wb") as log:
            kwargs: dict[str, object] = {}
            if sys.platform == "win32":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS  # type: ignore[attr-defined]
            else:
                kwargs["start_new_session"] = True  # survives the CLI and its Ctrl-C
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, **kwargs)  # type: ignore[call-overload]
        qmp = inst.dir / paths.QMP_SOCK
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                failed = self._fail(
                    inst,
                    f"QEMU exited with code {code} right after it started",
                    "check the accelerator (DEVENV_QEMU_ACCEL=tcg forces software emulation) and the log above",
                    CommandFailed,
                    exited=True,
                )
                reason = _accelerator_error(inst.dir / QEMU_LOG, accel) if accel != "tcg" else None
                raise AcceleratorFailed(failed.message, failed.hint, reason) if reason else failed
            if (inst.dir / paths.QEMU_PID).exists() and qmp.exists():
                return
            time.sleep(0.05)
        raise self._fail(inst, "QEMU did not create its pid file and QMP socket within 30 s", "see qemu.log")

    def _fall_back_to_tcg(self, boot: _Boot, step: StepReporter, accel: str, reason: str) -> None:
        """An accelerator auto picked crashed QEMU at once: boot under TCG, and say so.

        /dev/kvm can exist and open yet fail at the first vCPU (a cloud VM without
        working nested virtualisation; seen here: "failed to set MSR"). Lima and
        Colima stop there; a slow guest that boots beats a fast one that does not.
        A setting that names the accelerator is never overridden (source "config"
        or the environment): the error stands. Each start tries the accelerator
        again, so a host that gets fixed is fast again without anyone noticing.
        """
        from devenv.backends.availability import ACCEL_ENV

        step.fail()
        kept = boot.inst.dir / (QEMU_LOG + ".accel")
        self._relaunch_under_tcg(
            boot, step,
            f"QEMU stopped at once under {accel}, which devenv picked: {reason}\n"
            f"  booting under tcg (software emulation, slower) instead; QEMU's whole output is in {kept}.\n"
            f'  To have this fail instead, set `accelerator = "{accel}"` in devenv.toml or {ACCEL_ENV}={accel}.',
        )  # fmt: skip

    def _silent_to_tcg(self, boot: _Boot, step: StepReporter, accel: str) -> None:
        """The guest never printed a line under the accelerator auto picked: QEMU runs, the guest does not.

        Seen on cloud VMs whose KVM opens and runs QEMU but never its guest. The
        guest never reached userspace, so stopping it loses nothing. This start
        and every later one of the instance boot under tcg (ACCEL_HUNG remembers:
        a minute of silence per start would be a tax); removing that file, or
        naming the accelerator, tries it again.
        """
        from devenv.backends.availability import ACCEL_ENV

        inst = boot.inst
        step.fail()
        (inst.dir / ACCEL_HUNG).write_text(f"{accel}\n")
        self.stop(inst, True, step)  # its steps show: the silent QEMU is quit (or killed) before the relaunch
        self._relaunch_under_tcg(
            boot, step,
            f"the guest printed nothing in {SILENT_BOOT_LIMIT:.0f} s under {accel}, which devenv picked:"
            " it does not run there\n"
            f"  booting under tcg (software emulation, slower) instead, now and at every start of `{inst.name}`;\n"
            f"  to try {accel} again remove {inst.dir / ACCEL_HUNG}, or set {ACCEL_ENV}={accel}.",
        )  # fmt: skip

    def _relaunch_under_tcg(self, boot: _Boot, step: StepReporter, why: str) -> None:
        """What both fallbacks share: the failed run's logs kept as *.accel, one warning, QEMU again under tcg."""
        for log in (paths.SERIAL_LOG, QEMU_LOG):
            with contextlib.suppress(OSError):
                os.replace(boot.inst.dir / log, boot.inst.dir / (log + ".accel"))
        sys.stderr.write(f"devenv: warning: {why}\n")
        step("start QEMU (tcg)")
        machine, extra_cmdline = _machine(boot.inst, boot.arch, bool(boot.image.get("kernel")), "tcg", creating=False)
        self._launch(boot, "tcg", machine, extra_cmdline)

    @staticmethod
    def _running_accel(inst: InstanceRef) -> str | None:
        """The accelerator the running QEMU was launched with (qemu.argv), which may be a fallback's tcg."""
        try:
            argv = json.loads((inst.dir / "qemu.argv").read_text())
            value = argv[argv.index("-accel") + 1]
        except (OSError, ValueError, IndexError, TypeError, AttributeError):
            return None
        return str(value).partition(",")[0] or None

    @staticmethod
    def _firmware(arch: str, *, direct_kernel: bool) -> Path | None:
        """UEFI for an aarch64 guest that boots from its disk (a pulled cloud image).

        A kernel QEMU starts itself needs none: QEMU's own boot code and device
        tree start it, seconds sooner under TCG than EDK2 would.
        """
        if arch != "aarch64" or direct_kernel:
            return None
        firmware = find_firmware(arch)
        if firmware is None:
            from devenv.hostos import current

            raise BackendUnavailable(
                "no UEFI firmware for aarch64 guests was found (looked in " + ", ".join(AARCH64_FIRMWARE) + ")",
                _install_hint("aarch64 firmware", current().system),
            )
        return firmware

    def _check_engine(self, inst: InstanceRef) -> None:
        """Through the forwarded socket when the engine speaks the Docker API: proves the whole path."""
        from devenv import hostagent
        from devenv.hostos import ping_unix
        from devenv.provision.engines import engine

        eng = engine(inst.config.runtime)
        hint = f"`devenv exec -n {inst.name} -- systemctl status {' '.join(eng.units)}` shows why"
        if eng.docker_api:
            sock = hostagent.docker_env(inst.dir)["DOCKER_HOST"].removeprefix("unix://")
            if not ping_unix(sock, timeout=60.0):
                raise StateError(f"the {eng.name} engine does not answer at {sock} (guest {eng.socket})", hint)
            return
        from devenv.hostagent import client

        with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
            code = client.exec(
                inst.dir, ["test", "-S", eng.socket], {}, None,
                stdin_fd=null_in.fileno(), stdout_fd=null_out.fileno(), stderr_fd=null_out.fileno(),
            )  # fmt: skip
        if code != 0:
            raise StateError(f"the {eng.name} socket {eng.socket} does not exist in the guest", hint)

    def _wait_mounts(self, inst: InstanceRef, st: dict[str, Any], want: int) -> dict[str, Any]:
        """Start returns once every mount is in place (or has failed): the project folder is there."""
        from devenv import hostagent

        deadline = time.monotonic() + MOUNT_WAIT
        while time.monotonic() < deadline:
            done = [m for m in st.get("mounts", []) if m.get("state") in ("mounted", "failed")]
            if len(done) >= want:
                break
            time.sleep(0.2)
            st = hostagent.state(inst.dir)
        return st

    def _shares(self, inst: InstanceRef, binary: str) -> tuple[tuple[str, str, bool], ...]:
        """virtio-9p shares for the configured mounts, when 9p can serve them (else the agent uses sshfs).

        9p shows the guest the host's owners and modes as they are, so it is only
        used when the guest user has the host user's uid (see userdata.guest_uid):
        not for root on the host, whose files the guest user could not read.
        DEVENV_MOUNT_TYPE=sshfs forces reverse sshfs, DEVENV_MOUNT_TYPE=9p forces 9p.
        """
        forced = os.environ.get("DEVENV_MOUNT_TYPE", "").lower()
        if not inst.config.mounts or forced == "sshfs":
            return ()
        from devenv.hostagent.mounts import qemu_shares
        from devenv.provision.userdata import guest_uid

        getuid = getattr(os, "getuid", None)
        if forced != "9p" and (getuid is None or getuid() != guest_uid()):
            return ()

        return qemu_shares(inst.config.mounts) if _has_9p(binary) else ()

    def _wait_ready(self, inst: InstanceRef, step: StepReporter, *, announces: bool, accel: str) -> None:
        """Until the guest's console says it is ready (or failed), within the boot budget for `accel`.

        `announces`: the guest was provisioned, so devenv-ready.service prints
        the readiness line right after sshd starts and probing the port would
        only cost the guest an sshd child (readiness.ANNOUNCED_FIRST_PROBE).
        One that does not is on its first boot, which provisions too and gets
        the longer budget.
        """
        port = self._port(inst)
        assert port is not None
        budget = _accel_timeout(accel, first_boot=not announces)
        deadline = time.monotonic() + budget
        alive = self._alive_check(inst)

        step("boot: waiting for the guest's sshd")
        serial = inst.dir / paths.SERIAL_LOG
        console = ConsoleWatch(serial)
        first_probe = ANNOUNCED_FIRST_PROBE if announces else 0.0
        tick = alive if accel == "tcg" else self._silence_check(inst, alive, accel)
        if not wait_for_sshd(console, port, deadline, tick=tick, first_probe_after=first_probe):
            raise self._fail(
                inst,
                f"the guest's sshd did not answer on 127.0.0.1:{port} within {budget:.0f} s",
                sshd_timeout_hint(serial, inst.name),
            )

        step("guest ready: provisioning (cloud-init on first boot) and engine start")
        while True:
            readiness = console.poll()
            if readiness.failed:
                raise self._fail(
                    inst,
                    readiness.describe(),
                    f"`devenv shell -n {inst.name}` and read the log it names",
                    StateError,
                )
            if readiness.ready:
                break
            alive()
            if time.monotonic() > deadline:
                raise self._fail(
                    inst,
                    f"the guest did not report DEVENV-READY within {budget:.0f} s",
                    "cloud-init may still be running or stuck: read the console above",
                )
            time.sleep(0.2)

    def _silence_check(self, inst: InstanceRef, alive: Callable[[], None], accel: str) -> Callable[[], None]:
        """`alive`, and a Timeout once the console has stayed empty for SILENT_BOOT_LIMIT s under `accel`.

        Under a hardware accelerator the guest's first console line (systemd's,
        or the firmware's) comes within seconds. A console still empty after a
        minute is a guest that does not run: a KVM that opens but hangs its
        guests (nested virtualisation; seen on these CI machines with QEMU's
        default CPU model). Saying so then beats the 180 s boot budget.
        """
        serial = inst.dir / paths.SERIAL_LOG
        began = time.monotonic()

        def check() -> None:
            alive()
            if time.monotonic() - began < SILENT_BOOT_LIMIT:
                return
            try:
                if serial.stat().st_size > 0:
                    return
            except OSError:
                pass
            from devenv.backends.availability import ACCEL_ENV

            raise self._fail(
                inst,
                f"the guest printed nothing on its console in {SILENT_BOOT_LIMIT:.0f} s under {accel},"
                " where a guest's first line comes within seconds: it is not running",
                f"{accel} may not run guests on this host (nested virtualisation often cannot):"
                f" `devenv stop --force -n {inst.name}`, then `{ACCEL_ENV}=tcg devenv start -n {inst.name}`"
                ' (or accelerator = "tcg" in devenv.toml)',
                GuestSilent,
            )

        return check

    def _alive_check(self, inst: InstanceRef) -> Callable[[], None]:
        def check() -> None:
            if self._running_pid(inst) is None:
                raise self._fail(
                    inst,
                    "the QEMU process exited while the guest was booting",
                    f"`devenv start -n {inst.name}` boots it again; the console above may say why it stopped",
                    StateError,
                    exited=True,
                )

        return check

    def stop(self, inst: InstanceRef, force: bool, step: StepReporter) -> None:
        """ACPI power-down and a wait, so the guest's disk is clean; then QMP quit; then a kill.

        `force` starts at quit. Each stage is a step, so a 90 s wait for a guest
        that ignores the power button is never a silent one.
        """
        from devenv import hostagent
        from devenv.backends.qmp import Qmp

        step("stop the host agent")
        hostagent.shutdown(inst.dir)
        pid = self._running_pid(inst)
        if pid is None:
            return
        qmp = inst.dir / paths.QMP_SOCK
        run_state = vm_run_state(qmp)
        if not force and run_state in ("paused", "suspended"):  # let it run, so it can shut down cleanly
            step(f"resume the VM ({run_state}) to shut it down")
            with contextlib.suppress(DevenvError, OSError):
                resume_vm(qmp, run_state)
        elif run_state in STOPPED_RUN_STATES:
            force = True  # io-error, a panic: the guest cannot act on the power button
        if not force:
            step(f"ACPI power-down; up to {STOP_TIMEOUT:.0f} s for the guest to shut down")
            if self._power_down(inst, pid, qmp):
                return
            step.fail()
        step("QEMU quit (QMP)")
        with contextlib.suppress(DevenvError, OSError), Qmp(qmp, timeout=3) as q:
            q.command("quit")
        if self._wait_exit(inst, pid, 10):
            return
        step.fail()
        step(f"kill QEMU (pid {pid})")
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone, or not ours to kill: said below
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: SIGTERM is TerminateProcess
        if not self._wait_exit(inst, pid, 10):
            raise StateError(
                f"QEMU (pid {pid}) of `{inst.name}` did not stop, even when killed",
                f"see `ps -p {pid}`; it may be stuck in the kernel (a hung disk or device)",
            )

    def _power_down(self, inst: InstanceRef, pid: int, qmp: Path) -> bool:
        """Press the power button every POWER_BUTTON_EVERY s until QEMU exits; False after STOP_TIMEOUT.

        A guest hears the button only once something listens for it (systemd-logind):
        a press during early boot is lost, and a single press then waited out the
        whole timeout (seen: `devenv stop` just after a Ctrl-C'd start, 90 s).
        Pressing again while the guest shuts down does nothing more.
        """
        from devenv.backends.qmp import Qmp

        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            with contextlib.suppress(DevenvError, OSError), Qmp(qmp) as q:
                q.command("system_powerdown")
            left = deadline - time.monotonic()
            if self._wait_exit(inst, pid, min(POWER_BUTTON_EVERY, max(left, 0.0))):
                return True
            if time.monotonic() >= deadline:
                return False

    def _wait_exit(self, inst: InstanceRef, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_is_ours(pid, inst.dir):
                return True
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if the CLI itself started it
            time.sleep(0.2)
        return not pid_is_ours(pid, inst.dir)

    def delete(self, inst: InstanceRef) -> None:
        """The overlay, seed and keys live in the instance directory, which the caller removes.

        Outside it devenv made only the docker context `devenv-NAME`; it goes too.
        """
        from devenv import hostagent

        hostagent.shutdown(inst.dir)
        hostagent.remove_docker_context(inst.name)

    def status(self, inst: InstanceRef) -> Status:
        pid = self._running_pid(inst)
        wanted = (inst.dir / paths.STARTED_MARKER).exists()
        if pid is None:
            if wanted and powered_off_by_guest(inst.dir / paths.SERIAL_LOG):
                return Status("stopped", "the guest powered itself off; `devenv start` boots it again")
            if wanted:
                return Status(
                    "broken",
                    "the VM process is gone (killed or crashed); `devenv start` boots it again",
                    {"serial_log": str(inst.dir / paths.SERIAL_LOG)},
                )
            return Status("stopped")
        port = self._port(inst)
        details: dict[str, object] = {
            "pid": pid,
            "ssh": f"127.0.0.1:{port}",
            "ssh_config": str(inst.dir / paths.SSH_CONFIG),
        }
        run_state = vm_run_state(inst.dir / paths.QMP_SOCK)
        if run_state in STOPPED_RUN_STATES:  # QEMU runs, the guest does not: never "running"
            details["qemu_status"] = run_state
            if run_state in RESUMABLE:  # nothing lost yet: degraded, so delete still asks for --force
                return Status("degraded", f"{STOPPED_RUN_STATES[run_state]}; `devenv start` resumes it", details)
            return Status("broken", f"{STOPPED_RUN_STATES[run_state]}; `devenv stop && devenv start` boots it", details)
        readiness = console_readiness(inst.dir / paths.SERIAL_LOG)
        if readiness.failed:
            return Status("broken", readiness.describe(), details)
        if not readiness.ready:
            return Status("starting", "the guest is booting; `devenv start` waits for it", details)
        if port is None or not ssh_banner(port):
            return Status("degraded", "the guest's sshd does not answer", details)
        if not wanted:
            return Status("starting", "booted, but `devenv start` did not finish; run it again", details)
        from devenv import hostagent

        ha = hostagent.state(inst.dir)
        if not ha.get("alive"):
            return Status("degraded", "the host agent is not running; `devenv start` restarts it", details)
        details["agent"] = ha.get("state")
        details["docker_host"] = hostagent.docker_env(inst.dir)["DOCKER_HOST"]
        details["forwards"] = [
            f"{f.get('host')} -> {f.get('guest_port')} ({f.get('status')}"
            + (f" via {f.get('via')}" if f.get("via") else "")
            + (f": {f.get('reason')}" if f.get("reason") else "")
            + ")"
            for f in ha.get("forwards", [])
        ]
        details["mounts"] = [f"{m.get('guest')} ({m.get('type')}, {m.get('state')})" for m in ha.get("mounts", [])]
        if ha.get("degraded"):
            return Status(
                "degraded", f"host agent {ha.get('state')} since {ha.get('since')}: {ha.get('last_error')}", details
            )
        return Status("running", details=details)

    # -- using a running instance ---------------------------------------------

    def _guest_cwd(self, inst: InstanceRef, cwd: str | None) -> str | None:
        from devenv.hostagent.mounts import guest_cwd, mount_specs

        return guest_cwd(mount_specs(inst.config.mounts), cwd)

    def exec(self, inst: InstanceRef, req: ExecRequest) -> int:
        from devenv.hostagent import client

        here = _cwd_or_none()
        argv, env = list(req.argv), {**inst.config.env, **req.env}
        if req.tty:  # a PTY: only SSH has one (the host agent's exec hands over plain fds)
            with self.connection(inst) as conn:
                return conn.shell(argv, env=env, cwd=req.cwd or self._guest_cwd(inst, here))
        # the host agent maps the host folder itself; the mapping is made here only for plain SSH
        code = client.exec(inst.dir, argv, req.env, here, workdir=req.cwd) if req.ask_agent else None
        if code is not None:
            return code
        cwd = req.cwd or self._guest_cwd(inst, here)
        with self.connection(inst) as conn:
            stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
            return conn.exec(
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=sys.stdout.buffer,
                stderr=sys.stderr.buffer,
            )

    def shell(self, inst: InstanceRef) -> int:
        """The guest's login shell, in the folder you are in when a mount puts it in the guest (as Lima does)."""
        with self.connection(inst) as conn:
            return conn.shell(env=dict(inst.config.env), cwd=self._guest_cwd(inst, _cwd_or_none()))

    def copy_in(self, inst: InstanceRef, src: Path, dst: str) -> None:
        with self.connection(inst) as conn:
            conn.copy_to_guest(src, dst, progress=CopyProgress())

    def copy_out(self, inst: InstanceRef, src: str, dst: Path) -> None:
        with self.connection(inst) as conn:
            conn.copy_from_guest(src, dst, progress=CopyProgress())

    def docker_env(self, inst: InstanceRef) -> dict[str, str]:
        from devenv import hostagent
        from devenv.provision.engines import engine

        if not engine(inst.config.runtime).docker_api:
            raise NotSupported(
                self.name,
                f"docker-env for runtime {inst.config.runtime}",
                f"containerd speaks no Docker API; use `devenv exec -n {inst.name} -- nerdctl ...`",
            )
        if not hostagent.is_running(inst.dir):
            raise StateError(f"instance `{inst.name}` has no host agent running", f"devenv start -n {inst.name}")
        return hostagent.docker_env(inst.dir)

    def ssh_config(self, inst: InstanceRef) -> str:
        port = self._port(inst)
        if port is None:
            raise StateError(f"instance `{inst.name}` has not been started yet", f"devenv start -n {inst.name}")
        return self._ssh_config_text(inst, port)

    def _write_ssh_config(self, inst: InstanceRef, port: int) -> None:
        """The port QEMU forwards to the guest's sshd, and ssh.config for an `Include` (both kept current)."""
        (inst.dir / paths.SSH_PORT).write_text(f"{port}\n")
        write_atomic(inst.dir / paths.SSH_CONFIG, self._ssh_config_text(inst, port).encode())

    def _ssh_config_text(self, inst: InstanceRef, port: int) -> str:
        from devenv.transport.sshconfig import SSHConfigEntry

        entry = SSHConfigEntry(
            name=inst.name,
            port=port,
            user=GUEST_USER,
            identity_file=inst.dir / paths.SSH_KEY,
            known_hosts_file=inst.dir / paths.SSH_KNOWN_HOSTS,
        )
        return entry.render()

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return [inst.dir / QEMU_LOG, inst.dir / paths.HOSTAGENT_LOG, inst.dir / paths.SERIAL_LOG]
