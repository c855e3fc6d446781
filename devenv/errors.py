"""Every failure a user can cause or fix is a DevenvError.

The CLI turns these into one line of message, one line of hint and a distinct
exit code in exactly one place (devenv.cli.boundary). Exit codes follow the BSD
sysexits range so they rarely collide with the codes of commands run through
`devenv exec`, which returns the remote command's own code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 64  # bad arguments or flags
    CONFIG = 65  # devenv.toml is malformed or invalid
    NOT_FOUND = 66  # the instance (or image) does not exist
    STATE = 67  # wrong state: exists already, not running, in use
    UNAVAILABLE = 69  # backend, hypervisor, engine or optional dependency missing
    INTERNAL = 70  # a bug in devenv
    NOT_SUPPORTED = 71  # the backend cannot do this (or not yet)
    COMMAND_FAILED = 72  # an external program (qemu-img, wsl.exe, ...) failed
    IMAGE = 73  # image download, checksum or build failed
    DISK_FULL = 74  # the host's filesystem (or the user's quota there) has no room for what devenv writes
    TIMEOUT = 75  # waited for something that never came
    CONNECTION = 76  # SSH or agent connection failed
    PERMISSION = 77  # a file or device is not accessible for this user
    INTERRUPTED = 130  # Ctrl-C


def debugging() -> bool:
    """DEVENV_DEBUG asks for tracebacks: the CLI's boundary prints them, and a bug is not turned into a status."""
    import os

    return os.environ.get("DEVENV_DEBUG", "") not in ("", "0")


class DevenvError(Exception):
    """A failure with a message, a hint saying what to do, and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str = "", exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(DevenvError):
    exit_code = ExitCode.USAGE


class ConfigError(DevenvError):
    """Carries every problem found in one config file, each already located."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str], hint: str = "") -> None:
        self.problems = problems
        message = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        super().__init__(message, hint or "fix the file and run the command again")


class InstanceNotFound(DevenvError):
    exit_code = ExitCode.NOT_FOUND


class SnapshotNotFound(DevenvError):
    """The instance has no snapshot of that name."""

    exit_code = ExitCode.NOT_FOUND


class StateError(DevenvError):
    exit_code = ExitCode.STATE


class SuspendRefused(StateError):
    """The guest could not be saved (`devenv stop --suspend`); the VM runs on as before, nothing was lost."""


class BackendUnavailable(DevenvError):
    exit_code = ExitCode.UNAVAILABLE


class NotSupported(DevenvError):
    """The named backend cannot do this operation; never a silent no-op."""

    exit_code = ExitCode.NOT_SUPPORTED

    def __init__(self, backend: str, operation: str, hint: str = "", why: str = "") -> None:
        detail = f": {why}" if why else ""
        super().__init__(f"backend `{backend}` does not support {operation}{detail}", hint)
        self.backend = backend
        self.operation = operation


class CommandFailed(DevenvError):
    exit_code = ExitCode.COMMAND_FAILED


class ImageError(DevenvError):
    exit_code = ExitCode.IMAGE


class DiskFull(DevenvError):
    """No room on the host for a file devenv writes; the message names the path and the space it needs."""

    exit_code = ExitCode.DISK_FULL


class Timeout(DevenvError):
    exit_code = ExitCode.TIMEOUT


class ConnectionFailed(DevenvError):
    exit_code = ExitCode.CONNECTION


class PermissionProblem(DevenvError):
    exit_code = ExitCode.PERMISSION
