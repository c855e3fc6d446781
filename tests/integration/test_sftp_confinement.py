"""Reverse sshfs serves the shared folder and nothing else: a real sftp-server behind the guard.

The guest's side is paramiko's SFTP client (sshfs speaks the same protocol);
the host's side is the real SshfsMount with the real OpenSSH sftp-server, so
what is tried is what a guest's root could send. The channel is a socket pair
standing in for the SSH exec channel, which carries the bytes unchanged.
The same mount against a real guest's sshfs: tests/e2e/test_sshfs_mounts.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from devenv.hostagent import sftpguard
from devenv.hostagent.mounts import MountSpec, SshfsMount, find_sftp_server

SERVER = find_sftp_server()
pytestmark = pytest.mark.skipif(SERVER is None, reason="no OpenSSH sftp-server on this host (install openssh-client)")


class SocketChannel:
    """The part of paramiko.Channel that SshfsMount uses, over one end of a socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._closed = threading.Event()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def recv_stderr(self, n: int) -> bytes:
        self._closed.wait()
        return b""

    def close(self) -> None:
        self.closed = True
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class GuestEnd:
    """The guest's end as paramiko's SFTP client wants it: a socket with a channel's name."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_name(self) -> str:
        return "guest"

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


Mount = Callable[..., tuple[paramiko.SFTPClient, SshfsMount]]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    made: list[tuple[paramiko.SFTPClient, SshfsMount]] = []

    def make(folder: Path, writable: bool = True) -> tuple[paramiko.SFTPClient, SshfsMount]:
        ours, guests = socket.socketpair()
        assert SERVER is not None
        m = SshfsMount(MountSpec(str(folder), str(folder), writable, "devenv0"), SocketChannel(ours), SERVER)  # type: ignore[arg-type]
        client = paramiko.SFTPClient(GuestEnd(guests))
        made.append((client, m))
        return client, m

    yield make
    for client, m in made:
        client.close()
        m.close()
        m.join()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A shared folder, and beside it a secret the user can read but the guest must not."""
    shared = tmp_path / "project"
    (shared / "src").mkdir(parents=True)
    (shared / "src" / "main.py").write_text("print('hi')\n")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret").write_text("token\n")
    return shared, outside


def denied(call: Callable[[], object]) -> None:
    with pytest.raises(PermissionError) as e:
        call()
    assert e.value.errno == errno.EACCES


