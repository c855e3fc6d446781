"""What a VM driver answers: only what differs between hypervisors (Lima's pkg/driver/driver.go, smaller).

The VM backend (devenv/backends/vm) does everything any Linux guest reached
over SSH needs: readiness, the boot budget, the host agent, the engine check,
mounts, exec/shell/cp, ssh-config, docker-env and the derived status. A
driver knows one hypervisor and nothing else: whether it can run here, its
disk, launching and attaching, a clean power-down and a forced one, its own
view of the VM's state, where the guest's sshd answers, and its logs.

Optional capabilities are data in DriverFeatures, never methods every driver
stubs: a driver without a fast port path says `fast_ports=""` and every
forward goes through SSH; snapshots are a flag the CLI reads before it offers
them. A driver whose `suspend` flag is set also has Suspends' two methods, and
one whose `snapshots` flag is set DiskSnapshots' four.

Drivers may import this module and the helpers here; this module imports no
driver and nothing of the VM backend, so the imports run one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from devenv.errors import DevenvError, SnapshotNotFound, StateError, Timeout
from devenv.provision.keys import GUEST_USER

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, Snapshot, StepReporter

CONSOLE_TAIL = 25  # console lines an error about a boot shows


@dataclass(frozen=True)
class DriverFeatures:
    """What the VM backend and the host agent may ask of a driver beyond the Driver protocol."""

    mounts: tuple[str, ...] = ("sshfs",)  # "9p" (the driver shares folders itself), "sshfs" (the host agent's)
    # "module:factory" the host agent imports to make guest ports reachable without SSH (the factory
    # takes the instance dir; devenv.hostagent.fastports says what it returns), "" for none
    fast_ports: str = ""
    accelerators: tuple[str, ...] = ()
    suspend: bool = False  # saves and restores a running guest
    snapshots: bool = False
    # "module:function" for a guest that sees the host's own files without a mount (a drive under /mnt): it takes
    # the host's working directory and gives the guest's, or None (the guest home); "" for none
    guest_paths: str = ""


@dataclass(frozen=True)
class Endpoint:
    """Where the guest's sshd answers, as the host reaches it.

    `proxy`: the guest is not reachable from here directly, but through this
    command, whose stdin and stdout reach host:port (OpenSSH's ProxyCommand,
    `%h` and `%p` filled in): a jump host is `("ssh", "-W", "%h:%p", "box")`,
    which logs in to the box with the user's own OpenSSH config and agent.
    The guest's pinned key is checked through it as ever. Every SSH path
    takes it: the readiness wait, the host agent, exec, cp, ssh-config.
    """

    host: str
    port: int
    user: str = GUEST_USER
    proxy: tuple[str, ...] = ()


# What a driver reads of its VM. "off": no VM runs (never started, shut down, or gone: the console
# may tell which); "crashed": the hypervisor knows it died (reason says why); "running"; "paused":
# the hypervisor holds it and can let it run on (attach resumes it); "halted": the hypervisor runs
# but the guest cannot (a panic): only a stop and a new boot help.
VM_STATES = ("off", "crashed", "running", "paused", "halted")


@dataclass(frozen=True)
class VmState:
    state: str  # one of VM_STATES
    reason: str = ""  # for paused, halted and crashed: what the user reads
    word: str = ""  # the hypervisor's own name for the state, shown in steps ("io-error", "suspended")
    details: dict[str, object] = field(default_factory=dict)  # pid, the hypervisor's status: into `status --json`

    @property
    def up(self) -> bool:
        """A VM exists that a start attaches to rather than launches."""
        return self.state not in ("off", "crashed", "saved")


@dataclass(frozen=True)
class Boot:
    """One boot (or a VM already running) as the readiness wait sees it."""

    emulated: bool  # the guest's CPU is emulated in software: the boot budget's longer column
    watch: Callable[[], None]  # called several times a second until sshd answers; raises when the VM cannot boot
    # called after that, while the guest provisions and starts its engine: only that the VM still runs
    # (a guest whose sshd answered does run, whatever a check made for the boot says, such as one that
    # reads a quiet console as a guest that never started); None: `watch` again
    running: Callable[[], None] | None = None
    # the guest was restored from a suspend, not booted: it is ready as it was when saved, so there is
    # no boot to wait for and its clock is behind by the time it spent saved
    resumed: bool = False

    def after_sshd(self) -> None:
        (self.running or self.watch)()


class BootStalled(Timeout):
    """The VM runs but its guest does not (watch() said so); `retry`, when set, boots it another way."""

    def __init__(self, message: str, hint: str, retry: Callable[[StepReporter], Boot] | None = None) -> None:
        super().__init__(message, hint)
        self.retry = retry


@dataclass(frozen=True)
class AgentPlan:
    """What the host agent needs of this hypervisor, passed on its command line.

    The last two are for a guest that is the host itself (devenv.testing's
    sshd driver), where the guest agent runs from devenv's own tree and the
    agent's listeners must not be taken for the guest's own ports.
    """

    vm_pid_file: Path | None = None  # the agent exits when this process does; None: no watch
    guest_agent_command: str = ""  # "": the provisioned guest agent
    bind_host: str = ""  # "": 127.0.0.1
    # a unix socket that reaches the guest's sshd through a virtio-serial port, which
    # a suspend keeps (hostagent/relay.py); None: SSH over the network only
    relay_socket: Path | None = None
    # a file the hypervisor maps shared as the guest's memory, whose given-back pages the agent
    # keeps allocated on disk (hostdisk.keep_allocated); None: no such file
    memory_file: Path | None = None
    # "module:function(inst_dir, port) -> host": where the guest's sshd answers now, asked by a running
    # agent whose logins keep failing (a port forwarding that died when the host slept, say); "": never
    relocate: str = ""


class Driver(Protocol):
    name: str
    features: DriverFeatures
    host_address: str  # the host as the guest sees it (into the first-boot seed)

    def check(self, inst: InstanceRef) -> None:
        """Raise BackendUnavailable or ConfigError, with the fix, when this instance cannot boot here."""

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        """Make the disk (and whatever the hypervisor keeps) in the new instance's directory."""

    def delete(self, inst: InstanceRef) -> None:
        """Remove what the driver made outside the instance directory (the caller removes the directory)."""

    def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
        """Boot the VM (state is off or crashed): returns once the hypervisor runs it."""

    def attach(self, inst: InstanceRef, step: StepReporter) -> Boot:
        """The VM already runs (state is up): let a paused one run on; raise StateError for a halted one."""

    def power_down(self, inst: InstanceRef, step: StepReporter, timeout: float) -> bool:
        """Ask the guest to shut down and wait up to `timeout` s; True once the VM is off. Shows its steps."""

    def force_off(self, inst: InstanceRef, step: StepReporter) -> None:
        """Stop the VM now, whatever the guest does; StateError when even that fails."""

    def state(self, inst: InstanceRef) -> VmState: ...

    def endpoint(self, inst: InstanceRef) -> Endpoint | None:
        """The guest's sshd; None before the VM was ever launched."""

    def console_log(self, inst: InstanceRef) -> Path | None:
        """A file the guest's console is written to (readiness and error reports read it), None without one."""

    def agent_plan(self, inst: InstanceRef) -> AgentPlan: ...

    def log_files(self, inst: InstanceRef) -> list[Path]:
        """The hypervisor's own logs, for `devenv logs`."""

    def failure(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        """An error about this VM with what its logs and console say (`exited`: the VM process is gone)."""


class Suspends(Protocol):
    """What a driver with `features.suspend` adds: saving a running guest; launch() restores it.

    The saved guest belongs with the disk it was saved with: a launch restores
    it only when it still fits (the same hypervisor, devices and disk), and
    otherwise says why and boots cold, after discarding it.
    """

    def suspend(self, inst: InstanceRef, step: StepReporter) -> None:
        """Save the running guest next to its disk and end the VM; state() is "saved" after.

        Raises devenv.errors.SuspendRefused, with the VM left running, when it cannot be saved.
        """

    def discard_saved(self, inst: InstanceRef) -> None:
        """Forget a saved guest (the user forced the VM off): the next launch boots cold."""


class DiskSnapshots(Protocol):
    """What a driver with `features.snapshots` adds: named copies of the instance's disk, kept inside it.

    The VM backend asks create and restore only of a VM that is off (not
    running, paused or saved): the driver copies or rewinds a disk nothing has
    open. A name the driver does not know raises SnapshotNotFound; one it has
    already, StateError.
    """

    def snapshot_create(self, inst: InstanceRef, name: str, step: StepReporter) -> None: ...

    def snapshot_list(self, inst: InstanceRef) -> list[Snapshot]:
        """Oldest first; asked in any state."""

    def snapshot_restore(self, inst: InstanceRef, name: str, step: StepReporter) -> None: ...

    def snapshot_delete(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        """Asked in any state: a driver that cannot delete one while the VM runs raises StateError saying so."""


def require_off(vm: VmState, inst: InstanceRef, doing: str) -> None:
    """StateError, with the command that shuts the instance down, unless its VM is off (or crashed).

    For what touches the disk: a saved guest belongs to its disk as it is (backends/vm/snapshots.py).
    """
    fix = f"shut it down first: `devenv stop --shutdown -n {inst.name}`"
    if vm.state == "saved":
        raise StateError(
            f"instance `{inst.name}` is suspended: its saved guest belongs to the disk as it is now;"
            f" devenv does not {doing} under it",
            fix + " (the suspended guest is restored first and shut down cleanly: nothing is lost)",
        )
    if vm.up:
        reason = f" ({vm.reason})" if vm.reason else ""
        raise StateError(
            f"instance `{inst.name}` is {vm.state}{reason}: devenv can {doing} only while it is shut down",
            fix,
        )


def not_made_yet(instance: str, what: str) -> StateError:
    """A snapshot asked of an instance whose VM (`what`: the driver's word for it) only its first start makes."""
    return StateError(f"instance `{instance}` has no {what} yet", f"start it once: `devenv start -n {instance}`")


def no_snapshot(name: str, instance: str) -> SnapshotNotFound:
    return SnapshotNotFound(
        f"instance `{instance}` has no snapshot `{name}`", f"`devenv snapshot list -n {instance}` lists its snapshots"
    )


def tail(path: Path, lines: int = CONSOLE_TAIL) -> str:
    """The last non-empty lines of a log that a guest or hypervisor writes (carriage returns dropped)."""
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def with_console(parts: list[str], console: Path | None) -> str:
    """An error's text: its parts, then the console's last lines, which usually say why a boot failed."""
    shown = tail(console) if console is not None else ""
    if shown:
        parts = [*parts, f"last lines of the serial console ({console}):\n{shown}"]
    return "\n".join(parts)
