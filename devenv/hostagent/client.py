"""Talk to a running host agent: the CLI side. Stdlib only (asserted by a test).

`devenv exec` is the hot path: this module must cost next to nothing to
import, so it avoids paramiko (~230 ms) and typer (~90 ms) and even devenv's
own config and error modules. Every function returns None (or a
not-alive dict) when no agent answers, so the caller falls back to its own
SSH connection instead of failing.
"""

from __future__ import annotations

import _socket  # socket.py's C half: socket.py itself imports enum and selectors (~18 ms on a fresh interpreter)
import os
import sys

from devenv.fdio import write_all
from devenv.hostagent.wire import STDIN_WINDOW, LineReader, decode, encode, read_token, secure_socket_dirs, socket_str
from devenv.paths import HOSTAGENT_SOCK
from devenv.sigforward import forward_signals

TYPE_CHECKING = False  # typing/pathlib/types cost milliseconds on the hot path: type checker only
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from devenv.hostagent.wire import Json

CONNECT_TIMEOUT = 2.0
EXIT_AGENT_ERROR = 255  # what ssh returns when it cannot tell the command's own code


class Control:
    """A connected control channel: the socket, and the token its first line must carry (TCP only)."""

    def __init__(self, sock: _socket.socket, token: str | None) -> None:
        self.sock = sock
        self.token = token

    @property
    def fd_passing(self) -> bool:
        return self.token is None and hasattr(_socket, "SCM_RIGHTS")

    def first(self, msg: Json) -> bytes:
        return encode(msg if self.token is None else {**msg, "token": self.token})

    def send_with_fds(self, data: bytes, fds: Sequence[int]) -> None:
        """`data` with the fds attached to its first byte (SCM_RIGHTS), as socket.send_fds does."""
        if sys.platform == "win32":  # fd_passing is False there: the TCP channel sends no fds
            raise OSError("no fd passing on Windows")
        rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)  # a C int array
        sent = self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        if sent < len(data):  # a long argv or env: the rest follows without fds
            self.sock.sendall(data[sent:])

    def close(self) -> None:
        self.sock.close()


def connect(inst_dir: Path | str, timeout: float = CONNECT_TIMEOUT) -> Control | None:
    """The agent's control channel, or None when no agent listens (stale socket or token, never started).

    The unix socket when there is one; else the loopback TCP port named in hostagent.token.
    """
    path = socket_str(inst_dir, HOSTAGENT_SOCK)
    if hasattr(_socket, "AF_UNIX") and os.path.exists(path):
        # In the shared temp dir: never a socket someone else planted. Only there: the check imports
        # pathlib and the errors (enum), which the warm exec path to the instance dir does without.
        if not path.startswith(os.fspath(inst_dir)):
            secure_socket_dirs(path, create=False)
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return Control(s, None)
        except OSError:
            s.close()
    endpoint = read_token(inst_dir)
    if endpoint is None:
        return None
    import socket  # the TCP channel (Windows): create_connection's address handling is worth its import there

    try:
        tcp = socket.create_connection(("127.0.0.1", endpoint[0]), timeout=timeout)
    except OSError:
        return None
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Control(tcp, endpoint[1])


def request(inst_dir: Path | str, msg: Json, timeout: float = 5.0) -> Json | None:
    """One request, its final answer (or None when no agent answers in time)."""
    c = connect(inst_dir, timeout)
    if c is None:
        return None
    try:
        c.sock.settimeout(timeout)
        c.sock.sendall(c.first(msg))
        reader = LineReader(c.sock)
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
        c.close()


def state(inst_dir: Path | str, timeout: float = 3.0, *, guest_memory: bool = False) -> Json:
    """The agent's own view; {"alive": False, ...} when none answers."""
    reply = request(inst_dir, {"op": "state", "guest_memory": True} if guest_memory else {"op": "state"}, timeout)
    if reply is None or "state" not in reply:
        return {"alive": False, "state": "not running", "forwards": [], "mounts": []}
    result: Json = reply["state"]
    return result


class _Sender:
    """Lines up to the agent after the request (signals, stream-mode stdin), one writer at a time."""

    def __init__(self, sock: _socket.socket, streamed: bool) -> None:
        self.sock = sock
        self.streamed = streamed
        if streamed:  # a stdin pump thread writes too; with fds passed, signals are the only lines sent
            import threading

            self.lock = threading.Lock()
            self.window = threading.Semaphore(STDIN_WINDOW)  # stdin lines in flight, released by acks

    def send(self, msg: Json) -> bool:
        try:
            if self.streamed:
                with self.lock:
                    self.sock.sendall(encode(msg))
            else:
                self.sock.sendall(encode(msg))
            return True
        except OSError:
            return False

    def signal(self, name: str) -> None:
        """From a signal handler: never wait there (the stdin pump may hold the lock in a blocked send)."""
        msg = {"op": "signal", "signal": name}
        if self.streamed:
            import threading

            threading.Thread(target=self.send, args=(msg,), daemon=True).start()
        else:
            self.send(msg)


