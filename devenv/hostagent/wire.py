"""The control-socket wire format and socket locations, shared by the agent and its clients.

Stdlib only and cheap to import: the CLI's `devenv exec` fast path imports this
(through client.py) and must not pay for paramiko or typer.

Protocol: JSON objects, one per line, over a unix stream socket. A client
sends one request ({"op": "state" | "shutdown" | "exec" | "ping", ...}); the
agent answers with one or more lines, the last of which has `"final": true`.
`exec` carries the client's stdin/stdout/stderr as SCM_RIGHTS file
descriptors on its request line, so output goes straight from the agent to the
caller's terminal or pipe without a copy through the client; while it runs
the client may send {"op": "signal", "signal": "INT"} lines on the same
connection, and closing the connection early kills the remote command.

Where there are no unix sockets or no fd passing (Windows), the agent listens
on a loopback TCP port instead and writes {"port", "token"} to the 0600 file
hostagent.token in the 0700 instance dir; every connection's first line must
carry that token (anyone else on the machine can reach a loopback port, but
cannot read the file). `exec` then runs in stream mode ({"stream": true}):
output comes back as {"out": "stdout" | "stderr", "data": base64} lines and
stdin goes up as {"op": "stdin", "data": base64, "eof": bool} lines, at most
STDIN_WINDOW of them not yet acknowledged by a {"stdin_ack": 1} line.
DEVENV_CONTROL=tcp forces the TCP channel on any system (the tests use it).
"""

from __future__ import annotations

import os

from devenv.jsonlines import decode as decode
from devenv.jsonlines import encode as encode
from devenv.jsonlines import loads as _loads
from devenv.paths import ENGINE_SOCK, HOSTAGENT_SOCK, HOSTAGENT_TOKEN, QMP_SOCK, RELAY_SOCK, SUN_PATH_MAX

TYPE_CHECKING = False  # typing and pathlib cost ~4 ms to import: only for the type checker
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Protocol

    from devenv.jsonlines import Json as Json

    class Receiver(Protocol):
        def recv(self, bufsize: int, /) -> bytes: ...


MAX_LINE = 1024 * 1024
# Stream-mode stdin lines a client may have sent and not yet seen {"stdin_ack": 1} for. The
# window keeps the agent's reader free for ^C however much stdin the command leaves unread.
STDIN_WINDOW = 8
CONTROL_ENV = "DEVENV_CONTROL"


def control_uses_tcp() -> bool:
    """The agent's choice of control channel: loopback TCP + token on Windows (or when forced), else a unix socket."""
    return os.name == "nt" or os.environ.get(CONTROL_ENV, "").strip().lower() == "tcp"


def token_str(inst_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(inst_dir), HOSTAGENT_TOKEN)


