"""Reach a guest's server while the guest boots: race fresh connections, keep the first that speaks.

Why: QEMU's user-mode net accepts the host side of a forwarded port at once,
before the guest answers, and a connection made while the guest's network is
still down never gets a byte (its SYN was lost). Waiting on one connection
therefore either gives up on a slow server too early or sits on a dead
connection long after the server came up (a doubling banner wait cost up to
~10 s of every start). Instead a new connection is opened every `every`
seconds while the older ones keep waiting (up to `patience` seconds each); the
first on which the server sends its first bytes wins, so the server is seen
within about `every` seconds of answering however slow it is to send them.
The bytes are peeked, not read: the caller (paramiko, or a banner check) reads
them itself.

Stdlib only: the QEMU backend's boot wait uses it without paramiko.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

EVERY = 1.0  # seconds between two new connections while none has answered
PATIENCE = 30.0  # how long one connection may wait for the server's first bytes
SOON = 0.2  # after a refusal or EOF (the guest is up, the server not yet): the next try


def dial_answering(
    host: str,
    port: int,
    timeout: float,
    *,
    every: float = EVERY,
    patience: float = PATIENCE,
    tick: Callable[[], None] | None = None,
) -> socket.socket:
    """A blocking TCP socket to host:port whose server has sent bytes (unread), or OSError at the deadline.

    `tick` runs on every round (about every `every` seconds or sooner); an
    exception it raises stops the wait, as the QEMU backend's "is the VM
    still alive" check does.
    """
    deadline = time.monotonic() + timeout
    waiting: dict[socket.socket, float] = {}  # connection -> when it was opened
    next_open = 0.0
    last: OSError | None = None
    try:
        while True:
            if tick is not None:
                tick()
            now = time.monotonic()
            if now >= deadline:
                raise last or TimeoutError(f"{host}:{port} sent nothing within {timeout:.0f} s")
            if now >= next_open:
                next_open = now + every
                try:
                    s = socket.create_connection((host, port), timeout=min(3.0, deadline - now))
                    s.setblocking(False)
                    waiting[s] = now
                except OSError as e:  # refused: nothing forwards that port yet
                    last = e
                    next_open = now + SOON
            for s, opened in list(waiting.items()):
                if now - opened > patience:
                    del waiting[s]
                    s.close()
            wait = max(0.0, min(next_open, deadline) - time.monotonic())
            if not waiting:
                time.sleep(wait)
                continue
            ready, _, _ = select.select(list(waiting), [], [], wait)
            for s in ready:
                try:
                    data = s.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                except OSError as e:
                    last, data = e, b""
                del waiting[s]
                if data:
                    s.setblocking(True)
                    return s
                s.close()  # EOF: the guest answered, its server is not listening yet
                last = ConnectionResetError(f"{host}:{port} closed the connection before sending anything")
                next_open = min(next_open, time.monotonic() + SOON)
    finally:
        for s in waiting:
            s.close()
