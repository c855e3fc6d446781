"""Byte pumps between host sockets and SSH channels, and the listeners that create them.

One thread per direction with 256 KiB reads: paramiko channels are not real
file descriptors (their fileno() is a pipe that only says "readable"), so a
selector loop would still need paramiko's own locking per call, and two
blocking threads are simpler to get right for half-close, which the Docker API
depends on (attach, exec -it, build contexts: the client closes its writing
side and still reads the answer). Measured in benchmarks/bench_hostagent.py.

Half-close both ways: EOF from the host socket -> channel.shutdown_write()
(SSH EOF); EOF from the channel -> socket.shutdown(SHUT_WR). Both are closed
once both directions ended, or at once on an error in either direction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import paramiko

from devenv.atomicfile import write_atomic
from devenv.paths import HOSTAGENT_TOKEN

log = logging.getLogger(__name__)

BUF = 256 * 1024
ACCEPT_POLL = 0.5  # seconds: how fast a closed listener's thread notices (portable, unlike shutdown())

ChannelOpener = Callable[[], paramiko.Channel]


class Bridge:
    """One host connection glued to one channel."""

    def __init__(self, sock: socket.socket, channel: paramiko.Channel, label: str, registry: BridgeSet) -> None:
        self.sock = sock
        self.channel = channel
        self.label = label
        self.registry = registry
        self._left = 2
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._upstream, name=f"up-{label}", daemon=True),
            threading.Thread(target=self._downstream, name=f"down-{label}", daemon=True),
        ]

    def start(self) -> None:
        self.registry.add(self)
        for t in self._threads:
            t.start()

    def _upstream(self) -> None:
        try:
            while True:
                data = self.sock.recv(BUF)
                if not data:
                    break
                self.channel.sendall(data)
            self.channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as e:
            log.debug("%s: host->guest ended: %s", self.label, e)
            self.abort()
        finally:
            self._done()

    def _downstream(self) -> None:
        try:
            while True:
                data = self.channel.recv(BUF)
                if not data:
                    break
                self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, EOFError, paramiko.SSHException) as e:
            log.debug("%s: guest->host ended: %s", self.label, e)
            self.abort()
        finally:
            self._done()

    def abort(self) -> None:
        """Wake both threads: shutdown() interrupts a blocked recv on the socket, close() on the channel."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.channel.close()

    def _done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            with contextlib.suppress(Exception):
                self.channel.close()
            with contextlib.suppress(OSError):
                self.sock.close()
            self.registry.discard(self)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)


class BridgeSet:
    """Live bridges, so shutdown can end them all and tests can count them (no thread leaks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: set[Bridge] = set()

    def add(self, b: Bridge) -> None:
        with self._lock:
            self._items.add(b)

    def discard(self, b: Bridge) -> None:
        with self._lock:
            self._items.discard(b)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def close_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            items = list(self._items)
        for b in items:
            b.abort()
        for b in items:
            b.join(timeout)


class Listener:
    """A listening socket whose every connection is bridged to a freshly opened channel.

    Opening the channel happens on a per-connection thread: it may wait for a
    reconnect, and one slow open must not stall other clients. A failed open
    closes that one client connection; the listener keeps going.
    """

    def __init__(self, sock: socket.socket, label: str, opener: ChannelOpener, bridges: BridgeSet) -> None:
        self.sock = sock
        self.label = label
        self.opener = opener
        self.bridges = bridges
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"listen-{label}", daemon=True)

    def start(self) -> Listener:
        self.sock.settimeout(ACCEPT_POLL)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                log.warning("%s: accept failed: %s", self.label, e)
                self._stop.wait(ACCEPT_POLL)
                continue
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), name=f"open-{self.label}", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            channel = self.opener()
        except Exception as e:  # one bad connection never takes the listener down
            log.info("%s: cannot open a channel for a new connection: %s", self.label, e)
            with contextlib.suppress(OSError):
                client.close()
            return
        if self._stop.is_set():
            channel.close()
            client.close()
            return
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
        Bridge(client, channel, self.label, self.bridges).start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(ACCEPT_POLL * 4)


def bind_tcp(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A loopback listener on `port`; raises OSError (EADDRINUSE...) for the caller to report."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two listeners share a port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(128)
    except BaseException:
        s.close()
        raise
    return s


def bind_unix(path: Path) -> socket.socket:
    """A 0600 unix listener in a 0700 directory of this user's, replacing a stale socket file (never a regular file)."""
    from devenv.hostagent.wire import secure_socket_dirs

    secure_socket_dirs(path, create=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
    if sys.platform == "win32":
        raise OSError("unix sockets are not available to Python on Windows")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        os.chmod(path, 0o600)
        s.listen(128)
    except BaseException:
        s.close()
        raise
    return s


def bind_control_tcp(inst_dir: Path) -> tuple[socket.socket, str]:
    """A loopback TCP listener for the control channel and its token, published in the 0600 hostagent.token.

    For systems without unix sockets or fd passing (Windows). The token is what
    keeps other local users out: they can reach 127.0.0.1 but not read the file
    in the user's 0700 instance dir. Written atomically, so a client never
    reads half a file.
    """
    import json
    import secrets

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        token = secrets.token_hex(32)
        info = {"port": s.getsockname()[1], "token": token, "pid": os.getpid()}
        write_atomic(inst_dir / HOSTAGENT_TOKEN, (json.dumps(info) + "\n").encode(), 0o600)
    except BaseException:
        s.close()
        raise
    return s, token