def read_token(inst_dir: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(port, token) of a TCP control channel, or None when there is none (or the file is unreadable)."""
    try:
        with open(token_str(inst_dir), encoding="ascii") as f:
            data = _loads(f.read())
        port, token, pid = int(data["port"]), str(data["token"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # A file left by a killed agent names a port anyone may have bound since: never send a request there.
    from devenv.pidutil import pid_alive

    return (port, token) if pid_alive(pid) else None


# Every unix socket devenv makes for an instance, by its name in the instance directory. Each is found
# through socket_path(), which moves it to the short folder when the natural path would not fit sun_path:
# the host agent's control socket and the engine socket it serves (both bound by the agent), QEMU's QMP
# socket and the SSH relay's virtio-serial port (both bound by QEMU). tests/unit/test_socket_paths.py
# builds each for the longest names on a Mac, and fails when paths.py names a socket not listed here.
INSTANCE_SOCKETS = (HOSTAGENT_SOCK, ENGINE_SOCK, QMP_SOCK, RELAY_SOCK)

# confstr(_CS_DARWIN_USER_TEMP_DIR) (<unistd.h>): macOS's per-user temp dir, /var/folders/../T/, made
# 0700 for its user by the system. Python names no Darwin-only confstr keys, so the number is used.
CS_DARWIN_USER_TEMP_DIR = 65537


def _fits(path: str) -> bool:
    return len(os.fsencode(path)) < SUN_PATH_MAX


def user_temp_dir(system: str | None = None) -> str:
    """Where the short socket folders go: a temp dir of this user's alone where the system has one.

    macOS gives every user a private temp dir (confstr's
    _CS_DARWIN_USER_TEMP_DIR, which is also what launchd sets TMPDIR to), so
    devenv's sockets never land in the shared /tmp there, even when TMPDIR
    was changed or unset. Elsewhere the temp dir (TMPDIR, else /tmp) may be
    shared, which secure_socket_dirs() is for.
    """
    import sys

    if (system or sys.platform) == "darwin" and sys.platform != "win32":
        try:
            private: str | None = os.confstr(CS_DARWIN_USER_TEMP_DIR)
        except (ValueError, OSError):
            private = None
        if private:
            return private
        env = os.environ.get("TMPDIR", "")
        if env:
            return env
    import tempfile

    return tempfile.gettempdir()


def short_socket_base() -> Path:
    """The per-user folder in the temp dir that holds the short socket folders (short_socket_dir)."""
    from pathlib import Path

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(user_temp_dir()) / f"devenv-{uid}"


def short_socket_dir(inst_dir: str | os.PathLike[str]) -> Path:
    """A private short directory for sockets whose natural path would overflow sun_path.

    Deep DEVENV_HOME paths (macOS home dirs, pytest tmp dirs) easily pass 104
    bytes; the socket then lives in the temp dir under a per-user 0700 folder,
    named after a hash of the instance dir so two instances never collide. The
    name is the hash alone: macOS's per-user temp dir is ~49 bytes long
    (/var/folders/xx/<30 characters>/T/), and with a piece of the instance name
    in it the control socket passed 104 bytes there.
    The temp dir may be shared: secure_socket_dirs() checks whose those folders are.
    """
    import hashlib
    from pathlib import Path

    inst = Path(inst_dir).absolute()
    digest = hashlib.sha256(os.fsencode(str(inst))).hexdigest()[:16]
    return short_socket_base() / digest


def in_short_dir(sock: str | os.PathLike[str]) -> bool:
    """Whether a socket path is one of the short folder's (its folders need the check before use)."""
    from pathlib import Path

    return Path(sock).parent.parent == short_socket_base()


def secure_socket_dirs(sock: str | os.PathLike[str], *, create: bool) -> None:
    """The folders a socket of ours lives in are this user's alone; PermissionProblem when not.

    A short socket folder lives in the shared temp dir, where another local
    user could make `devenv-UID` first and so hold (rename, replace) the
    control and engine sockets in it. As OpenSSH and tmux do with theirs, each
    folder must be a real directory (no symlink) owned by this user and
    writable by nobody else: one that others could write in may already hold
    their sockets or folders, so it is refused, as tmux refuses its socket
    folder with unsafe permissions. One of ours that others may only read
    or enter (an older devenv made it 0755 with the umask) cannot hold
    anything of theirs, and is made 0700. `create` makes missing ones 0700 (the agent, before it
    binds); a client only checks, before it connects.
    """
    from pathlib import Path

    parent = Path(sock).parent
    base = short_socket_base()
    for d in (base, parent) if parent.parent == base else (parent,):
        _private_dir(d, create)


def _private_dir(d: Path, create: bool) -> None:
    import contextlib
    import stat

    from devenv.errors import PermissionProblem

    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return  # nothing there: nothing to connect to either
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory (a symlink or a file)"
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        problem = f"belongs to another user (uid {st.st_uid})"
    elif hasattr(os, "getuid") and st.st_mode & 0o022:  # POSIX modes: Windows reports 0o777 for any folder
        problem = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}), who may have put things in it"
    if problem is not None:
        raise PermissionProblem(
            f"the socket folder {d} {problem}: devenv will not put its sockets there",
            f"remove it if you do not know who made it (`rm -r {d}`); devenv then makes its own, 0700",
        )
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)


def socket_path(inst_dir: str | os.PathLike[str], rel: str) -> Path:
    """Where the socket `rel` (one of INSTANCE_SOCKETS) of an instance lives."""
    from pathlib import Path  # deferred: the exec fast path only needs socket_str()

    return Path(socket_str(inst_dir, rel))


def socket_str(inst_dir: str | os.PathLike[str], rel: str) -> str:
    natural = os.path.join(os.fspath(inst_dir), rel)
    if _fits(natural):
        return natural
    return os.path.join(short_socket_dir(inst_dir), os.path.basename(rel))


def control_path(inst_dir: str | os.PathLike[str]) -> Path:
    return socket_path(inst_dir, HOSTAGENT_SOCK)


def engine_path(inst_dir: str | os.PathLike[str]) -> Path:
    return socket_path(inst_dir, ENGINE_SOCK)


class LineReader:
    """Buffered line reading from a socket that may also be written to (no makefile: fds stay ours)."""

    def __init__(self, sock: Receiver) -> None:
        self.sock = sock
        self.buf = b""

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                line, self.buf = self.buf, b""
                return line
            self.buf += data
            if len(self.buf) > MAX_LINE:
                raise ValueError("control message too long")
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"
