"""The host's side of the guest agent protocol.

PROTOCOL_VERSION and AGENT_VERSION come from agent.py itself, so the two sides
cannot disagree. The host starts the agent with serve_command() over one SSH
exec channel, reads the hello with parse_hello() and calls check_hello(): a
wrong protocol or a stale copy (its sha256 differs from the file this devenv
ships) means "reinstall": run install_command() with agent_source() on stdin,
then start it again. AgentClient is a small synchronous client that works on
any pair of binary file objects (paramiko's channel.makefile("rb") and
channel.makefile_stdin("wb"), or a subprocess's pipes in tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import queue
import shlex
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from devenv.errors import ConnectionFailed, Timeout
from devenv.guestagent.agent import AGENT_VERSION, ENGINE_SOCKETS, MAX_LINE, MAX_OUTPUT, PROTOCOL_VERSION
from devenv.jsonlines import encode  # one JSON-lines encoder on the host side

__all__ = [
    "AGENT_VERSION",
    "ENGINE_SOCKETS",
    "GUEST_DIR",
    "GUEST_LAUNCH",
    "GUEST_PATH",
    "PROTOCOL_VERSION",
    "AgentClient",
    "AgentError",
    "Hello",
    "ProtocolError",
    "Reply",
    "agent_sha256",
    "agent_source",
    "bridge_command",
    "check_hello",
    "decode",
    "encode",
    "install_command",
    "parse_hello",
    "serve_command",
]

GUEST_DIR = "/usr/local/lib/devenv"
GUEST_PATH = f"{GUEST_DIR}/guestagent.py"  # where provisioning installs it (root-owned, 0755)
GUEST_PYTHON = "python3"
# How the agent is started (serve_command, and the systemd unit in provisioning/systemd):
# imported, not run as a script, so Python uses the bytecode that provisioning and
# install_command() compile next to it (a script is compiled again at every start);
# -I -S: no site-packages scan and no PYTHON* variables, for a stdlib-only file. Under
# TCG the agent's start fell from ~0.8 s to ~0.6 s of guest CPU with these, measured
# in the guest; an agent starts at every host connection, beside the engine's start.
GUEST_LAUNCH = (
    f"{GUEST_PYTHON} -I -S -c \"import sys; sys.path.insert(0, '{GUEST_DIR}'); "
    'import guestagent; sys.exit(guestagent.main(sys.argv[1:]))"'
)
GUEST_SOCKET = "/run/devenv/guestagent.sock"  # systemd socket unit: an agent forked per connection (provisioning)


class NotSent(ConnectionFailed):
    """The connection was closed before the request went out: the guest never saw it, so it is safe to retry."""


class ProtocolError(ConnectionFailed):
    """The other end did not speak the agent protocol (or a different version of it)."""


class AgentError(ConnectionFailed):
    """The agent answered a request with an error response."""

    def __init__(self, method: str, code: str, message: str) -> None:
        super().__init__(f"guest agent: {method} failed: {message}", "")
        self.method = method
        self.code = code
        self.reason = message  # the agent's own words, without the prefix


@lru_cache(maxsize=1)
def agent_source() -> bytes:
    """The agent file this devenv ships, byte for byte what gets installed in the guest."""
    return (Path(__file__).with_name("agent.py")).read_bytes()


def agent_sha256() -> str:
    return hashlib.sha256(agent_source()).hexdigest()


def decode(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(
            f"guest agent sent a line that is not JSON: {line[:80]!r}",
            "the agent in the guest may be broken; devenv reinstalls it on the next start",
        ) from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"guest agent sent JSON that is not an object: {line[:80]!r}")
    return msg


@dataclass(frozen=True)
class Hello:
    protocol: int
    version: str
    sha256: str | None
    features: frozenset[str] = frozenset()  # what this agent knows beyond its protocol ("frames")


def parse_hello(line: bytes) -> Hello:
    if not line:
        raise ProtocolError(
            "guest agent ended before saying hello",
            f"check that {GUEST_PYTHON} exists in the guest and {GUEST_PATH} is installed",
        )
    msg = decode(line)
    if msg.get("type") != "hello" or not isinstance(msg.get("protocol"), int):
        raise ProtocolError(f"guest agent's first line is not a hello: {line[:80]!r}")
    sha = msg.get("sha256")
    features = msg.get("features")
    return Hello(
        protocol=msg["protocol"],
        version=str(msg.get("version", "")),
        sha256=sha if isinstance(sha, str) else None,
        features=frozenset(f for f in features if isinstance(f, str)) if isinstance(features, list) else frozenset(),
    )


def check_hello(hello: Hello) -> str | None:
    """None when the running agent is the one this devenv ships; else why it must be reinstalled."""
    if hello.protocol != PROTOCOL_VERSION:
        return f"guest agent speaks protocol {hello.protocol}, this devenv speaks {PROTOCOL_VERSION}"
    if hello.sha256 != agent_sha256():
        return f"guest agent {hello.version} differs from the one this devenv ships ({AGENT_VERSION})"
    return None


def serve_command() -> str:
    return GUEST_LAUNCH


def bridge_command(socket_path: str) -> str:
    """Shell command for an exec channel that carries the bytes of one guest unix socket."""
    return f"{GUEST_PYTHON} {GUEST_PATH} bridge {shlex.quote(socket_path)}"


def install_command() -> str:
    """Shell command that installs agent_source() (sent on stdin) atomically; the guest user has sudo.

    Then compiles it, as provisioning does: GUEST_LAUNCH imports the file, and
    the guest user cannot write the bytecode cache in the root-owned directory.
    """
    tmp = GUEST_PATH + ".new"
    return (
        f"sudo -n sh -c 'mkdir -p {GUEST_DIR} && cat > {tmp} && "
        f"chmod 0755 {tmp} && mv -f {tmp} {GUEST_PATH} && {GUEST_PYTHON} -m py_compile {GUEST_PATH}'"
    )


# What the host reads from the guest is bounded as the guest bounds what it reads from the host: root
# in the guest can send anything, and must not grow the host agent's memory without end. The largest
# line an honest agent sends is an exec result with both streams at MAX_OUTPUT, base64 (4/3); a
# framed payload is never above MAX_LINE. Past either bound the connection is closed.
MAX_REPLY_LINE = 2 * (MAX_OUTPUT * 4 // 3 + 4) + 64 * 1024
MAX_REPLY_DATA = MAX_LINE


class _Reader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...

    def flush(self) -> Any: ...


class Reply:
    """The answer to one request sent with AgentClient.begin(), waited for when the caller needs it."""

    def __init__(self, client: AgentClient, method: str, req_id: int, slot: queue.Queue[dict[str, Any] | None]) -> None:
        self._client = client
        self._method = method
        self._id = req_id
        self._slot = slot

    def wait(self, timeout: float | None = 60.0) -> Any:
        """The result; an error response raises AgentError, no answer in time Timeout."""
        return self._client._result(self._method, self._id, self._slot, timeout)

    def forget(self) -> None:
        """Not waited for after all (the caller is done): the client keeps no slot for it."""
        with self._client._lock:
            self._client._pending.pop(self._id, None)


class AgentClient:
    """Requests with ids, one reader thread, events in a queue.

    Thread-safe: several threads may call() at once; responses are matched by id.
    A message line with "size" is followed by that many raw bytes (an agent
    whose hello lists "frames"): they reach the caller as the message's
    "payload", and call()/notify() send theirs the same way.
    """

    def __init__(self, rfile: _Reader, wfile: _Writer) -> None:
        self._rfile = rfile
        self._wfile = wfile
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[Any, queue.Queue[dict[str, Any] | None]] = {}
        self._closed = False
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.hello: Hello | None = None
        self._thread: threading.Thread | None = None
        self.last_heard = time.monotonic()  # when the agent last sent a whole message: it is alive, if busy

    def start(self) -> Hello:
        """Read the hello and start the reader thread. Raises ProtocolError on a wrong version."""
        self.hello = parse_hello(self._rfile.readline(MAX_REPLY_LINE + 1))
        if self.hello.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"guest agent speaks protocol {self.hello.protocol}, this devenv speaks {PROTOCOL_VERSION}",
                "devenv reinstalls the agent; if this persists, restart the instance",
            )
        self._thread = threading.Thread(target=self._read_loop, name="guestagent-reader", daemon=True)
        self._thread.start()
        return self.hello

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = 60.0,
        *,
        payload: bytes = b"",
    ) -> Any:
        """Send one request and wait for its result; an error response raises AgentError."""
        return self.begin(method, params, payload=payload).wait(timeout)

    def begin(self, method: str, params: Mapping[str, Any] | None = None, *, payload: bytes = b"") -> Reply:
        """Send one request now; its result is waited for later (Reply.wait), so several may be in flight."""
        req_id, slot = self._send(method, params, payload)
        return Reply(self, method, req_id, slot)

    def _result(self, method: str, req_id: int, slot: queue.Queue[dict[str, Any] | None], timeout: float | None) -> Any:
        try:
            msg = slot.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"guest agent did not answer `{method}` within {timeout:g} s") from None
        finally:
            with self._lock:
                self._pending.pop(req_id, None)
        if msg is None:
            raise ConnectionFailed(f"guest agent connection closed during `{method}`", "is the instance still running?")
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            raise AgentError(method, str(err.get("code", "error")), str(err.get("message", msg["error"])))
        return msg.get("result")

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """A request that gets no answer (`ack`): nothing waits for it, so it never holds a reader up."""
        line = encode({"method": method, "params": dict(params or {})})
        with self._lock:
            if self._closed:
                raise NotSent("guest agent connection is closed", "is the instance still running?")
            self._wfile.write(line)
            self._wfile.flush()

    def next_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Close our writing side: the agent finishes what it read and exits."""
        close = getattr(self._wfile, "close", None)
        if close is not None:
            close()

    def _send(
        self, method: str, params: Mapping[str, Any] | None, payload: bytes = b""
    ) -> tuple[int, queue.Queue[dict[str, Any] | None]]:
        slot: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1)
        with self._lock:
            if self._closed:
                raise NotSent("guest agent connection is closed", "is the instance still running?")
            req_id = next(self._ids)
            self._pending[req_id] = slot
            msg: dict[str, Any] = {"id": req_id, "method": method, "params": dict(params or {})}
            if payload:
                msg["size"] = len(payload)
            self._wfile.write(encode(msg))
            if payload:
                self._wfile.write(payload)
            self._wfile.flush()
        return req_id, slot

    def _read_loop(self) -> None:
        try:
            while True:
                line = self._rfile.readline(MAX_REPLY_LINE + 1)
                if not line or len(line) > MAX_REPLY_LINE:
                    break  # the end, or a line no agent of ours sends: closed, not buffered further
                try:
                    msg = decode(line)
                except ProtocolError:
                    continue
                size = msg.get("size")
                if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                    if size > MAX_REPLY_DATA:
                        break
                    msg["payload"] = self._rfile.read(size)
                    if len(msg["payload"]) < size:
                        break  # the stream ended inside the data
                self.last_heard = time.monotonic()
                if msg.get("type") == "event":
                    self.events.put(msg)
                    continue
                with self._lock:
                    slot = self._pending.get(msg.get("id"))
                if slot is not None:
                    with contextlib.suppress(queue.Full):  # a duplicate answer is dropped, never blocks
                        slot.put_nowait(msg)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._closed = True
                slots = list(self._pending.values())
            for slot in slots:
                with contextlib.suppress(queue.Full):
                    slot.put_nowait(None)
