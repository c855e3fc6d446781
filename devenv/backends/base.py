"""What a backend is: small protocols plus a Features value.

Callers read `features` to decide what to offer, never isinstance(). An
operation a backend cannot do raises NotSupported naming the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from devenv.config import Config
    from devenv.hostos import Host, Probe


@dataclass(frozen=True)
class Features:
    """What a backend can do; the CLI and orchestration branch on these."""

    vm: bool  # runs a guest (False: the host itself runs the containers)
    ssh: bool  # reachable over SSH (ssh-config, cp through SFTP)
    port_forwarding: bool
    mounts: tuple[str, ...] = ()  # mount kinds: "9p", "sshfs", "virtiofs", "host"
    snapshots: bool = False
    suspend: bool = False  # `stop` can save the running guest and `start` restore it
    accelerators: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ("docker", "podman", "containerd")


# suspended: no VM runs, the guest is saved to disk and the next start restores it
STATES = ("stopped", "suspended", "starting", "running", "degraded", "broken")


@dataclass(frozen=True)
class Status:
    """Derived on every call from pid files, sockets and probes; never stored."""

    state: str
    reason: str = ""
    details: dict[str, object] = field(default_factory=dict)  # shown as `key: value` lines and in --json
    figures: dict[str, float | int | str] = field(default_factory=dict)  # numbers for --json only


class StepReporter(Protocol):
    """step(name) as each long step begins; the CLI renders it (devenv.cli.ui.Steps)."""

    def __call__(self, name: str, /) -> None: ...

    def fail(self) -> None:
        """The current step failed and the work goes on another way (a fallback)."""


@dataclass
class InstanceRef:
    """What a backend needs to know about one instance."""

    name: str
    dir: Path
    config: Config


class Lifecycle(Protocol):
    def create(self, inst: InstanceRef, step: StepReporter) -> None: ...
    def start(self, inst: InstanceRef, step: StepReporter) -> None: ...
    def stop(self, inst: InstanceRef, force: bool, step: StepReporter, *, suspend: bool = False) -> None:
        """force: no clean shutdown; suspend (only where features.suspend): save the running guest instead."""

    def delete(self, inst: InstanceRef) -> None: ...
    def status(self, inst: InstanceRef) -> Status: ...


@dataclass(frozen=True)
class ExecRequest:
    """One `devenv exec`: a value, so a new option reaches every backend without a new signature."""

    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)  # wins over devenv.toml's env
    # -w: a directory in the instance, used as it is; None follows the host's working directory
    # (in a VM: where a mount puts it, else the guest home; hostagent.mounts.guest_cwd)
    cwd: str | None = None
    # False: the host agent already answered "unavailable" for this very command (the native
    # launcher asked), so asking again would only wait out its reconnect timeout a second time
    ask_agent: bool = True
    tty: bool = False  # on a PTY of its own, the terminal in raw mode (`devenv exec -t`, as `ssh -t`)


class Executor(Protocol):
    def exec(self, inst: InstanceRef, req: ExecRequest) -> int:
        """Run the request's command in the instance; its exit code."""
        ...

    def shell(self, inst: InstanceRef) -> int: ...


class Files(Protocol):
    def copy_in(self, inst: InstanceRef, src: Path, dst: str) -> None: ...
    def copy_out(self, inst: InstanceRef, src: str, dst: Path) -> None: ...


class EngineEndpoint(Protocol):
    def docker_env(self, inst: InstanceRef) -> dict[str, str]: ...


@runtime_checkable
class Backend(Lifecycle, Executor, Files, EngineEndpoint, Protocol):
    name: str
    features: Features

    def ssh_config(self, inst: InstanceRef) -> str: ...
    def log_files(self, inst: InstanceRef) -> list[Path]: ...


@dataclass(frozen=True)
class Snapshot:
    """One saved copy of an instance's disk, as `devenv snapshot list` shows it."""

    name: str
    created: float  # seconds since the epoch (UTC), as the hypervisor recorded it


class Snapshots(Protocol):
    """What a backend whose `features.snapshots` is set adds: named copies of the instance's disk.

    A snapshot holds the disk alone, never a running guest's memory: create
    and restore ask for a shut-down instance (StateError otherwise), so the
    disk is clean and nothing has it open. Restore puts the disk back exactly
    as it was; what was written after the snapshot is gone.
    """

    def snapshot_create(self, inst: InstanceRef, name: str, step: StepReporter) -> None: ...
    def snapshot_list(self, inst: InstanceRef) -> list[Snapshot]: ...
    def snapshot_restore(self, inst: InstanceRef, name: str, step: StepReporter) -> None: ...
    def snapshot_delete(self, inst: InstanceRef, name: str, step: StepReporter) -> None: ...


class AvailabilityCheck(Protocol):
    def __call__(self, host: Host) -> Probe: ...
