"""Keep a reverse-sshfs mount inside its shared folder: the SFTP requests the guest sends are screened on the host.

OpenSSH's sftp-server has no way to confine itself to a folder (its chroot is
sshd's ChrootDirectory, which needs root), so on its own it serves every host
file the user can reach, to whoever is root in the guest. This guard reads
the guest's SFTP requests before sftp-server does and refuses, with
SSH_FX_PERMISSION_DENIED, every one whose path resolves outside the shared
folder on the host, symlinks followed the way the request itself would follow
them. Requests on handles (READ, WRITE, FSTAT, CLOSE, ...) pass untouched: a
handle only exists for a path that was let through.

The check and sftp-server's use of the path are two moments, and a symlink
made in between would redirect the second. Only requests that move or create
names can do that (SYMLINK, RENAME, posix-rename, hardlink), so they order
themselves against the path checks like a readers-writer lock held from the
check until sftp-server's reply: such a request waits until every checked
request before it has been answered, and no path is checked while it runs.
One order is kept across every mount of the process, so a symlink made
through one mount cannot redirect a path checked by another. Reads and
writes of file data never wait.

Request ids come from the guest, so one in use cannot be used again until its
reply: the order above counts replies by id, and a repeated id would release
it early.

Wire format (draft-ietf-secsh-filexfer-02, version 3, as OpenSSH speaks it):
uint32 length, byte type, uint32 request id, then the fields; strings are
uint32 length + bytes. OpenSSH's SYMLINK carries the target first and the
link's path second (the reverse of the draft); only the link's path is a
place on disk, so that is the one checked.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Request types.
INIT, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 1, 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = range(11, 21)
EXTENDED = 200
# Reply types, and the status codes used here.
VERSION, STATUS = 2, 101
FX_PERMISSION_DENIED, FX_BAD_MESSAGE, FX_OP_UNSUPPORTED = 3, 5, 8

MAX_PACKET = 1024 * 1024  # sftp-server itself refuses more than 256 KiB; a guest sending this much is not sshfs

FOLLOW, NO_FOLLOW = "follow", "no-follow"  # whether the request's path has its last symlink followed
# Which paths each path-bearing request carries, and how the kernel resolves each.
PATH_REQUESTS: dict[int, tuple[str, ...]] = {
    OPEN: (FOLLOW,),
    OPENDIR: (FOLLOW,),
    STAT: (FOLLOW,),
    SETSTAT: (FOLLOW,),
    REALPATH: (FOLLOW,),
    LSTAT: (NO_FOLLOW,),
    READLINK: (NO_FOLLOW,),
    REMOVE: (NO_FOLLOW,),
    MKDIR: (NO_FOLLOW,),
    RMDIR: (NO_FOLLOW,),
    RENAME: (NO_FOLLOW, NO_FOLLOW),
    SYMLINK: ("", NO_FOLLOW),  # (target: only text, checked when followed; the link's own path)
}
EXTENDED_PATHS: dict[bytes, tuple[str, ...]] = {
    b"statvfs@openssh.com": (FOLLOW,),
    b"lsetstat@openssh.com": (NO_FOLLOW,),
    b"posix-rename@openssh.com": (NO_FOLLOW, NO_FOLLOW),
    b"hardlink@openssh.com": (NO_FOLLOW, NO_FOLLOW),  # link() does not follow the old path's symlink
}
EXTENDED_ON_HANDLES = {
    b"fstatvfs@openssh.com",
    b"fsync@openssh.com",
    b"limits@openssh.com",
    b"copy-data",
    b"users-groups-by-id@openssh.com",
}
ON_HANDLES = {INIT, CLOSE, READ, WRITE, FSTAT, FSETSTAT, READDIR}  # never wait: they carry no path
RENAMING = {SYMLINK, RENAME, b"posix-rename@openssh.com", b"hardlink@openssh.com"}


class BadPacket(Exception):
    """A request too short for the fields its type carries."""


def frames(buf: bytearray) -> Iterator[bytes]:
    """Whole packets (with their length prefix) taken off the front of `buf`; a partial one stays."""
    while len(buf) >= 4:
        (size,) = struct.unpack_from(">I", buf)
        if size > MAX_PACKET:
            raise BadPacket(f"an SFTP packet of {size} bytes")
        if len(buf) < 4 + size:
            return
        packet = bytes(buf[: 4 + size])
        del buf[: 4 + size]
        yield packet


def packet_type(packet: bytes) -> int:
    return packet[4] if len(packet) > 4 else 0


def may_wait(packet: bytes) -> bool:
    """Whether admitting this request may wait for replies to earlier ones."""
    return packet_type(packet) not in ON_HANDLES


def request_id(packet: bytes) -> int | None:
    """The id of a request or reply; None for INIT and VERSION, which have none."""
    if packet_type(packet) in (INIT, VERSION) or len(packet) < 9:
        return None
    return int(struct.unpack_from(">I", packet, 5)[0])


def _strings(packet: bytes, offset: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        if offset + 4 > len(packet):
            raise BadPacket("a string runs past the packet")
        (n,) = struct.unpack_from(">I", packet, offset)
        offset += 4
        if offset + n > len(packet):
            raise BadPacket("a string runs past the packet")
        out.append(packet[offset : offset + n])
        offset += n
    return out


def status_reply(rid: int, code: int, message: str) -> bytes:
    text = message.encode()
    body = struct.pack(">BII", STATUS, rid, code) + struct.pack(">I", len(text)) + text + struct.pack(">I", 0)
    return struct.pack(">I", len(body)) + body


class PathOrder:
    """The readers-writer order between checked paths and the requests that could redirect them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._checked = 0  # path requests checked and not yet answered
        self._renaming = False  # a name-changing request is running

    def check(self, renaming: bool, alive: threading.Event) -> bool:
        """Wait for this request's turn; False when its mount closed meanwhile."""
        with self._cond:
            while alive.is_set() and (self._renaming or (renaming and self._checked)):
                self._cond.wait(0.5)
            if not alive.is_set():
                return False
            if renaming:
                self._renaming = True
            else:
                self._checked += 1
            return True

    def done(self, renaming: bool) -> None:
        with self._cond:
            if renaming:
                self._renaming = False
            else:
                self._checked -= 1
            self._cond.notify_all()


