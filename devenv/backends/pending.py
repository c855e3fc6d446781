"""A backend whose lifecycle lands in a later issue.

It exists so every command answers honestly: each operation raises NotSupported
naming the backend and the missing part. Nothing pretends to work.
"""

from __future__ import annotations

from pathlib import Path

from devenv.backends.base import ExecRequest, Features, InstanceRef, Status, StepReporter
from devenv.errors import NotSupported


class PendingBackend:
    name = "pending"
    features = Features(vm=True, ssh=True, port_forwarding=True)
    missing = "this backend is not implemented yet"
    hint = "use --backend native on a Linux host with docker or podman"

    def _no(self, operation: str) -> NotSupported:
        return NotSupported(self.name, operation, self.hint, why=self.missing)

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        raise self._no("create")

    def start(self, inst: InstanceRef, step: StepReporter) -> None:
        raise self._no("start")

    def stop(self, inst: InstanceRef, force: bool, step: StepReporter, *, suspend: bool = False) -> None:
        raise self._no("stop")

    def delete(self, inst: InstanceRef) -> None:
        """Deleting only removes the instance directory, which needs nothing from the backend."""

    def status(self, inst: InstanceRef) -> Status:
        return Status("broken", f"backend `{self.name}`: {self.missing}")

    def exec(self, inst: InstanceRef, req: ExecRequest) -> int:
        raise self._no("exec")

    def shell(self, inst: InstanceRef) -> int:
        raise self._no("shell")

    def copy_in(self, inst: InstanceRef, src: Path, dst: str) -> None:
        raise self._no("cp")

    def copy_out(self, inst: InstanceRef, src: str, dst: Path) -> None:
        raise self._no("cp")

    def docker_env(self, inst: InstanceRef) -> dict[str, str]:
        raise self._no("docker-env")

    def ssh_config(self, inst: InstanceRef) -> str:
        raise self._no("ssh-config")

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return []
