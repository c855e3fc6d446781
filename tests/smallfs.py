"""The small filesystem ci/test.sh mounts for the host-disk-full tests (DEVENV_TEST_SMALL_FS), and filling it.

Tests fill it with filler files that leave a chosen number of bytes free and
free them again; the fixture starts each test on an empty filesystem and
empties it after, a failed test's fillers too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.hostdisk import free_bytes

ENV = "DEVENV_TEST_SMALL_FS"


def small_fs_root() -> Path:
    """The filesystem's root, or a skip (a failure under CI=true, whose ci/test.sh makes it)."""
    root = os.environ.get(ENV, "")
    if not root or not os.path.isdir(root):
        why = f"{ENV} names no small filesystem of this user's (ci/test.sh mounts one as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return Path(root)


def fill(fs: Path, leave: int) -> Path:
    """A filler file taking all but about `leave` bytes (a little less: the filler's own metadata)."""
    filler = fs / f"filler-{len(list(fs.glob('filler-*')))}"
    size = free_bytes(fs) - leave
    assert size > 0, f"{fs} has only {free_bytes(fs)} bytes free, fewer than the {leave} to leave"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # the bulk at once, short of the extent tables it needs too; then the rest a block at a time
        if size > 4 * 1024**2:
            os.posix_fallocate(fd, 0, size - 2 * 1024**2)
            os.lseek(fd, 0, os.SEEK_END)
        while (over := free_bytes(fs) - leave) > 0:
            try:
                os.write(fd, b"\0" * min(over, 64 * 1024))
                os.fsync(fd)
            except OSError:
                break  # full: nothing is left to take
    finally:
        os.close(fd)
    assert free_bytes(fs) <= leave
    return filler


def empty(fs: Path) -> list[str]:
    """Remove everything under `fs`; the names that were there."""
    left = sorted(p.name for p in fs.iterdir())
    for p in fs.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return left


def small_fs_fixture() -> Iterator[Path]:
    fs = small_fs_root()
    assert not list(fs.iterdir()), f"{fs} is not empty at the start: {empty(fs)} (removed now)"
    yield fs
    empty(fs)  # the folders a test made (a DEVENV_HOME, a cache), and its fillers if it failed before freeing them
