"""A loopback TCP listener for tests that stand in for a forwarded guest port.

Every test that plays QEMU's user-mode net or a guest's sshd needs the same
accept loop; only what happens to an accepted connection differs, and that is
the handler. Connections stay open until close() unless the handler closes them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType


class Listener:
    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.accepted: list[float] = []  # time.monotonic() of each accept
        self._clients: list[socket.socket] = []
        self._handle = handle
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self._clients.append(client)
            self._handle(client)

    def close(self) -> None:
        self.server.close()
        for c in self._clients:
            with contextlib.suppress(OSError):
                c.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def hold_silently(client: socket.socket) -> None:
    """What QEMU's user-mode net does while the guest's network is down: accept, never answer."""


def answer_banner(client: socket.socket) -> None:
    """An sshd that sends its banner (in a guest, every accept is an sshd child)."""
    client.sendall(b"SSH-2.0-test\r\n")
    client.close()
