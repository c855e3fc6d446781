"""The one SSH connection from the host to a guest: connect, exec, shell, copy, tunnels.

Design decisions (see docs of each piece for detail):

- Trust: the guest's host key was generated on the host and is *pinned*; the
  handshake is restricted to that key's type and any other key is rejected
  before authentication. There is no auto-add and no prompt (principle 11).
- Boot: `connect()` retries short TCP connects with backoff until a deadline,
  but gives a started handshake a generous timeout: under TCG a handshake can
  take seconds and killing it early only restarts the wait (MACHINE-NOTES).
  The wait for sshd's banner is the exception: QEMU's user-mode net accepts the
  host side of a forwarded port before the guest answers, and a connection made
  while the guest's network is still down never gets one (its SYN was lost), so
  the first banner wait is short (10 s) and doubles with each failed attempt.
- Lazy and idempotent: every operation connects on first use; a transport that
  dropped is re-established once per operation, never in a loop.
- exec: streams stdin/stdout/stderr concurrently with threads (portable, no
  select() on Windows pipes); the remote exit code is returned as a shell
  would (death by signal N -> 128+N, from the `exit-signal` message paramiko
  otherwise ignores).
- Signals: the remote command reports its pid (= its process group and
  session, since sshd calls setsid for every session) as the first line on
  stderr, which is stripped; SIGINT/SIGTERM on the host become
  `kill -s SIG -- -PGID` over a second channel. Chosen over the SSH "signal"
  request because that request is fire-and-forget (no way to know it worked)
  and unsupported by older or non-OpenSSH servers; chosen over a PTY + ^C
  because a PTY merges stderr into stdout and mangles binary data.
- Tunnels: direct-tcpip and direct-streamlocal@openssh.com channels, the
  latter packed by hand because paramiko only packs the TCP kinds.

This module is the connection and its channels. What it drives lives beside
it: pumps.py (bytes between a channel and the host's files), terminal.py
(raw mode, window size and keys for `shell` and `exec -t`), sftpcopy.py
(`devenv cp`), proxy.py (a jump host as a socket).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_OPEN
from paramiko.message import Message

from devenv import paths
from devenv.errors import (
    CommandFailed,
    ConnectionFailed,
    DevenvError,
    InstanceNotFound,
    UsageError,
)
from devenv.sigforward import forward_signals
from devenv.transport import sftpcopy
from devenv.transport.cpspec import CopyPlan
from devenv.transport.proxy import proxy_argv, proxy_socket
from devenv.transport.pumps import CHUNK, Readable, pump_out, pump_stdin
from devenv.transport.sftpcopy import Progress
from devenv.transport.terminal import interact, raw_terminal, resize_on_sigwinch, terminal_size

log = logging.getLogger(__name__)

# Linux signal numbers by SSH signal name (RFC 4254 6.10): the guest is Linux
# whatever the host is, so the host's `signal` module is the wrong table.
LINUX_SIGNALS: dict[str, int] = {
    "HUP": 1,
    "INT": 2,
    "QUIT": 3,
    "ILL": 4,
    "TRAP": 5,
    "ABRT": 6,
    "BUS": 7,
    "FPE": 8,
    "KILL": 9,
    "USR1": 10,
    "SEGV": 11,
    "USR2": 12,
    "PIPE": 13,
    "ALRM": 14,
    "TERM": 15,
}
EXIT_CONNECTION_LOST = 255  # what OpenSSH's ssh returns when it cannot tell
PID_MARKER = b"devenv-pid:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Command = str | Sequence[str]
Sink = IO[bytes] | Callable[[bytes], object] | None


class HostKeyMismatch(ConnectionFailed):
    """The guest presented a host key other than the pinned one. Never retried."""


# --------------------------------------------------------------------------- target


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to connect, and which host key to trust.

    `host_key` is the pinned guest key, as an OpenSSH public key line
    ("ssh-ed25519 AAAA... comment") or known_hosts text (host names ignored:
    the file is per instance). Several keys may be given, one per line.
    `proxy`, when given, is a command whose stdin and stdout reach the guest's
    sshd (OpenSSH's ProxyCommand, `%h` and `%p` for host and port): a jump
    host is `ssh -W %h:%p jump-host`. The guest's key is checked all the same.
    """

    host: str
    port: int
    user: str
    key_path: Path
    host_key: str
    name: str = ""
    proxy: tuple[str, ...] = ()

    @classmethod
    def for_instance(
        cls, instance_dir: Path, *, port: int, user: str, host: str = "127.0.0.1", proxy: Sequence[str] = ()
    ) -> SSHTarget:
        """The target of an instance directory laid out by paths.py (key + pinned host key)."""
        for rel in (paths.SSH_HOST_PUBKEY, paths.SSH_KNOWN_HOSTS):
            pinned = instance_dir / rel
            if pinned.is_file():
                key = instance_dir / paths.SSH_KEY
                return cls(host, port, user, key, pinned.read_text(), instance_dir.name, tuple(proxy))
        raise InstanceNotFound(
            f"instance `{instance_dir.name}` has no pinned SSH host key ({paths.SSH_HOST_PUBKEY})",
            "the instance was not created completely; delete and create it again",
        )

    @property
    def label(self) -> str:
        return f"instance `{self.name}`" if self.name else f"{self.user}@{self.host}:{self.port}"

    def proxy_command(self) -> str:
        """`proxy` as one shell-quoted command line with host and port filled in ("" without one)."""
        return proxy_command_line(self.proxy, self.host, self.port)


