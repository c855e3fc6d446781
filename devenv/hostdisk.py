"""Room on the host's filesystems: a full disk becomes one clear error, never a traceback or a half-made file.

Every place that writes something large (an instance's files, an image
download, the guest's memory file) asks here first when it knows how much it
needs, and turns the ENOSPC (or EDQUOT, a quota) that may come anyway, from a
race with another writer or a size it could not know, into the same DiskFull:
which path, how much it needs, how much its filesystem has. The caller removes
what it had begun, so nothing half-written is left for a later command to take
for whole.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devenv.errors import DiskFull
from devenv.sizes import format_measured

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what qemu-img prints for ENOSPC and EDQUOT (strerror)
FULL_WORDS = ("No space left on device", "Disk quota exceeded")


def free_bytes(path: Path) -> int:
    """Bytes an ordinary user may still write on the filesystem holding `path` (or its nearest existing folder)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if sys.platform == "win32":
        import shutil

        return shutil.disk_usage(p).free  # GetDiskFreeSpaceEx: what this user may still write
    st = os.statvfs(p)
    return int(st.f_bavail * st.f_frsize)


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def said_full(text: str) -> bool:
    """A program's output (qemu-img's) says it ran out of space."""
    return any(words in text for words in FULL_WORDS)


def full(path: Path, needed: int | None, what: str, *, more_than: bool = False) -> DiskFull:
    """The error for `what` (writing `path`), which needs `needed` bytes there (None: not known).

    `more_than`: `needed` is what was written when the disk ran out, the size
    itself not known beforehand (a download without a Content-Length).
    """
    try:
        free = f"{format_measured(free_bytes(path))} free"
    except OSError:
        free = "its free space unknown"
    if needed is None:
        need = "needs more room"
    else:
        need = f"needs {'more than ' if more_than else ''}{format_measured(needed)}"
    return DiskFull(
        f"no space left on the host for {what}: {path} {need}; its filesystem has {free}",
        f"free space on the filesystem holding {path} (or point {_env_of(path)} at a bigger one), "
        "then run the command again",
    )


def _env_of(path: Path) -> str:
    """Which setting moves `path`: DEVENV_CACHE for images, DEVENV_HOME for the rest."""
    from devenv import paths

    with contextlib.suppress(OSError, ValueError):
        Path(path).absolute().relative_to(paths.cache_dir())
        return paths.ENV_CACHE
    return paths.ENV_HOME


def ensure_free(path: Path, needed: int, what: str) -> None:
    """DiskFull before anything is written when the filesystem holding `path` has less than `needed` bytes."""
    try:
        free = free_bytes(path)
    except OSError:
        return  # cannot tell: the write itself will say
    if free < needed:
        raise full(path, needed, what)


@contextlib.contextmanager
def translated(path: Path, needed: int | None, what: str, *, name_file: bool = True) -> Iterator[None]:
    """An ENOSPC or EDQUOT inside becomes DiskFull; the caller's own cleanup still runs (it re-raises).

    The error names the file whose write failed when the OSError says, else
    `path`; `name_file=False` always names `path` (the failed file was a
    temporary one the user never sees).
    """
    try:
        yield
    except OSError as e:
        if not is_full(e):
            raise
        where = Path(e.filename) if name_file and isinstance(e.filename, str) else path
        raise full(where, needed, what) from None


def reserve(path: Path, size: int, what: str) -> None:
    """Make `path` (0600, new) with `size` bytes of blocks allocated but not written, or DiskFull (and no file).

    For a file another program maps shared and writes through page faults
    (QEMU, the guest's memory file): a fault that finds no free block is a
    SIGBUS that kills the program, not an error it can report. With its blocks
    allocated up front, a disk that fills later cannot take them. Only Linux's
    fallocate(2) is used: where a filesystem cannot (ZFS, tmpfs limits, other
    systems) nothing is reserved, rather than glibc's fallback, which writes
    every block.
    """
    with translated(path, size, what):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        err = _fallocate(fd, 0, size)
    finally:
        os.close(fd)
    if err in FULL_ERRNOS:
        path.unlink()  # what part it got goes back: the disk is full as it is
        raise full(path, size, what)
    # another error (EOPNOTSUPP): the filesystem cannot reserve; the file stays sparse, as QEMU would make it


FALLOC_FL_KEEP_SIZE = 1


def keep_allocated(path: Path) -> bool:
    """Allocate again the blocks of `path` that were given back (holes); False when the disk is full.

    The guest's memory balloon reports free pages and QEMU gives them back to
    the host by punching holes in the memory file, so the reservation made at
    launch thins out as the guest runs; a page the guest takes again would then
    need a new block, and on a full disk that is the SIGBUS again. Filling the
    holes with allocated, unwritten blocks costs disk space only: no page is
    read or written, so the memory given back stays given back.
    """
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return True  # gone (the VM stopped): nothing to keep
    try:
        return _fallocate(fd, FALLOC_FL_KEEP_SIZE, os.fstat(fd).st_size) not in FULL_ERRNOS
    finally:
        os.close(fd)


def _fallocate(fd: int, mode: int, size: int) -> int:
    """fallocate(2) over [0, size): 0, or its errno. Linux only (elsewhere: EOPNOTSUPP, nothing done).

    Never glibc's posix_fallocate fallback, which writes every block.
    """
    import sys

    if not sys.platform.startswith("linux") or size <= 0:
        return errno.EOPNOTSUPP if size > 0 else 0
    import ctypes

    return 0 if _libc_fallocate()(fd, mode, 0, size) == 0 else ctypes.get_errno()


@functools.cache
def _libc_fallocate() -> Any:
    """libc's fallocate, looked up once: the host agent calls it every few seconds for as long as the VM runs."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    return fallocate


def allocated(st: os.stat_result) -> int:
    """Bytes a file takes on the disk (a sparse file's holes are free); Windows reports only the size."""
    if sys.platform == "win32":
        return st.st_size
    return int(st.st_blocks) * 512
