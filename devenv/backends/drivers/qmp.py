"""A minimal QMP client: enough to ask QEMU to power down, quit, and report status.

QMP is line-delimited JSON over a unix socket; the greeting must be answered
with qmp_capabilities before any command. Events arriving between a command
and its reply are skipped.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from devenv.errors import ConnectionFailed


class Qmp:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def __enter__(self) -> Qmp:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        from devenv.hostagent.wire import in_short_dir, secure_socket_dirs

        if in_short_dir(self.path):  # in the temp dir: never talk to a socket in a folder someone else holds
            secure_socket_dirs(self.path, create=False)
        if sys.platform == "win32":
            raise OSError("unix sockets are not available to Python on Windows")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except OSError as e:
            s.close()
            raise ConnectionFailed(f"cannot connect to QMP at {self.path}: {e.strerror or e}") from None
        self.sock = s
        greeting = self._read()
        if "QMP" not in greeting:
            raise ConnectionFailed(f"unexpected QMP greeting: {greeting}")
        self.command("qmp_capabilities")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read(self) -> dict[str, Any]:
        assert self.sock is not None
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionFailed("QMP connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        value = json.loads(line)
        assert isinstance(value, dict)
        return value

    def command(self, name: str, **arguments: Any) -> Any:
        assert self.sock is not None
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise ConnectionFailed(f"QMP {name} failed: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")