def proxy_command_line(proxy: Sequence[str], host: str, port: int) -> str:
    import shlex

    return shlex.join(proxy_argv(proxy, host, port))


WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET = 256 * 1024


def _prefer(available: Sequence[str], first: Sequence[str]) -> tuple[str, ...]:
    """`available` reordered so the names in `first` (those present) lead."""
    lead = [name for name in first if name in available]
    return (*lead, *(name for name in available if name not in lead))


def _still_active(transport: paramiko.Transport, grace: float = 1.0) -> bool:
    """Active after a short grace: a failed request often precedes paramiko noticing the drop."""
    deadline = time.monotonic() + grace
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(transport.is_active())


def parse_pinned_keys(text: str) -> list[paramiko.PKey]:
    """Public keys from OpenSSH public-key or known_hosts text; raises UsageError on none."""
    keys: list[paramiko.PKey] = []
    for raw in text.splitlines():
        fields = raw.split()
        if not fields or fields[0].startswith(("#", "@")):  # comments, @revoked/@cert-authority markers
            continue
        for i in (0, 1):  # "type blob [comment]" or "hosts type blob [comment]"
            if len(fields) > i + 1:
                try:
                    keys.append(paramiko.PKey.from_type_string(fields[i], _b64(fields[i + 1])))
                    break
                except (ValueError, paramiko.SSHException, paramiko.UnknownKeyType):
                    continue
    if not keys:
        raise UsageError(
            "the pinned guest host key is not a valid OpenSSH public key",
            "expected a line like `ssh-ed25519 AAAA...` (the instance's ssh/ssh_host_ed25519_key.pub)",
        )
    return keys