def test_the_shared_folder_reads_and_writes_as_before(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, _ = tree
    sftp, _ = mount(shared)
    assert sftp.listdir(str(shared)) == ["src"]
    with sftp.open(str(shared / "src" / "main.py")) as f:
        assert f.read() == b"print('hi')\n"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many pipelined WRITEs and READs, several packets per recv
    with sftp.open(str(shared / "big.bin"), "wb") as f:
        f.set_pipelined(True)
        f.write(payload)
    assert hashlib.sha256((shared / "big.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
    with sftp.open(str(shared / "big.bin")) as f:
        f.prefetch()
        assert f.read() == payload
    sftp.mkdir(str(shared / "new"))
    sftp.rename(str(shared / "big.bin"), str(shared / "new" / "big.bin"))
    sftp.posix_rename(str(shared / "new" / "big.bin"), str(shared / "new" / "moved.bin"))
    sftp.remove(str(shared / "new" / "moved.bin"))
    sftp.rmdir(str(shared / "new"))
    assert sorted(os.listdir(shared)) == ["src"]
    assert sftp.normalize(str(shared / "src" / "..")) == str(shared.resolve())


def test_paths_outside_the_shared_folder_are_refused(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, outside = tree
    sftp, _ = mount(shared)
    secret = str(outside / "secret")
    denied(lambda: sftp.open(secret))
    denied(lambda: sftp.open(str(shared / ".." / "private" / "secret")))
    denied(lambda: sftp.open("../private/secret"))  # relative to the folder sftp-server runs in
    denied(lambda: sftp.stat(secret))
    denied(lambda: sftp.lstat(secret))
    denied(lambda: sftp.listdir(str(outside)))
    denied(lambda: sftp.listdir("/"))
    denied(lambda: sftp.normalize(str(shared / "..")))
    denied(lambda: sftp.chmod(secret, 0o777))
    denied(lambda: sftp.open(str(outside / "dropped"), "w"))
    denied(lambda: sftp.mkdir(str(outside / "made")))
    denied(lambda: sftp.remove(secret))
    denied(lambda: sftp.rename(secret, str(shared / "stolen")))  # moved in, it would be readable
    denied(lambda: sftp.rename(str(shared / "src" / "main.py"), str(outside / "main.py")))
    denied(lambda: sftp.posix_rename(secret, str(shared / "stolen")))
    denied(lambda: sftp.symlink("/etc", str(outside / "link")))
    assert sorted(os.listdir(outside)) == ["secret"] and (outside / "secret").read_text() == "token\n"
    assert sorted(os.listdir(shared)) == ["src"]
    assert sftp.listdir(str(shared)) == ["src"]  # refusals leave the mount serving


def test_a_symlink_out_of_the_folder_is_listed_but_never_followed(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, outside = tree
    (shared / "escape").symlink_to(outside)  # on the host, by the user: `ls -l` shows it in the guest
    sftp, _ = mount(shared)
    assert sftp.readlink(str(shared / "escape")) == str(outside)
    assert sftp.lstat(str(shared / "escape")).st_mode is not None
    denied(lambda: sftp.open(str(shared / "escape" / "secret")))
    denied(lambda: sftp.stat(str(shared / "escape")))
    denied(lambda: sftp.listdir(str(shared / "escape")))
    denied(lambda: sftp.open(str(shared / "escape" / "planted"), "w"))
    denied(lambda: sftp.lstat(str(shared / "escape") + "/"))  # a trailing slash follows the link
    denied(lambda: sftp.open(str(shared / "escape" / ".." / "private" / "secret")))


def test_a_symlink_the_guest_makes_cannot_reach_out(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, outside = tree
    sftp, _ = mount(shared)
    sftp.symlink(str(outside), str(shared / "made"))  # making it is allowed: npm and git make links
    assert os.readlink(shared / "made") == str(outside)
    denied(lambda: sftp.open(str(shared / "made" / "secret")))
    sftp.symlink("src", str(shared / "inner"))  # one that stays inside works
    with sftp.open(str(shared / "inner" / "main.py")) as f:
        assert f.read() == b"print('hi')\n"


def test_a_hard_link_cannot_bring_an_outside_file_in(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, outside = tree
    sftp, _ = mount(shared)
    with pytest.raises(PermissionError):
        sftp._request(paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", str(outside / "secret"), str(shared / "h"))
    assert not (shared / "h").exists()
    sftp._request(
        paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", str(shared / "src" / "main.py"), str(shared / "h")
    )
    assert (shared / "h").read_text() == "print('hi')\n"


def test_extensions_that_name_no_place_in_the_folder_are_not_served(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, _ = tree
    sftp, _ = mount(shared)
    for name, args in (("home-directory", ("root",)), ("expand-path@openssh.com", ("~",)), ("made-up@example", ())):
        with pytest.raises(IOError) as e:
            sftp._request(paramiko.sftp.CMD_EXTENDED, name, *args)
        assert "not served" in str(e.value) or e.value.errno is None
    assert sftp.listdir(str(shared)) == ["src"]


def test_a_read_only_mount_refuses_writes_on_the_host(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, _ = tree
    sftp, _ = mount(shared, writable=False)
    with sftp.open(str(shared / "src" / "main.py")) as f:
        assert f.read() == b"print('hi')\n"
    for call in (
        lambda: sftp.open(str(shared / "src" / "main.py"), "w"),
        lambda: sftp.open(str(shared / "new.txt"), "w"),
        lambda: sftp.mkdir(str(shared / "d")),
        lambda: sftp.remove(str(shared / "src" / "main.py")),
        lambda: sftp.rename(str(shared / "src" / "main.py"), str(shared / "x.py")),
        lambda: sftp.chmod(str(shared / "src" / "main.py"), 0o777),
        lambda: sftp.symlink("src", str(shared / "l")),
    ):
        with pytest.raises(OSError):
            call()
    assert sorted(os.listdir(shared)) == ["src"] and (shared / "src" / "main.py").read_text() == "print('hi')\n"
    assert (shared / "src" / "main.py").stat().st_mode & 0o777 != 0o777


def test_a_shared_folder_named_through_a_symlink_is_served(
    mount: Mount, tree: tuple[Path, Path], tmp_path: Path
) -> None:
    shared, _ = tree
    alias = tmp_path / "alias"
    alias.symlink_to(shared)  # as macOS's /tmp is /private/tmp
    sftp, _ = mount(alias)
    assert sftp.lstat(str(alias)).st_mode is not None  # sshfs checks the root itself first
    assert sftp.listdir(str(alias)) == ["src"]
    with sftp.open(str(alias / "src" / "main.py")) as f:
        assert f.read() == b"print('hi')\n"
    denied(lambda: sftp.open(str(alias / ".." / "private" / "secret")))


def _packet(kind: int, rid: int, *fields: bytes) -> bytes:
    body = struct.pack(">BI", kind, rid) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _status(reply: bytes | None) -> tuple[int, int]:
    assert reply is not None and sftpguard.packet_type(reply) == sftpguard.STATUS
    rid, code = struct.unpack_from(">II", reply, 5)
    return rid, code


def test_malformed_and_repeated_requests_get_an_error_reply(tree: tuple[Path, Path]) -> None:
    shared, _ = tree
    guard = sftpguard.Guard(str(shared), order=sftpguard.PathOrder())
    assert _status(guard.admit(_packet(sftpguard.OPEN, 1, struct.pack(">I", 99) + b"short"))) == (
        1,
        sftpguard.FX_BAD_MESSAGE,
    )
    assert _status(guard.admit(_packet(sftpguard.RENAME, 2, _string(str(shared / "a").encode())))) == (
        2,
        sftpguard.FX_BAD_MESSAGE,
    )
    assert _status(guard.admit(_packet(sftpguard.STAT, 3, _string(str(shared).encode() + b"\0/etc")))) == (
        3,
        sftpguard.FX_PERMISSION_DENIED,
    )
    assert guard.admit(_packet(sftpguard.STAT, 4, _string(str(shared).encode()))) is None
    # the id is in use until sftp-server answers it: a second request with it would release the order early
    assert _status(guard.admit(_packet(sftpguard.READ, 4, _string(b"h") + b"\0" * 12))) == (4, sftpguard.FX_BAD_MESSAGE)
    guard.replied(_packet(sftpguard.STATUS, 4, b"\0" * 12))
    assert guard.admit(_packet(sftpguard.READ, 4, _string(b"h") + b"\0" * 12)) is None
    with pytest.raises(sftpguard.BadPacket):
        list(sftpguard.frames(bytearray(struct.pack(">I", sftpguard.MAX_PACKET + 1) + b"\x03")))


def test_an_oversized_packet_closes_the_mount_and_nothing_else(mount: Mount, tree: tuple[Path, Path]) -> None:
    shared, _ = tree
    sftp, m = mount(shared)
    other, _ = mount(shared)
    sftp.sock.sendall(struct.pack(">I", 64 * 1024 * 1024) + b"\x03" + b"\0" * 64)
    m.join(10)
    assert not m.alive
    assert other.listdir(str(shared)) == ["src"]


def test_a_rename_waits_for_checked_paths_and_paths_wait_for_a_rename(tree: tuple[Path, Path]) -> None:
    """Otherwise a symlink made between a path's check and its use would redirect the use."""
    shared, _ = tree
    order = sftpguard.PathOrder()
    a, b = sftpguard.Guard(str(shared), order=order), sftpguard.Guard(str(shared), order=order)
    path = _string(str(shared / "src" / "main.py").encode())
    assert a.admit(_packet(sftpguard.OPEN, 1, path, b"\0" * 8)) is None  # checked, not yet answered
    renamed = threading.Event()

    def rename() -> None:
        link = _string(str(shared / "l").encode())
        assert b.admit(_packet(sftpguard.SYMLINK, 9, _string(b"/etc"), link)) is None
        renamed.set()

    t = threading.Thread(target=rename)
    t.start()
    assert not renamed.wait(0.5)  # through the other mount too: one order for the process
    a.replied(_packet(sftpguard.STATUS, 1, b"\0" * 12))
    assert renamed.wait(5)
    t.join()
    checked = threading.Event()
    t = threading.Thread(target=lambda: (a.admit(_packet(sftpguard.STAT, 2, path)), checked.set()))
    t.start()
    assert not checked.wait(0.5)  # the symlink is being made: no path is checked meanwhile
    b.replied(_packet(sftpguard.STATUS, 9, b"\0" * 12))
    assert checked.wait(5)
    t.join()
    a.close()  # a closed mount's held places are given back
    assert b.admit(_packet(sftpguard.RENAME, 10, path, _string(str(shared / "x").encode()))) is None