ORDER = PathOrder()  # one for the process: every mount's requests


@dataclass
class Guard:
    """The screen for one mount's request stream. Not thread-safe per direction: one reader, one replier."""

    root: str  # the shared folder on the host
    order: PathOrder = field(default=ORDER)
    alive: threading.Event = field(default_factory=threading.Event)
    _root: bytes = b""
    _given: bytes = b""
    _outstanding: dict[int, bool | None] = field(default_factory=dict)  # id -> renaming? (None: not ordered)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._root = os.fsencode(os.path.realpath(self.root))
        self._given = os.fsencode(os.path.abspath(self.root))  # what sshfs names it: maybe through a symlink
        self.alive.set()

    def admit(self, packet: bytes) -> bytes | None:
        """None to pass `packet` on to sftp-server; else the refusal to send the guest instead.

        May wait (see the module's docstring); the caller must have passed on
        every earlier admitted packet first, or the reply it waits for never comes.
        """
        kind = packet_type(packet)
        rid = request_id(packet)
        if rid is None:
            return None  # INIT
        with self._lock:
            if rid in self._outstanding:
                return status_reply(rid, FX_BAD_MESSAGE, "request id already in use")
        try:
            paths, renaming = self._paths(kind, packet)
        except BadPacket as e:
            return status_reply(rid, FX_BAD_MESSAGE, str(e))
        except LookupError:
            return status_reply(rid, FX_OP_UNSUPPORTED, "not served on a devenv mount")
        ordered = bool(paths)
        if ordered and not self.order.check(renaming, self.alive):
            return status_reply(rid, FX_PERMISSION_DENIED, "the mount is closing")
        refused = next((p for p, how in paths if how and not self._inside(p, how)), None)
        if refused is not None:
            if ordered:
                self.order.done(renaming)
            log.warning("refused an SFTP request for %s: outside %s", refused.decode(errors="replace"), self.root)
            return status_reply(rid, FX_PERMISSION_DENIED, "outside the shared folder")
        with self._lock:
            self._outstanding[rid] = renaming if ordered else None
        return None

    def replied(self, packet: bytes) -> None:
        """sftp-server answered a request: its id is free again, and a checked path is done."""
        rid = request_id(packet)
        if rid is None:
            return
        with self._lock:
            ordered = self._outstanding.pop(rid, None)
        if ordered is not None:
            self.order.done(ordered)

    def close(self) -> None:
        """The mount ended: what it held in the order is released, and its waits give up."""
        self.alive.clear()
        with self._lock:
            held, self._outstanding = self._outstanding, {}
        for ordered in held.values():
            if ordered is not None:
                self.order.done(ordered)

    def _paths(self, kind: int, packet: bytes) -> tuple[list[tuple[bytes, str]], bool]:
        if kind == EXTENDED:
            (name,) = _strings(packet, 9, 1)
            if name in EXTENDED_ON_HANDLES:
                return [], False
            hows = EXTENDED_PATHS[name]  # LookupError: an extension this guard does not know
            return list(zip(_strings(packet, 13 + len(name), len(hows)), hows, strict=True)), name in RENAMING
        hows = PATH_REQUESTS.get(kind, ())
        if not hows:
            return [], False
        return list(zip(_strings(packet, 9, len(hows)), hows, strict=True)), kind in RENAMING

    def _inside(self, path: bytes, how: str) -> bool:
        if b"\0" in path:
            return False
        full = os.path.join(self._root, path)  # sftp-server runs in the shared folder; absolute paths stay
        head, tail = os.path.split(full)
        if how == FOLLOW or tail in (b"", b".", b"..") or os.path.normpath(full) == self._given:
            real = os.path.realpath(full)  # "dir/" and "x/.." resolve their last part whatever the request
        else:
            real = os.path.join(os.path.realpath(head), tail)
        root = self._root
        return real == root or real.startswith(root.rstrip(b"/") + b"/")