def _b64(text: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256:... as `ssh-keygen -l` prints it (public data, safe to log)."""
    return str(key.fingerprint)


def _host_key_types(keys: Sequence[paramiko.PKey]) -> tuple[str, ...]:
    """Host-key algorithms to offer: only those that can yield a pinned key."""
    out: list[str] = []
    for k in keys:
        name = k.get_name()
        algs = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") if name == "ssh-rsa" else (name,)
        out += [a for a in algs if a not in out]
    return tuple(out)


# --------------------------------------------------------------------------- command lines


def build_script(
    command: Command | None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    report_pid: bool = True,
    login_shell: bool = False,
) -> str:
    """The text sent in the SSH exec request.

    sshd runs it with the user's login shell (`$SHELL -c`), which for devenv's
    guest user is POSIX. A list is quoted with shlex and `exec`ed so the pid we
    report is the command's own; a string is run as shell code. Env goes through
    `export` (sshd's AcceptEnv drops channel env requests by default), cwd
    through `cd`; `command=None` execs the login shell (for shell()).
    """
    lines: list[str] = []
    if report_pid:
        lines.append(f"printf '{PID_MARKER.decode()}%s\\n' \"$$\" >&2")
    for key, value in (env or {}).items():
        if not _ENV_NAME.match(key):
            raise UsageError(f"invalid environment variable name `{key}`", "names are letters, digits and _")
        lines.append(f"export {key}={shlex.quote(value)}")
    if cwd is not None and command is None:
        lines.append(f"cd -- {shlex.quote(cwd)} 2>/dev/null || cd")  # a shell opens all the same, at home
    elif cwd is not None:
        lines.append(f"cd -- {shlex.quote(cwd)} || exit 1")
    if command is None:
        lines.append('exec "${SHELL:-/bin/sh}" -l' if login_shell else 'exec "${SHELL:-/bin/sh}"')
    elif isinstance(command, str):
        lines.append(command)
    else:
        if not command:
            raise UsageError("no command given", "give the command to run after --")
        lines.append("exec " + shlex.join(command))
    return "\n".join(lines)


def _wire(script: str) -> bytes:
    """The exec request's bytes: text from the host's argv or environment that was not UTF-8 (held as
    surrogate escapes, as os.fsdecode does) goes to the guest as the bytes it was, as the agent path does."""
    return script.encode("utf-8", "surrogateescape")


def describe(command: Command | None) -> str:
    if command is None:
        return "(login shell)"
    return command if isinstance(command, str) else shlex.join(command)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ExecResult:
    """A finished remote command: principle 9, the caller decides whether non-zero is an error."""

    command: str
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self, hint: str = "") -> ExecResult:
        if self.ok:
            return self
        tail = "\n".join((self.stderr or self.stdout).decode(errors="replace").strip().splitlines()[-12:])
        detail = f"\n{tail}" if tail else ""
        raise CommandFailed(f"`{self.command}` failed in the guest with exit code {self.exit_code}{detail}", hint)


# --------------------------------------------------------------------------- remote process


class RemoteProcess:
    """A command running in the guest on one channel; signal() works from any thread."""

    def __init__(self, conn: SSHConnection, channel: paramiko.Channel, command: str) -> None:
        self.conn = conn
        self.channel = channel
        self.command = command
        self._pid: int | None = None
        self._pid_known = threading.Event()

    @property
    def pid(self) -> int | None:
        """The remote pid (and process group) once reported, else None."""
        return self._pid

    def _set_pid(self, pid: int | None) -> None:
        self._pid = pid
        self._pid_known.set()

    def signal(self, sig: int | str, wait_pid: float = 5.0) -> bool:
        """Send a signal to the remote process group; True if `kill` succeeded.

        `sig` is a Linux signal name ("INT", "SIGTERM") or number. Runs
        `kill -s NAME -- -PGID` on a second channel, so it works while the
        first one is busy streaming.
        """
        name = _signal_name(sig)
        self._pid_known.wait(wait_pid)
        if self._pid is None or self.exited:
            return False
        try:
            result = self.conn.run(["kill", "-s", name, "--", f"-{self._pid}"], report_pid=False)
        except DevenvError as e:
            log.debug("could not forward SIG%s to %s: %s", name, self._pid, e)
            return False
        return result.ok

    @property
    def exited(self) -> bool:
        return bool(self.channel.exit_status_ready())

    def wait(self, timeout: float | None = None) -> int:
        """The exit code: 0-255, 128+N for death by signal N, 255 when the connection dropped."""
        if not self.channel.status_event.wait(timeout):
            raise TimeoutError(f"`{self.command}` still running after {timeout}s")
        return _exit_code(self.channel)


def _signal_name(sig: int | str) -> str:
    if isinstance(sig, int):
        for name, num in LINUX_SIGNALS.items():
            if num == sig:
                return name
        raise UsageError(f"cannot forward signal {sig}", f"use one of {', '.join(LINUX_SIGNALS)}")
    name = sig.upper().removeprefix("SIG")
    if name not in LINUX_SIGNALS:
        raise UsageError(f"unknown signal `{sig}`", f"use one of {', '.join(LINUX_SIGNALS)}")
    return name


def _exit_code(channel: paramiko.Channel) -> int:
    status = int(channel.exit_status)
    return EXIT_CONNECTION_LOST if status < 0 else status


def _install_exit_signal_handler(transport: paramiko.Transport) -> None:
    """Make `exit-signal` set the channel's status to 128+N.

    paramiko drops exit-signal, leaving exit_status at -1 for a command killed
    by a signal. The transport dispatches channel messages through a class-level
    table; an instance-level copy with one entry wrapped changes only this
    connection.
    """
    table = dict(transport._channel_handler_table)
    original = table[MSG_CHANNEL_REQUEST]

    def handle_request(chan: paramiko.Channel, m: Message) -> None:
        start = m.packet.tell()
        if m.get_text() == "exit-signal":
            m.get_boolean()  # want_reply: always false for exit-signal
            name = m.get_text()
            chan.exit_status = 128 + LINUX_SIGNALS.get(name, 0) if name in LINUX_SIGNALS else 255
            chan.status_event.set()
            return
        m.packet.seek(start)
        original(chan, m)

    table[MSG_CHANNEL_REQUEST] = handle_request
    transport._channel_handler_table = table


# --------------------------------------------------------------------------- stream pumps


def _sink_writer(sink: Sink) -> Callable[[bytes], None]:
    if sink is None:
        return lambda _data: None
    if callable(sink) and not hasattr(sink, "write"):
        fn = sink

        def call(data: bytes) -> None:
            fn(data)

        return call
    stream: IO[bytes] = sink  # type: ignore[assignment]

    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def _pump_stderr(proc: RemoteProcess, write: Callable[[bytes], None]) -> None:
    """Forward stderr after taking the pid line that build_script() puts first."""
    head = b""
    try:
        while b"\n" not in head and len(head) < 64:
            data = proc.channel.recv_stderr(CHUNK)
            if not data:
                break
            head += data
        line, sep, rest = head.partition(b"\n")
        if sep and line.startswith(PID_MARKER) and line[len(PID_MARKER) :].isdigit():
            proc._set_pid(int(line[len(PID_MARKER) :]))
        else:
            rest = head
        if rest:
            write(rest)
    finally:
        proc._set_pid(proc.pid)  # unblock signal() waiters even without a pid
    pump_out(proc.channel.recv_stderr, write)


# --------------------------------------------------------------------------- connection


class SSHConnection:
    """A lazily opened, pinned, key-authenticated connection to one guest.

    Use as a context manager or call close(). Thread-safe for opening channels:
    the host agent multiplexes many tunnels over one connection.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        boot_timeout: float = 120.0,
        reconnect_timeout: float = 30.0,
        tcp_timeout: float = 3.0,
        handshake_timeout: float = 60.0,
        banner_timeout: float = 10.0,
        keepalive: int = 15,
        opener: Callable[[], Any] | None = None,
    ) -> None:
        """`opener`, when given, makes the socket-like stream each connection runs over instead of TCP
        to target.host:port (the host agent's relay port, hostagent/relay.py)."""
        self.target = target
        self.opener = opener
        self.boot_timeout = boot_timeout
        self.reconnect_timeout = reconnect_timeout
        self.tcp_timeout = tcp_timeout
        self.handshake_timeout = handshake_timeout
        self.banner_timeout = banner_timeout
        self.keepalive = keepalive
        self._pinned = parse_pinned_keys(target.host_key)
        self._pkey: paramiko.PKey | None = None
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    # ---- lifecycle

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and t.is_active() and t.is_authenticated()

    def connect(self, timeout: float | None = None) -> SSHConnection:
        """Connect if not connected (idempotent); retry until `timeout` (default boot_timeout)."""
        with self._lock:
            if not self.connected:
                self._drop()
                self._transport = self._connect_until(self.boot_timeout if timeout is None else timeout)
            return self

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        sftp, self._sftp = self._sftp, None
        t, self._transport = self._transport, None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()
        if t is not None:
            t.close()

    @property
    def transport(self) -> paramiko.Transport:
        """The live transport, connecting (or reconnecting after a drop) as needed."""
        with self._lock:
            if self._transport is not None and not self.connected:
                log.info("SSH connection to %s dropped; reconnecting", self.target.label)
                self._drop()
                self._transport = self._connect_until(self.reconnect_timeout)
            elif self._transport is None:
                self._transport = self._connect_until(self.boot_timeout)
            return self._transport

    def _private_key(self) -> paramiko.PKey:
        if self._pkey is None:
            try:
                self._pkey = paramiko.PKey.from_path(self.target.key_path)
            except FileNotFoundError:
                raise ConnectionFailed(
                    f"the SSH key of {self.target.label} is missing: {self.target.key_path}",
                    "the instance was not created completely; delete and create it again",
                ) from None
            except (OSError, ValueError, paramiko.SSHException) as e:
                raise ConnectionFailed(
                    f"cannot read the SSH key {self.target.key_path}: {e}",
                    "it must be an unencrypted OpenSSH private key readable by you",
                ) from None
        return self._pkey

    def _connect_until(self, timeout: float) -> paramiko.Transport:
        """Retry while the guest boots: refused/reset/EOF/auth-not-ready are expected then."""
        deadline = time.monotonic() + timeout
        delay = 0.25
        attempt = 0
        banner = min(self.banner_timeout, self.handshake_timeout)
        pkey = self._private_key()
        while True:
            attempt += 1
            try:
                transport = self._connect_once(pkey, banner)
                log.debug("connected to %s after %d attempt(s)", self.target.label, attempt)
                return transport
            except HostKeyMismatch:
                raise
            except paramiko.IncompatiblePeer as e:
                raise HostKeyMismatch(
                    f"the SSH server of {self.target.label} offers no host key of the pinned type "
                    f"({', '.join(_host_key_types(self._pinned))}): {e}",
                    _MISMATCH_HINT,
                ) from None
            except (EOFError, paramiko.SSHException) as e:  # TCP got through: sshd may just be slow
                last = e
                banner = min(banner * 2, self.handshake_timeout)
            except OSError as e:
                last = e
            remaining = deadline - time.monotonic()
            log.debug("connect attempt %d to %s failed: %s", attempt, self.target.label, _why(last))
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.6, 2.0)
        if isinstance(last, paramiko.AuthenticationException):
            raise ConnectionFailed(
                f"the guest of {self.target.label} rejected the instance's SSH key ({self.target.user})",
                "the key in the guest does not match ssh/id_ed25519; re-create the instance",
            )
        via = f" through `{self.target.proxy_command()}`" if self.target.proxy else ""
        raise ConnectionFailed(
            f"cannot reach {self.target.label} over SSH at {self.target.host}:{self.target.port}{via} "
            f"within {timeout:.0f}s: {_why(last)}",
            "check that the instance is running (`devenv status`) and see `devenv logs` for its console",
        )

    def _connect_once(self, pkey: paramiko.PKey, banner_timeout: float) -> paramiko.Transport:
        sock: Any
        if self.opener is not None:
            sock = self.opener()
        elif self.target.proxy and os.name == "nt":
            sock = paramiko.ProxyCommand(self.target.proxy_command())
        elif self.target.proxy:
            sock = proxy_socket(self.target.proxy, self.target.host, self.target.port)
        else:
            sock = socket.create_connection((self.target.host, self.target.port), timeout=self.tcp_timeout)
            # Requests and events are small packets: Nagle would hold one back until the
            # previous one is acknowledged (OpenSSH sets this too for interactive sessions).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A larger window and packets: fewer round trips and less per-packet Python work on
        # bulk transfers (engine socket, port forwards). AES-GCM first: one pass in OpenSSL
        # instead of AES-CTR plus an HMAC computed per packet.
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        try:
            options = transport.get_security_options()
            options.ciphers = _prefer(options.ciphers, ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com"))
            # Generous: a slow handshake is progress, and killing it restarts the wait. The banner
            # wait is shorter: no banner at all means a connection lost on the way (see the module doc).
            transport.banner_timeout = banner_timeout
            transport.handshake_timeout = self.handshake_timeout
            transport.auth_timeout = self.handshake_timeout
            transport.get_security_options().key_types = _host_key_types(self._pinned)
            transport.start_client(timeout=self.handshake_timeout)
            self._verify_host_key(transport.get_remote_server_key())
            transport.auth_publickey(self.target.user, pkey)
            if not transport.is_authenticated():
                raise paramiko.AuthenticationException("authentication did not complete")
            transport.set_keepalive(self.keepalive)
            _install_exit_signal_handler(transport)
            return transport
        except BaseException:
            transport.close()
            raise

    def _verify_host_key(self, key: paramiko.PKey) -> None:
        blob = key.asbytes()
        if any(p.get_name() == key.get_name() and p.asbytes() == blob for p in self._pinned):
            return
        expected = ", ".join(fingerprint(p) for p in self._pinned)
        raise HostKeyMismatch(
            f"host key mismatch for {self.target.label} at {self.target.host}:{self.target.port}: "
            f"the server presented {key.get_name()} {fingerprint(key)}, expected {expected}. "
            "This is a possible man-in-the-middle attack or a re-created instance",
            _MISMATCH_HINT,
        )

    # ---- channels

    def _with_reconnect(self, what: str, open_fn: Callable[[paramiko.Transport], paramiko.Channel]) -> paramiko.Channel:
        """Open a channel; if the transport turns out dead, reconnect once and retry."""
        transport = self.transport
        try:
            return open_fn(transport)
        except paramiko.ChannelException:
            raise  # the server answered: reconnecting would not change its mind
        except (OSError, EOFError, paramiko.SSHException) as e:
            # EOF means the server hung up, even while paramiko's reader thread has yet to
            # notice (is_active() still true for a moment): that connection is dead too.
            if not isinstance(e, EOFError) and _still_active(transport):
                raise ConnectionFailed(f"cannot open {what} on {self.target.label}: {_why(e)}") from None
            log.info("transport to %s died (%s); reconnecting once", self.target.label, _why(e))
        with self._lock:
            if self._transport is transport:
                self._drop()
        try:
            return open_fn(self.transport)
        except paramiko.ChannelException:
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectionFailed(
                f"lost the SSH connection to {self.target.label} again while opening {what}: {_why(e)}",
                "check that the instance is still running (`devenv status`)",
            ) from None

    def open_session(self) -> paramiko.Channel:
        try:
            return self._with_reconnect("a session", lambda t: t.open_session(timeout=self.handshake_timeout))
        except paramiko.ChannelException as e:
            raise ConnectionFailed(
                f"the SSH server of {self.target.label} refused a new session: {e.text or e.code}",
                "too many sessions at once? sshd's MaxSessions limits them per connection",
            ) from None

    def _request(self, channel: paramiko.Channel, what: str, request: Callable[[], object]) -> None:
        """Send a session request (exec, pty, subsystem); failures become ConnectionFailed.

        Not retried on a new connection: once an exec request is sent the command
        may have started, and running it twice is worse than failing once.
        """
        try:
            request()
        except (OSError, EOFError, paramiko.SSHException) as e:
            channel.close()
            raise ConnectionFailed(
                f"{what} on {self.target.label} failed: {_why(e)}",
                "the connection dropped or the guest's sshd refused; see its log (journalctl -u ssh in the guest)",
            ) from None

    # ---- commands

    def start(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        report_pid: bool = True,
    ) -> RemoteProcess:
        """Start a command; stream with the returned process's channel. See exec() for the usual path."""
        script = build_script(command, env=env, cwd=cwd, report_pid=report_pid)
        channel = self.open_session()
        self._request(channel, f"starting `{describe(command)}`", lambda: channel.exec_command(_wire(script)))
        proc = RemoteProcess(self, channel, describe(command))
        if not report_pid:
            proc._set_pid(None)
        return proc

    def exec(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | Readable | None = None,
        stdout: Sink = None,
        stderr: Sink = None,
        forward_signals: bool = True,
        report_pid: bool = True,
    ) -> int:
        """Run `command` in the guest, streaming all three streams; return its exit code.

        `command` is an argv list (quoted for the remote shell) or a shell string.
        `stdin` is bytes or a binary stream (EOF is forwarded); `stdout`/`stderr`
        are binary streams or callables taking bytes (None discards). With
        `forward_signals` and when called on the main thread, SIGINT and SIGTERM
        received meanwhile are forwarded to the remote process group.
        """
        proc = self.start(command, env=env, cwd=cwd, report_pid=report_pid)
        return self._drive(proc, stdin, stdout, stderr, forward_signals)

    def _drive(
        self, proc: RemoteProcess, stdin: bytes | Readable | None, stdout: Sink, stderr: Sink, forward_signals: bool
    ) -> int:
        stop = threading.Event()
        out_w, err_w = _sink_writer(stdout), _sink_writer(stderr)
        threads = [
            threading.Thread(target=pump_out, args=(proc.channel.recv, out_w), name="ssh-stdout", daemon=True),
            threading.Thread(target=_pump_stderr, args=(proc, err_w), name="ssh-stderr", daemon=True),
        ]
        feeder = threading.Thread(target=pump_stdin, args=(proc.channel, stdin, stop), name="ssh-stdin", daemon=True)
        restore = _forward_signals(proc) if forward_signals else contextlib.nullcontext()
        try:
            with restore:
                for t in threads:
                    t.start()
                feeder.start()
                while not proc.channel.status_event.wait(0.2):
                    pass
                for t in threads:
                    while t.is_alive():
                        t.join(0.2)
        finally:
            stop.set()
            proc.channel.close()
        if proc.channel.exit_status < 0 and not self.connected:
            raise ConnectionFailed(
                f"lost the SSH connection to {self.target.label} while running `{proc.command}`",
                "the command may still be running in the guest; check with `devenv status`",
            )
        return _exit_code(proc.channel)

    def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: bytes | None = None,
        report_pid: bool = True,
    ) -> ExecResult:
        """Run to completion capturing output (for small outputs: probes, provisioning steps)."""
        out, err = io.BytesIO(), io.BytesIO()
        code = self.exec(
            command,
            env=env,
            cwd=cwd,
            stdin=input,
            stdout=out.write,
            stderr=err.write,
            forward_signals=False,
            report_pid=report_pid,
        )
        return ExecResult(describe(command), code, out.getvalue(), err.getvalue())

    # ---- interactive

    def shell(
        self,
        command: Command | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        term: str | None = None,
        stdin_fd: int | None = None,
        stdout_fd: int | None = None,
    ) -> int:
        """An interactive session on a PTY; returns the remote exit code.

        The local terminal is put in raw mode (so ^C, ^Z, arrows go to the
        guest) and restored on every exit path; SIGWINCH resizes the remote PTY.
        Without `command`, env or cwd, the guest's login shell runs as `ssh` would.
        """
        in_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        out_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
        cols, rows = terminal_size(out_fd, in_fd)
        channel = self.open_session()
        try:
            term = term or os.environ.get("TERM", "xterm-256color")
            self._request(channel, "allocating a terminal", lambda: channel.get_pty(term=term, width=cols, height=rows))
            if command is None and not env and cwd is None:
                self._request(channel, "starting a shell", channel.invoke_shell)
            else:
                script = build_script(command, env=env, cwd=cwd, report_pid=False, login_shell=True)
                self._request(channel, f"starting `{describe(command)}`", lambda: channel.exec_command(_wire(script)))
            with raw_terminal(in_fd), resize_on_sigwinch(channel, out_fd, in_fd):
                interact(channel, in_fd, out_fd)
            channel.status_event.wait(self.handshake_timeout)
            return _exit_code(channel)
        finally:
            channel.close()

    # ---- files

    def sftp(self) -> paramiko.SFTPClient:
        """One SFTP session per connection, reopened after a reconnect."""
        with self._lock:
            transport = self.transport
            if self._sftp is None or self._sftp.get_channel().get_transport() is not transport:
                channel = self._with_reconnect("an SFTP session", lambda t: t.open_session(timeout=60))
                self._request(channel, "starting SFTP", lambda: channel.invoke_subsystem("sftp"))
                self._sftp = paramiko.SFTPClient(channel)
            return self._sftp

    def copy(self, plan: CopyPlan, progress: Progress | None = None) -> None:
        """Carry out a parsed `devenv cp` (see cpspec.parse_copy_args)."""
        if plan.direction == "to_guest":
            self.copy_to_guest(plan.host_path, plan.guest_path, progress)
        else:
            self.copy_from_guest(plan.guest_path, plan.host_path, progress)

    def copy_to_guest(
        self, host_path: str | os.PathLike[str], guest_path: str, progress: Progress | None = None
    ) -> str:
        """Copy a file or tree into the guest, keeping modes and mtimes; returns the guest path written.

        Like `cp -rp`: into `guest_path` if it is an existing directory, else as it.
        Symlinks are recreated as symlinks (never followed: no loops, no surprises).
        """
        src = Path(os.path.expanduser(os.fspath(host_path)))
        if not src.exists() and not src.is_symlink():
            raise InstanceNotFound(f"no such file or directory on the host: {host_path}")
        sftp = self.sftp()
        dest = sftpcopy.guest_path(guest_path)
        try:
            if sftpcopy.remote_is_dir(sftp, dest):
                dest = posixpath.join(dest, src.name)
        except OSError as e:  # a folder on the way the guest user may not enter
            raise sftpcopy.copy_failed(e, f"{src} to {dest} in the guest") from None
        sftpcopy.put_tree(sftp, src, dest, progress)
        return dest

    def copy_from_guest(
        self, guest_path: str, host_path: str | os.PathLike[str], progress: Progress | None = None
    ) -> Path:
        """Copy a file or tree out of the guest, keeping modes and mtimes; returns the host path written."""
        sftp = self.sftp()
        src = sftpcopy.guest_path(guest_path)
        try:
            attrs = sftp.lstat(src)
        except FileNotFoundError:
            raise InstanceNotFound(f"no such file or directory in {self.target.label}: {guest_path}") from None
        except OSError as e:
            raise sftpcopy.copy_failed(e, f"{src} in the guest to {host_path}") from None
        dest = Path(os.path.expanduser(os.fspath(host_path)))
        try:
            if dest.is_dir():
                dest = dest / posixpath.basename(src.rstrip("/") or "/")
        except OSError as e:
            raise sftpcopy.copy_failed(e, f"{src} in the guest to {dest}") from None
        sftpcopy.get_tree(sftp, src, attrs, dest, progress)
        return dest

    # ---- tunnels

    def open_unix_socket(self, path: str, timeout: float = 30.0) -> paramiko.Channel:
        """A channel connected to a unix socket in the guest (direct-streamlocal@openssh.com)."""
        try:
            return self._with_reconnect(f"a tunnel to {path}", lambda t: open_streamlocal(t, path, timeout))
        except paramiko.ChannelException as e:
            raise ConnectionFailed(
                f"the guest refused a connection to unix socket {path}: {e.text or e.code}",
                "check that the socket exists and that sshd allows AllowStreamLocalForwarding",
            ) from None

    def open_tcp(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> paramiko.Channel:
        """A channel connected to host:port as seen from inside the guest (direct-tcpip)."""
        try:
            return self._with_reconnect(
                f"a tunnel to {host}:{port}",
                lambda t: t.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout),
            )
        except paramiko.ChannelException as e:
            raise ConnectionFailed(
                f"the guest refused a connection to {host}:{port}: {e.text or e.code}",
                "check that something listens on that port in the guest and that sshd allows AllowTcpForwarding",
            ) from None


