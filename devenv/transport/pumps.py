"""Byte pumps between a paramiko channel and the host's files: stdin in, output out, EOF passed on.

Shared by exec (transport/ssh.py) and the interactive terminal (terminal.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any, Protocol

import paramiko

log = logging.getLogger(__name__)

CHUNK = 65536


class Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


def read_chunk(src: Any, stop: threading.Event) -> bytes:
    """Read what is available (not a full buffer), waking up to notice `stop` where select() allows."""
    fileno = None
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fileno = src.fileno()
    if fileno is not None and os.name != "nt":
        while not stop.is_set():
            ready, _, _ = select.select([fileno], [], [], 0.2)
            if ready:
                return os.read(fileno, CHUNK)
        return b""
    if hasattr(src, "read1"):
        return bytes(src.read1(CHUNK))
    return bytes(src.read(CHUNK))


def pump_stdin(channel: paramiko.Channel, src: bytes | Readable | None, stop: threading.Event) -> None:
    """Send stdin, then EOF (shutdown_write) so commands like `wc` finish."""
    try:
        if isinstance(src, bytes | bytearray | memoryview):
            view = memoryview(src)
            for i in range(0, len(view), CHUNK):
                if stop.is_set():
                    return
                channel.sendall(view[i : i + CHUNK])
        elif src is not None:
            while not stop.is_set():
                data = read_chunk(src, stop)
                if not data:
                    break
                channel.sendall(data)
        if not stop.is_set():
            channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as e:
        log.debug("stdin stopped: %s", e)  # the remote side closed first; nothing left to feed


def pump_out(recv: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
    while True:
        data = recv(CHUNK)
        if not data:
            return
        write(data)
