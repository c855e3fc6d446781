"""The SSH relay's two ends against each other: the guest's Relay on one end of a socket pair (the
virtio-serial port), a stand-in for QEMU's chardev socket in between, a TCP server standing in for sshd.

The stand-in QEMU can "exit" and a new one serve the same socket path, as a
save and restore do; bytes the guest wrote meanwhile wait in the pair, as
they wait in the guest's virtqueue.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.guestagent import relay as guest
from devenv.hostagent.relay import RelayStream, RelayUnavailable, unsent_bytes


class FakeSshd:
    """Each connection gets a banner naming its number, then an echo of what it sends."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.sendall(f"SSH-{len(self.conns)}\n".encode())
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:  # closed by the test's teardown
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() a plain close would leave listening
        self.server.close()
        for c in self.conns:
            c.close()


class FakeQemu:
    """A chardev socket server at `path` bridging one client to the guest's end of the port."""

    def __init__(self, path: Path, port: socket.socket) -> None:
        self.port = port
        # one lock per direction: a direction blocked on a full buffer must never hold up the other (each
        # drains what the other waits on); exit() takes both
        self.lock = threading.Lock()  # port -> client
        self.in_lock = threading.Lock()  # client -> port
        self.stopped = False
        self.client: socket.socket | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        self.client = client
        threading.Thread(target=self._to_guest, args=(client,), daemon=True).start()
        while not self.stopped:
            try:
                ready, _, _ = select.select([self.port], [], [], 0.02)
            except (OSError, ValueError):  # closed under the thread
                return
            with self.lock:  # exit() never cuts a read from its write: what was taken is delivered
                if self.stopped or not ready:
                    continue
                try:
                    client.sendall(self.port.recv(65536))
                except OSError:
                    return

    def _to_guest(self, client: socket.socket) -> None:
        while not self.stopped:
            try:
                ready, _, _ = select.select([client], [], [], 0.02)
            except (OSError, ValueError):  # exit() closed it under the thread
                return
            with self.in_lock:
                if self.stopped or not ready:
                    continue
                try:
                    data = client.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.port.sendall(data)

    def exit(self, path: Path) -> None:
        with self.lock, self.in_lock:
            self.stopped = True
        if self.client is not None:
            self.client.close()
        self.listener.close()
        path.unlink()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, socket.socket, FakeSshd, list[bytes]]]:
    sshd = FakeSshd()
    monkeypatch.setattr(guest, "SSHD", sshd.address)
    clock: list[bytes] = []
    monkeypatch.setattr(guest, "set_clock", clock.append)  # never the test host's own clock
    port_guest, port_qemu = socket.socketpair()
    _PORTS_KEPT_OPEN.append((port_guest, port_qemu))
    threading.Thread(target=guest.Relay(port_guest.fileno()).run, daemon=True).start()
    path = tmp_path / "relay.sock"
    yield path, port_qemu, sshd, clock
    sshd.close()


# The guest's relay reads its port for ever, as in the guest where the port never closes: closing the
# pair under its daemon thread would end it with EBADF, so the pairs live as long as the test process.
_PORTS_KEPT_OPEN: list[tuple[socket.socket, socket.socket]] = []


def digests(blobs: list[bytes]) -> list[tuple[int, str]]:
    """Megabytes compared by length and hash: a failure's message stays a line, not the bytes' diff."""
    return [(len(b), hashlib.sha256(b).hexdigest()) for b in blobs]


def recv_exactly(stream: RelayStream, n: int, timeout: float = 5.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {out!r} of {n} bytes"
        try:
            out += stream.recv(n - len(out))
        except TimeoutError:
            continue
    return out


def test_frames_parse_across_feeds_and_skip_what_is_not_a_frame() -> None:
    reader = guest.FrameReader()
    payload = b"x" * 10 + guest.MAGIC + b"y" * 5  # MAGIC inside a payload is data, not a frame
    wire = b"garbage" + bytes(guest.PAD_BYTES) + guest.frame(guest.NEW, b"n1") + guest.frame(guest.DATA, payload)
    got = []
    for i in range(0, len(wire), 7):
        got += reader.feed(wire[i : i + 7])
    assert got == [(guest.NEW, b"n1"), (guest.DATA, payload)]


def test_a_header_claiming_too_much_is_skipped() -> None:
    reader = guest.FrameReader()
    bogus = struct.pack(">4scI", guest.MAGIC, guest.DATA, guest.MAX_FRAME + 1)
    assert reader.feed(bogus + guest.frame(guest.DATA, b"ok")) == [(guest.DATA, b"ok")]


def test_session_reaches_sshd_and_echoes(rig: tuple[Path, socket.socket, FakeSshd, list[bytes]]) -> None:
    path, port, _sshd, _ = rig
    FakeQemu(path, port)
    stream = RelayStream(path, wait=5)
    stream.settimeout(0.1)
    assert "clock" in stream.features
    assert recv_exactly(stream, 6) == b"SSH-1\n"
    big = os.urandom(100_000)  # several frames
    assert stream.send(big) == len(big)
    assert recv_exactly(stream, len(big)) == big


def test_megabytes_both_ways_arrive_whole_with_a_clock_frame_among_them(
    rig: tuple[Path, socket.socket, FakeSshd, list[bytes]],
) -> None:
    """The relay takes all that waits on the port at once (readv) and sends its DATA to sshd together."""
    path, port, _sshd, clock = rig
    FakeQemu(path, port)
    stream = RelayStream(path, wait=5)
    stream.settimeout(0.1)
    assert recv_exactly(stream, 6) == b"SSH-1\n"
    first, second = os.urandom(3_000_000), os.urandom(1_000_000)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(recv_exactly(stream, len(first + second), timeout=30)))
    reader.start()
    stream.send(first)
    stream._sock.sendall(guest.frame(guest.CLOCK, b"1700000000.5"))  # between two sends, as after a restore
    stream.send(second)
    reader.join(35)
    assert digests(got) == digests([first + second])
    assert clock == [b"1700000000.5"]