def exec(  # the name is the operation, as in `devenv exec`
    inst_dir: Path | str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    *,
    workdir: str | None = None,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
    stream: bool | None = None,
) -> int | None:
    """Run argv in the guest through the agent; the exit code, or None if no agent can run it.

    None means nothing was started (no agent, or it cannot exec right now), so
    the caller may fall back to a direct SSH connection without running the
    command twice. `cwd` is the host's working directory: the agent maps it into
    the guest when a mount puts it there. `workdir` (`-w`) names a guest
    directory instead, used as it is. stdin is forwarded unless it is a
    terminal (no PTY here: like `ssh host cmd`, use `devenv shell` for that) or
    /dev/null (the command then gets the guest's /dev/null).
    The fds are handed to the agent where the channel can pass them, else their
    data is streamed over it (`stream` forces either way).
    """
    c = connect(inst_dir)
    if c is None:
        return None
    sent = False  # once the agent has the request, a failure must not make the caller run it again
    try:
        forward_stdin = _stdin_has_data(stdin_fd)
        msg: Json = {"op": "exec", "argv": list(argv), "env": dict(env or {}), "cwd": cwd, "stdin": forward_stdin}
        if workdir:
            msg["workdir"] = workdir
        c.sock.settimeout(None)
        streamed = not c.fd_passing if stream is None else stream
        sender = _Sender(c.sock, streamed)
        if streamed:
            msg["stream"] = True
            c.sock.sendall(c.first(msg))
            sent = True
        else:
            c.send_with_fds(c.first(msg), [stdin_fd, stdout_fd, stderr_fd])
            sent = True
        reader = LineReader(c.sock)
        out_fds = {"stdout": stdout_fd, "stderr": stderr_fd}
        broken: set[int] = set()  # a reader that went away (head, a closed pipe): drop the rest, as SIGPIPE would
        with forward_signals(sender.signal):
            while True:
                try:
                    line = reader.readline()
                except InterruptedError:
                    continue
                if not line:
                    break
                reply = decode(line)
                if reply.get("started") and streamed and forward_stdin:  # only now: unstarted, stdin stays unread
                    import threading

                    threading.Thread(target=_pump_stdin, args=(stdin_fd, sender), name="stdin", daemon=True).start()
                    continue
                if "stdin_ack" in reply:
                    if streamed:
                        sender.window.release()
                    continue
                if "out" in reply:
                    fd = out_fds.get(str(reply["out"]), stderr_fd)
                    if fd not in broken and not _write_out(fd, str(reply.get("data", ""))):
                        broken.add(fd)
                    continue
                if not reply.get("final"):
                    continue
                return _result(reply, stderr_fd)
    except (OSError, ValueError):
        if not sent:
            return None
    finally:
        c.close()
    _say(stderr_fd, "devenv: lost the connection to the host agent while the command ran\n")
    return EXIT_AGENT_ERROR


def _pump_stdin(fd: int, sender: _Sender) -> None:
    """Stream mode: the caller's stdin up to the agent until EOF (a daemon thread: exit does not wait)."""
    import base64
    import select

    while True:
        try:
            data = os.read(fd, 256 * 1024)
        except InterruptedError:
            continue
        except BlockingIOError:  # a non-blocking stdin shared with the caller's shell: wait, not EOF
            select.select([fd], [], [], 1.0)
            continue
        except OSError:
            data = b""
        sender.window.acquire()
        if not sender.send({"op": "stdin", "data": base64.b64encode(data).decode(), "eof": not data}) or not data:
            return


def _write_out(fd: int, data: str) -> bool:
    """Stream mode: one chunk of the command's output to the caller's fd; False once that fd is gone."""
    import base64

    try:
        write_all(fd, base64.b64decode(data))
    except OSError:
        return False
    return True


def _result(reply: Json, stderr_fd: int) -> int | None:
    if reply.get("unavailable"):
        return None  # not started: the caller's own path runs it
    if "exit_code" in reply:
        return int(reply["exit_code"])
    message = str(reply.get("error", "the host agent failed to run the command"))
    _say(stderr_fd, f"devenv: {message}\n")
    code: Any = reply.get("code", EXIT_AGENT_ERROR)
    return int(code)


def _stdin_has_data(fd: int) -> bool:
    """Whether the command gets our stdin: not a terminal (no PTY here), and not /dev/null.

    /dev/null reads as EOF at once, exactly like the guest's own /dev/null, which
    costs no stdin pipe, no extra request and no round trip to close it.
    """
    try:
        if os.isatty(fd):
            return False
        return not os.path.samestat(os.fstat(fd), os.stat(os.devnull))
    except OSError:
        return False


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError:  # contextlib.suppress would cost this hot path its import
        return


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
