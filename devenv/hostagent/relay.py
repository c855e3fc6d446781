"""The host end of the SSH relay: a socket-like stream for paramiko whose session survives a suspend.

The guest end (devenv/guestagent/relay.py) explains the wire. QEMU serves the
virtio-serial port on a unix socket (RELAY_SOCK in the instance directory);
RelayStream connects to it, starts a session (pad, NEW, wait for READY) and
then hands paramiko a stream: what paramiko sends goes out as DATA frames,
what it reads is sshd's bytes as they come.

Around a suspend (daemon.py's suspend and resume operations):
- quiesce() closes the gate (senders wait) and waits until the socket's send
  queue is empty: every byte sent is then in the guest's virtqueue, which the
  save keeps. Bytes still in the host socket would be lost with the QEMU that
  has not read them.
- QEMU is saved and exits: recv() sees the end of the socket and, quiesced,
  treats it as a pause (paramiko gets timeouts, not EOF).
- reattach() connects to the restored QEMU's socket and opens the gate; the
  session goes on. No NEW: the relay in the guest still holds the same sshd
  connection.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from devenv.guestagent.relay import CLOCK, DATA, MAX_FRAME, NEW, PAD_BYTES, READY_PREFIX, frame

TIOCOUTQ = 0x5411  # Linux: bytes not yet read by the peer of a unix stream socket
SO_NWRITE = 0x1024  # macOS: the same, as a socket option
POLL = 0.1


class RelayUnavailable(Exception):
    """The relay did not answer: no relay in this guest, or not yet. SSH over the network instead."""


def unsent_bytes(sock: socket.socket) -> int | None:
    """How much of what was sent the peer has not read yet (0: all of it read); None where the OS cannot say.

    Linux counts the kernel memory holding it, a little more than the bytes.
    """
    try:
        if sys.platform.startswith("linux"):
            import fcntl

            buf = fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0")
            return int(struct.unpack("i", buf)[0])
        if sys.platform == "darwin":
            return int(sock.getsockopt(socket.SOL_SOCKET, SO_NWRITE))
    except OSError:
        return None
    return None


class RelayStream:
    """What paramiko.Transport takes for a socket: send, recv, settimeout, close, _closed."""

    def __init__(self, path: Path, wait: float) -> None:
        self.path = path
        self._closed = False
        self._timeout: float | None = None
        self._pending = b""
        self._open = threading.Event()  # the gate: set while senders may send
        self._open.set()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()  # reattach() drains the old socket: never beside a recv()
        self._quiesced = False
        self._detached = False  # the QEMU we were connected to has gone (a suspend)
        self.features: frozenset[str] = frozenset()  # what the guest's relay said it knows ("clock")
        self._sock = self._connect(path)
        try:
            self._start_session(wait)
        except BaseException:
            self._sock.close()
            raise

    @staticmethod
    def _connect(path: Path) -> socket.socket:
        from devenv.hostagent.wire import in_short_dir, secure_socket_dirs

        if in_short_dir(path):  # QEMU's socket in the temp dir: only in folders of this user's
            secure_socket_dirs(path, create=False)
        if sys.platform == "win32":
            raise OSError("unix sockets are not available to Python on Windows")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except OSError as e:
            s.close()
            raise RelayUnavailable(f"cannot connect to {path}: {e}") from None
        return s

    def _start_session(self, wait: float) -> None:
        nonce = secrets.token_hex(8).encode()
        self._sock.sendall(bytes(PAD_BYTES) + frame(NEW, nonce))
        marker = READY_PREFIX + nonce
        deadline = time.monotonic() + wait
        buf = b""
        while True:
            at = buf.find(marker)
            if at >= 0 and buf.find(b"\n", at + len(marker)) >= 0:
                end = buf.index(b"\n", at + len(marker))
                words = buf[at + len(marker) : end].decode("ascii", "replace").split()
                if "FAILED" in words:
                    raise RelayUnavailable("the relay in the guest could not reach sshd")
                self.features = frozenset(w[1:] for w in words if w.startswith("+"))
                self._pending = buf[end + 1 :]
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RelayUnavailable(f"no answer from the relay in the guest within {wait:.0f} s")
            self._sock.settimeout(min(remaining, 0.5))
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise RelayUnavailable(f"the relay socket failed: {e}") from None
            if not data:
                raise RelayUnavailable("QEMU closed the relay socket")
            buf = (buf + data)[-(1 << 20) :]  # what came before the marker is dropped anyway

    # -- what paramiko calls
    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        with contextlib.suppress(OSError):
            self._sock.settimeout(timeout)

    def send(self, data: bytes) -> int:
        while not self._open.wait(POLL):
            if self._closed:
                raise OSError("relay stream closed")
        with self._send_lock:
            if self._closed:
                raise OSError("relay stream closed")
            view = memoryview(data)
            out = memoryview(
                b"".join(frame(DATA, bytes(view[i : i + MAX_FRAME])) for i in range(0, len(view), MAX_FRAME))
            )
            # Every frame whole, however long QEMU takes to read them. Not sendall() with the timeout lifted:
            # the socket's timeout is its blocking mode, shared with the thread in recv(), which then met
            # BlockingIOError whenever a send changed it under a read (paramiko takes that EAGAIN for a
            # timeout; a reader that does not, as the relay's tests, failed).
            while out:
                try:
                    sent = self._sock.send(out)
                except TimeoutError:
                    if self._closed:
                        raise OSError("relay stream closed") from None
                    continue
                out = out[sent:]
        return len(data)

    def recv(self, n: int) -> bytes:
        with self._recv_lock:
            if self._pending:
                out, self._pending = self._pending[:n], self._pending[n:]
                return out
            detached = self._detached
            if not detached:
                try:
                    data = self._sock.recv(n)
                except BlockingIOError:  # settimeout() from another thread made the socket non-blocking under us
                    raise TimeoutError from None
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if data or not self._quiesced or self._closed:
                    return data
                self._detached = True  # QEMU saved and gone: wait for reattach()
        if self._closed:
            return b""
        if detached:
            time.sleep(min(self._timeout if self._timeout is not None else POLL, POLL))
        raise TimeoutError

    def close(self) -> None:
        self._closed = True
        self._open.set()
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- around a suspend
    def quiesce(self, timeout: float) -> bool:
        """Stop sending and wait until the guest side has taken every byte; False (gate open again) if not in time."""
        self._open.clear()
        with self._send_lock:  # a send in progress ends first
            self._quiesced = True
        deadline = time.monotonic() + timeout
        while True:
            left = unsent_bytes(self._sock)
            if left == 0:
                return True
            if left is None:  # the OS cannot say: give QEMU a moment to read what is there
                time.sleep(0.2)
                return True
            if time.monotonic() > deadline:
                self.release()
                return False
            time.sleep(0.01)

    def release(self) -> None:
        """The gate open again on the same socket: the save did not happen."""
        self._quiesced = False
        self._open.set()

    @property
    def detached(self) -> bool:
        return self._detached

    def reattach(self, set_clock: bool = False) -> None:
        """Connect to the restored QEMU's relay socket and let the session go on; OSError if it cannot.

        `set_clock` (a relay with the "clock" feature): the guest's clock is set
        to the host's before anything the session sends from now on.
        """
        from devenv.errors import DevenvError
        from devenv.hostagent.wire import in_short_dir, secure_socket_dirs

        if in_short_dir(self.path):  # the same check of its folders as the first connect
            try:
                secure_socket_dirs(self.path, create=False)
            except DevenvError as e:
                raise OSError(e.message) from None
        if sys.platform == "win32":
            raise OSError("unix sockets are not available to Python on Windows")
        new = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            new.connect(str(self.path))
            if set_clock:
                new.sendall(frame(CLOCK, f"{time.time():.6f}".encode()))
            new.settimeout(self._timeout)
        except OSError:
            new.close()
            raise
        with self._recv_lock:
            old, self._sock = self._sock, new
            self._pending += _drain(old)  # what the old QEMU sent before it exited comes first
            self._detached = False
        self._quiesced = False
        self._open.set()


def _drain(sock: socket.socket) -> bytes:
    """All a socket still holds for us, then closed: its peer (the saved QEMU) has exited."""
    out = b""
    with contextlib.suppress(OSError):
        sock.settimeout(0.5)
        while data := sock.recv(65536):
            out += data
    with contextlib.suppress(OSError):
        sock.close()
    return out


def usable(path: Path) -> bool:
    """QEMU serves the relay port for this VM (its socket is there)."""
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