def test_many_sends_beside_a_thread_in_recv_never_break_its_recv(
    rig: tuple[Path, socket.socket, FakeSshd, list[bytes]],
) -> None:
    """paramiko reads in its own thread while others send: a send must leave the socket's mode alone.

    send() once lifted the timeout for its sendall and put it back; a recv() in between met a socket
    non-blocking under its feet and raised BlockingIOError (paramiko happens to take that EAGAIN for a
    timeout; a reader holding the stream's own contract, a timeout or bytes, does not).
    """
    path, port, _sshd, _ = rig
    FakeQemu(path, port)
    stream = RelayStream(path, wait=5)
    stream.settimeout(0.1)
    assert recv_exactly(stream, 6) == b"SSH-1\n"
    messages = [os.urandom(997) for _ in range(3000)]
    got: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            got.append(recv_exactly(stream, sum(map(len, messages)), timeout=60))
        except BaseException as e:  # reported by the assert below, with its type
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for m in messages:
        stream.send(m)
    reader.join(65)
    assert errors == []
    assert digests(got) == digests([b"".join(messages)])


def test_session_survives_the_chardev_going_away_and_coming_back(
    rig: tuple[Path, socket.socket, FakeSshd, list[bytes]],
) -> None:
    path, port, sshd, clock = rig
    qemu = FakeQemu(path, port)
    stream = RelayStream(path, wait=5)
    stream.settimeout(0.1)
    assert recv_exactly(stream, 6) == b"SSH-1\n"
    stream.send(b"before")
    assert recv_exactly(stream, 6) == b"before"
    assert stream.quiesce(2.0)
    sshd.conns[0].sendall(b"in-flight")  # reaches the host's socket, unread when QEMU exits
    time.sleep(0.3)
    qemu.exit(path)
    sshd.conns[0].sendall(b"while-saved")  # the guest writes while no host is there: it waits in the port
    time.sleep(0.1)
    qemu = FakeQemu(path, port)
    before = time.time()
    stream.reattach(set_clock=True)
    assert recv_exactly(stream, 20) == b"in-flightwhile-saved"
    # the guest handles frames in order: once data sent after the clock frame echoes, the clock was set
    stream.send(b"after")
    assert recv_exactly(stream, 5) == b"after"
    assert len(clock) == 1 and abs(float(clock[0]) - before) < 5
    # a second save, the host reading while QEMU is gone: timeouts, not EOF (paramiko keeps the transport)
    assert stream.quiesce(2.0)
    qemu.exit(path)
    with pytest.raises(TimeoutError):
        for _ in range(20):
            stream.recv(100)
    assert stream.detached
    FakeQemu(path, port)
    stream.reattach()
    stream.send(b"after")
    assert recv_exactly(stream, 5) == b"after"
    assert len(sshd.conns) == 1  # the same sshd connection throughout


def test_a_new_session_never_sees_the_old_ones_bytes(rig: tuple[Path, socket.socket, FakeSshd, list[bytes]]) -> None:
    path, port, sshd, _ = rig
    qemu = FakeQemu(path, port)
    old = RelayStream(path, wait=5)
    old.settimeout(0.1)
    assert recv_exactly(old, 6) == b"SSH-1\n"
    # an agent killed halfway through a frame: the relay waits for 90 more bytes of it
    old._sock.sendall(struct.pack(">4scI", guest.MAGIC, guest.DATA, 100) + b"0123456789")
    sshd.conns[0].sendall(b"stale")  # and the old connection's bytes are still on their way
    time.sleep(0.2)
    old.close()
    qemu.exit(path)
    FakeQemu(path, port)
    new = RelayStream(path, wait=5)
    new.settimeout(0.1)
    assert recv_exactly(new, 6) == b"SSH-2\n"
    new.send(b"fresh")
    assert recv_exactly(new, 5) == b"fresh"


def test_no_relay_in_the_guest_is_reported_in_time(tmp_path: Path) -> None:
    path = tmp_path / "relay.sock"
    port, _other = socket.socketpair()  # nothing reads the guest's end
    FakeQemu(path, port)
    began = time.monotonic()
    with pytest.raises(RelayUnavailable, match="no answer"):
        RelayStream(path, wait=0.5)
    assert time.monotonic() - began < 3


def test_relay_without_sshd_says_so(
    rig: tuple[Path, socket.socket, FakeSshd, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, port, sshd, _ = rig
    sshd.close()
    monkeypatch.setattr(guest, "SSHD_WAIT", 0.3)
    FakeQemu(path, port)
    with pytest.raises(RelayUnavailable, match="could not reach sshd"):
        RelayStream(path, wait=5)


def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(RelayUnavailable, match="cannot connect"):
        RelayStream(tmp_path / "absent.sock", wait=1)


def test_unsent_bytes_counts_what_the_peer_has_not_read() -> None:
    a, b = socket.socketpair()
    a.sendall(b"x" * 1000)
    left = unsent_bytes(a)
    assert left is None or left >= 1000  # Linux counts the kernel's memory for it, not only the bytes
    b.recv(2000)
    assert unsent_bytes(a) in (0, None)
