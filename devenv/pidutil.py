"""Is a process alive, and a non-blocking lock on a pid file: the same answers on POSIX and Windows.

Stdlib only and cheap to import (the `devenv exec` client uses it). It exists
because the POSIX idiom is dangerous on Windows: there `os.kill(pid, 0)` does
not probe, it terminates the process (TerminateProcess with exit code 0), so
a status check would kill the VM it asks about. The Windows branches follow
the documented Win32 calls; no Windows host was available to run them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_STILL_ACTIVE = 259  # GetExitCodeProcess's code for a process that has not exited
_QUERY_LIMITED_INFORMATION = 0x1000
# Windows locks are mandatory: a byte far past the pid text is locked, so readers can still read the pid.
_WINDOWS_LOCK_OFFSET = 1 << 30


def pid_alive(pid: int) -> bool:
    """True while a process with this pid runs (even one we may not signal); never disturbs it."""
    return process_start(pid) is not None


def process_start(pid: int) -> str | None:
    """A live process's start time (field 22 of /proc/PID/stat), to tell a recycled pid apart; None when gone.

    "" for a live process where there is no /proc (nothing to compare there).
    One read of the stat file serves both the zombie check and the start time.
    """
    if pid <= 0:
        return None
    if sys.platform == "win32":
        return "" if _windows_alive(pid) else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # someone else's, but there
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return ""  # no /proc (macOS): kill(0) said it exists
    # A zombie (exited, not reaped: a detached QEMU whose parent has not waited) is gone for every purpose here.
    if fields[:1] == ["Z"]:
        return None
    return fields[19] if len(fields) > 19 else ""


def rss_bytes(pid: int) -> int | None:
    """The memory a live process holds in RAM (resident set), or None where it cannot be read.

    Linux: VmRSS in /proc/PID/status; macOS and other POSIX hosts: `ps -o rss=`
    (KiB). Windows: None (a working-set query would need pywin32 or ctypes
    structures; no Windows host runs QEMU for devenv yet).
    """
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None  # gone, or a kernel thread (no VmRSS)
    if sys.platform == "win32":
        return None
    import subprocess

    try:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=5).stdout
        return int(out.strip()) * 1024 if out.strip() else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def runs_as(pid: int, marker: bytes) -> bool:
    """Alive, and its command line names `marker`: the process a pid file of ours was written for.

    A pid left in a file by a crash or a host reboot may be anyone's now; the
    marker (a path only our process's arguments hold) tells. Only Windows
    cannot show another process's command line: there a live pid counts.
    """
    if not pid_alive(pid):  # never os.kill(pid, 0) on Windows: there that terminates the process
        return False
    cmdline = command_line(pid)
    return cmdline is None or marker in cmdline


def command_line(pid: int) -> bytes | None:
    """A process's command line, to tell our own process from one that got a recycled pid.

    Linux: /proc/PID/cmdline (arguments NUL-separated). Elsewhere on POSIX (macOS,
    the BSDs): `ps -ww -o command=`, arguments space-separated and never cut.
    b"" when there is no such process; None when this host cannot say (Windows).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        if os.path.isdir("/proc/self"):
            return b""  # gone, or hidden from us (hidepid): either way not a process of ours
    return None if sys.platform == "win32" else ps_command_line(pid)


def ps_command_line(pid: int) -> bytes | None:
    """`ps`'s view of a command line (the no-/proc path of command_line); None when ps cannot run."""
    import subprocess

    try:
        proc = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else b""


def _windows_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    handle = kernel32.OpenProcess(_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return bool(ctypes.get_last_error() == 5)  # type: ignore[attr-defined,unused-ignore]  # ERROR_ACCESS_DENIED: exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def try_lock(fd: int, exclusive: bool = True) -> bool:
    """A non-blocking lock on an open file; False when another process holds one.

    POSIX: flock (shared or exclusive). Windows: msvcrt.locking on one byte
    past the end (always exclusive), so a probe must unlock() right after.
    """
    if sys.platform == "win32":
        import msvcrt

        try:
            _windows_locking(fd, msvcrt.LK_NBLCK)  # type: ignore[attr-defined,unused-ignore]
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def claim(path: str | os.PathLike[str], content: str) -> int | None:
    """An exclusive, non-blocking lock on `path` (made 0600) with `content` written in; its fd, or None when held.

    The kernel drops the lock when the holder exits, so a crash leaves nothing
    stale; the content (a pid, what it does) lets another process name the holder.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if not try_lock(fd):
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, content.encode())
    return fd


def unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        _windows_locking(fd, msvcrt.LK_UNLCK)  # type: ignore[attr-defined,unused-ignore]
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _windows_locking(fd: int, mode: int) -> None:
    """msvcrt.locking on the lock byte: it acts at the file position, so move there and back."""
    import msvcrt

    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, mode, 1)  # type: ignore[attr-defined,unused-ignore]
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def detached() -> dict[str, Any]:
    """Popen arguments for a process that outlives the CLI, its console and its Ctrl-C.

    POSIX: a session of its own. Windows has no fork and no sessions: the
    process gets no console (DETACHED_PROCESS) and a process group of its own,
    so a Ctrl-C in the user's console is not delivered to it.
    """
    if sys.platform == "win32":
        import subprocess

        return {"creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}
