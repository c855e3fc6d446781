"""Copying files and folders both ways over SFTP, keeping modes, times and symlinks (`devenv cp`).

Errors name both paths and say whose mistake it is (a missing folder, a
place the guest user may not write), never an internal error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
from collections.abc import Callable
from pathlib import Path

import paramiko

from devenv.errors import CommandFailed, DevenvError, InstanceNotFound, PermissionProblem

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (path, bytes done, bytes total)


def guest_path(path: str) -> str:
    """SFTP resolves relative paths against the login directory, so `~/x` is `x`."""
    if path in ("~", "~/"):
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path or "."


def remote_is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
    except FileNotFoundError:
        return False


def _file_progress(progress: Progress | None, label: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    fn = progress

    def callback(done: int, total: int) -> None:
        fn(label, done, total)

    return callback


def copy_failed(e: OSError, what: str) -> DevenvError:
    """An SFTP or host file error, named with both paths: a user's mistake, not a devenv bug.

    paramiko's SFTP errors carry the errno (ENOENT, EACCES) but no path, so the
    caller names the file it was working on.
    """
    reason = e.strerror or str(e) or type(e).__name__
    if isinstance(e, PermissionError) and e.filename:  # Python's own file calls name the host path
        return PermissionProblem(f"cannot copy {what}: {e.filename}: {reason}", "check that path's permissions")
    if isinstance(e, PermissionError):
        return PermissionProblem(
            f"cannot copy {what}: {reason}",
            "in the guest devenv reads and writes as its user `devenv`: pick a place it may use "
            "(its home, /tmp), or go through it with `devenv exec -- sudo cp ...`",
        )
    if isinstance(e, FileNotFoundError):
        return InstanceNotFound(f"cannot copy {what}: {reason}", "the folder a copy goes into must exist already")
    hint = "check both paths (a file where a folder goes?) and the free space"
    return CommandFailed(f"cannot copy {what}: {reason}", hint)


def put_tree(sftp: paramiko.SFTPClient, src: Path, dest: str, progress: Progress | None) -> None:
    try:
        _put_node(sftp, src, dest, progress)
    except OSError as e:
        raise copy_failed(e, f"{src} to {dest} in the guest") from None


def _put_node(sftp: paramiko.SFTPClient, src: Path, dest: str, progress: Progress | None) -> None:
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            sftp.remove(dest)
        sftp.symlink(os.readlink(src), dest)
        return
    if stat.S_ISDIR(st.st_mode):
        if not remote_is_dir(sftp, dest):
            sftp.mkdir(dest, mode=0o700)
        for child in sorted(src.iterdir()):
            put_tree(sftp, child, posixpath.join(dest, child.name), progress)
    elif stat.S_ISREG(st.st_mode):
        sftp.put(os.fspath(src), dest, callback=_file_progress(progress, str(src)), confirm=True)
    else:
        log.warning("skipping %s: not a regular file, directory or symlink", src)
        return
    # Modes and times last: a read-only directory would otherwise refuse its children.
    sftp.chmod(dest, stat.S_IMODE(st.st_mode))
    sftp.utime(dest, (st.st_atime, st.st_mtime))


def get_tree(
    sftp: paramiko.SFTPClient, src: str, attrs: paramiko.SFTPAttributes, dest: Path, progress: Progress | None
) -> None:
    try:
        _get_node(sftp, src, attrs, dest, progress)
    except OSError as e:
        raise copy_failed(e, f"{src} in the guest to {dest}") from None


def _get_node(
    sftp: paramiko.SFTPClient, src: str, attrs: paramiko.SFTPAttributes, dest: Path, progress: Progress | None
) -> None:
    mode = attrs.st_mode or 0
    if stat.S_ISLNK(mode):
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        os.symlink(sftp.readlink(src) or "", dest)
        return
    if stat.S_ISDIR(mode):
        dest.mkdir(mode=0o700, exist_ok=True)
        for child in sorted(sftp.listdir_attr(src), key=lambda a: a.filename):
            get_tree(sftp, posixpath.join(src, child.filename), child, dest / child.filename, progress)
    elif stat.S_ISREG(mode):
        sftp.get(src, os.fspath(dest), callback=_file_progress(progress, src))
    else:
        log.warning("skipping %s in the guest: not a regular file, directory or symlink", src)
        return
    os.chmod(dest, stat.S_IMODE(mode))
    if attrs.st_mtime is not None:
        os.utime(dest, (attrs.st_atime or attrs.st_mtime, attrs.st_mtime))
