"""Talk to a running host agent: the CLI side. Stdlib only (asserted by a test).

`devenv exec` is the hot path: this module must cost next to nothing to
import, so it avoids paramiko (~230 ms) and typer (~90 ms) and even devenv's
own config and error modules. Every function returns None (or a
not-alive dict) when no agent answers, so the caller falls back to its own
SSH connection instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence

from devenv.hostagent.wire import LineReader, decode, encode, socket_str
from devenv.paths import HOSTAGENT_SOCK
from devenv.sigforward import forward_signals

TYPE_CHECKING = False  # typing/pathlib/types cost milliseconds on the hot path: type checker only
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from devenv.hostagent.wire import Json

CONNECT_TIMEOUT = 2.0
EXIT_AGENT_ERROR = 255  # what ssh returns when it cannot tell the command's own code


def connect(inst_dir: Path | str, timeout: float = CONNECT_TIMEOUT) -> socket.socket | None:
    """A connected control socket, or None when no agent listens (stale socket, never started)."""
    path = socket_str(inst_dir, HOSTAGENT_SOCK)
    if not os.path.exists(path):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    return s


def request(inst_dir: Path | str, msg: Json, timeout: float = 5.0) -> Json | None:
    """One request, its final answer (or None when no agent answers in time)."""
    s = connect(inst_dir, timeout)
    if s is None:
        return None
    try:
        s.settimeout(timeout)
        s.sendall(encode(msg))
        reader = LineReader(s)
        while True:
            line = reader.readline()
            if not line:
                return None
            reply = decode(line)
            if reply.get("final"):
                return reply
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def state(inst_dir: Path | str, timeout: float = 3.0) -> Json:
    """The agent's own view; {"alive": False, ...} when none answers."""
    reply = request(inst_dir, {"op": "state"}, timeout)
    if reply is None or "state" not in reply:
        return {"alive": False, "state": "not running", "forwards": [], "mounts": []}
    result: Json = reply["state"]
    return result


def _forward_signals(sock: socket.socket) -> contextlib.AbstractContextManager[None]:
    """While the command runs, ^C and SIGTERM become a request to signal the remote command."""
    lock = threading.Lock()

    def send(name: str) -> None:
        with lock, contextlib.suppress(OSError):
            sock.sendall(encode({"op": "signal", "signal": name}))

    return forward_signals(send)


def exec(  # the name is the operation, as in `devenv exec`
    inst_dir: Path | str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
) -> int | None:
    """Run argv in the guest through the agent; the exit code, or None if no agent can run it.

    None means nothing was started (no agent, or it cannot exec right now), so
    the caller may fall back to a direct SSH connection without running the
    command twice. `cwd` is the host's working directory: the agent maps it into
    the guest when a mount puts it there. stdin is forwarded unless it is a
    terminal (no PTY here: like `ssh host cmd`, use `devenv shell` for that).
    """
    s = connect(inst_dir)
    if s is None:
        return None
    try:
        forward_stdin = not _isatty(stdin_fd)
        msg: Json = {"op": "exec", "argv": list(argv), "env": dict(env or {}), "cwd": cwd, "stdin": forward_stdin}
        s.settimeout(None)
        socket.send_fds(s, [encode(msg)], [stdin_fd, stdout_fd, stderr_fd])
        reader = LineReader(s)
        with _forward_signals(s):
            while True:
                try:
                    line = reader.readline()
                except InterruptedError:
                    continue
                if not line:
                    _say(stderr_fd, "devenv: lost the connection to the host agent while the command ran\n")
                    return EXIT_AGENT_ERROR
                reply = decode(line)
                if not reply.get("final"):
                    continue
                return _result(reply, stderr_fd)
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def _result(reply: Json, stderr_fd: int) -> int | None:
    if reply.get("unavailable"):
        return None  # not started: the caller's own path runs it
    if "exit_code" in reply:
        return int(reply["exit_code"])
    message = str(reply.get("error", "the host agent failed to run the command"))
    _say(stderr_fd, f"devenv: {message}\n")
    code: Any = reply.get("code", EXIT_AGENT_ERROR)
    return int(code)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _say(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, text.encode())


def main(argv: list[str]) -> int:
    """`python -m devenv.hostagent.client INSTANCE_DIR -- CMD...`: handy for benchmarks and debugging."""
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m devenv.hostagent.client INSTANCE_DIR -- COMMAND...\n")
        return 2
    code = exec(argv[0], argv[2:], {}, os.getcwd())
    if code is None:
        sys.stderr.write("devenv: no host agent is running for this instance\n")
        return EXIT_AGENT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