_MISMATCH_HINT = (
    "if you deleted and re-created the instance, its new key is in the instance directory; "
    "otherwise do not connect: something else is answering on this port"
)


def _why(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_streamlocal(transport: paramiko.Transport, path: str, timeout: float = 30.0) -> paramiko.Channel:
    """Open a direct-streamlocal@openssh.com channel: paramiko's open_channel with OpenSSH's payload.

    The payload (PROTOCOL, section 2.4) is: string socket path, string
    reserved, uint32 reserved. paramiko.Transport.open_channel only packs the
    TCP kinds, so this mirrors its body (paramiko >= 2.x internals, unchanged
    through 5.x) with that payload.
    """
    if not transport.is_active():
        raise paramiko.SSHException("SSH session not active")
    with transport.lock:
        window = transport._sanitize_window_size(None)
        max_packet = transport._sanitize_packet_size(None)
        chanid = transport._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("direct-streamlocal@openssh.com")
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(max_packet)
        m.add_string(path)
        m.add_string("")
        m.add_int(0)
        chan = paramiko.Channel(chanid)
        transport._channels.put(chanid, chan)
        transport.channel_events[chanid] = event = threading.Event()
        transport.channels_seen[chanid] = True
        chan._set_transport(transport)
        chan._set_window(window, max_packet)
    transport._send_user_message(m)
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        if not transport.is_active():
            raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
        if time.monotonic() > deadline:
            raise paramiko.SSHException("Timeout opening channel.")
    opened = transport._channels.get(chanid)
    if opened is None:
        raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
    return opened


def _forward_signals(proc: RemoteProcess) -> contextlib.AbstractContextManager[None]:
    """While a command runs, turn host SIGINT/SIGTERM into the same signal for the remote group."""
    return forward_signals(
        lambda name: threading.Thread(target=proc.signal, args=(name,), name=f"ssh-sig{name}", daemon=True).start()
    )
