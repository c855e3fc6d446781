"""devenv.transport.ssh against a real OpenSSH sshd (see sshd_fixture.py).

Skipped, with the reason, only when sshd or ssh-keygen is not installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.errors import ConnectionFailed, DevenvError, UsageError
from devenv.transport.cpspec import parse_copy_args
from devenv.transport.ssh import HostKeyMismatch, SSHConnection, SSHTarget
from devenv.transport.sshconfig import SSHConfigEntry, known_hosts_line
from tests.integration import sshd_fixture
from tests.integration.sshd_fixture import SSHDInfo, SSHDServer, keygen, ssh_tools_available
from tests.loopback import Listener
from tests.ptyutil import read_until, set_winsize

# The fixtures, under the names the tests ask for.
sshd_server = sshd_fixture.sshd_server
sshd = sshd_fixture.sshd

pytestmark = pytest.mark.integration


def target_for(info: SSHDInfo, **overrides: object) -> SSHTarget:
    fields: dict[str, object] = {
        "host": info.host,
        "port": info.port,
        "user": info.user,
        "key_path": info.client_key,
        "host_key": info.host_pubkey_line,
        "name": "t",
    }
    fields.update(overrides)
    return SSHTarget(**fields)  # type: ignore[arg-type]


@pytest.fixture
def conn(sshd: SSHDInfo) -> Iterator[SSHConnection]:
    with SSHConnection(target_for(sshd), boot_timeout=10) as c:
        yield c


# ---------------------------------------------------------------- connection


def test_connect_is_lazy_idempotent_and_closed_by_the_context_manager(sshd: SSHDInfo) -> None:
    with SSHConnection(target_for(sshd)) as c:
        assert not c.connected
        assert c.run(["echo", "hi"]).stdout == b"hi\n"
        first = c.transport
        assert first.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # small requests never wait on Nagle
        assert c.connect() is c
        assert c.transport is first
    assert not c.connected
    assert not first.is_active()


class _LateGuestPort:
    """A forwarded port as QEMU's user-mode net offers it during boot.

    Connections accepted in the first `silent_for` seconds are held open and
    never answered (their SYN to the guest was lost); later ones reach sshd.
    """

    def __init__(self, sshd_port: int, silent_for: float) -> None:
        self.sshd_port = sshd_port
        self.until = time.monotonic() + silent_for
        self.held: list[socket.socket] = []
        self.listener = Listener(self._serve)
        self.port = self.listener.port

    def _serve(self, client: socket.socket) -> None:
        if time.monotonic() < self.until:
            self.held.append(client)
            return
        upstream = socket.create_connection(("127.0.0.1", self.sshd_port))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._copy, args=(a, b), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_a_connection_lost_during_boot_is_retried_soon_not_after_the_handshake_timeout(sshd: SSHDInfo) -> None:
    """No banner on a connection made while the guest's network was down: retry after 1 s, 2 s, ..., not 60 s."""
    port = _LateGuestPort(sshd.port, silent_for=2.0)
    try:
        t0 = time.monotonic()
        with SSHConnection(target_for(sshd, port=port.port), boot_timeout=60, banner_timeout=1.0) as c:
            assert c.run(["echo", "up"]).stdout == b"up\n"
        assert time.monotonic() - t0 < 20  # one silent connection with the old 60 s banner wait took 60 s
        assert port.held  # the test did hold a connection silently
    finally:
        port.close()


def test_host_key_mismatch_is_rejected_with_a_clear_message(sshd: SSHDInfo, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    target = target_for(sshd, host_key=Path(f"{other}.pub").read_text())
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch) as err, SSHConnection(target, boot_timeout=30) as c:
        c.connect()
    assert time.monotonic() - started < 10, "a mismatch must not be retried until the deadline"
    assert isinstance(err.value, ConnectionFailed)
    assert err.value.message.startswith(f"host key mismatch for instance `t` at 127.0.0.1:{sshd.port}: ")
    assert "possible man-in-the-middle attack or a re-created instance" in err.value.message
    assert "re-created the instance" in err.value.hint


def test_pinned_key_may_come_as_known_hosts_text(sshd: SSHDInfo) -> None:
    pinned = "# pinned by devenv\n" + known_hosts_line("t", sshd.host_pubkey_line)
    with SSHConnection(target_for(sshd, host_key=pinned)) as c:
        assert c.run("true").ok


def test_invalid_pinned_key_is_a_usage_error(sshd: SSHDInfo) -> None:
    with pytest.raises(UsageError, match="not a valid OpenSSH public key"):
        SSHConnection(target_for(sshd, host_key="ssh-ed25519 !!notbase64"))


def test_wrong_client_key_fails_after_the_deadline(sshd: SSHDInfo, tmp_path: Path) -> None:
    target = target_for(sshd, key_path=keygen(tmp_path / "stranger"))
    with pytest.raises(ConnectionFailed) as err, SSHConnection(target, boot_timeout=1) as c:
        c.connect()
    assert err.value.message == f"the guest of instance `t` rejected the instance's SSH key ({sshd.user})"


def test_nothing_listening_fails_with_the_reason(sshd: SSHDInfo, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionFailed) as err, SSHConnection(target_for(sshd, port=port), boot_timeout=1) as c:
        c.connect()
    assert err.value.message.startswith(f"cannot reach instance `t` over SSH at 127.0.0.1:{port} within 1s: ")
    assert "ConnectionRefusedError" in err.value.message


def test_connect_retries_while_the_server_boots(tmp_path: Path) -> None:
    server = SSHDServer(tmp_path / "late")
    timer = threading.Timer(1.5, server.start)
    timer.start()
    try:
        with SSHConnection(target_for(server.info), boot_timeout=20) as c:
            started = time.monotonic()
            assert c.run(["echo", "up"]).stdout == b"up\n"
            assert time.monotonic() - started >= 1.0
    finally:
        timer.join()
        server.stop()


def test_reconnects_once_after_the_transport_drops(sshd_server: SSHDServer) -> None:
    with SSHConnection(target_for(sshd_server.info)) as c:
        assert c.run("echo one").stdout == b"one\n"
        before = c.transport
        sshd_server.kill_sessions()
        deadline = time.monotonic() + 5
        while before.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.run("echo two").stdout == b"two\n"
        assert c.transport is not before


def test_reconnects_when_the_drop_is_noticed_only_while_opening(sshd_server: SSHDServer) -> None:
    with SSHConnection(target_for(sshd_server.info)) as c:
        assert c.run("echo one").ok
        sshd_server.kill_sessions()
        assert c.run("echo two").stdout == b"two\n"  # may hit the dead transport first


# ---------------------------------------------------------------- exec


def test_exec_separates_streams_and_returns_the_exit_code(conn: SSHConnection) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    code = conn.exec("echo out; echo err >&2; exit 7", stdout=out, stderr=err)
    assert (code, out.getvalue(), err.getvalue()) == (7, b"out\n", b"err\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["printf", "%s|", "a b", "it's", '"q"', "$HOME", "`x`", "back\\slash", "new\nline", ""],
        ["sh", "-c", 'echo "$1"', "sh", "; rm -rf /nonexistent"],
    ],
)
def test_exec_argv_is_quoted_exactly(conn: SSHConnection, argv: list[str]) -> None:
    expected = subprocess.run(argv, capture_output=True).stdout
    assert conn.run(argv).stdout == expected


def test_env_and_cwd(conn: SSHConnection, tmp_path: Path) -> None:
    weird = "sp ace 'q' \"dq\" $X `y` \\ \nend"
    (tmp_path / "dir with space").mkdir()
    result = conn.run(
        ["sh", "-c", 'printf "%s|%s|%s" "$A" "$B" "$(pwd)"'],
        env={"A": weird, "B": ""},
        cwd=str(tmp_path / "dir with space"),
    )
    assert result.stdout.decode() == f"{weird}||{tmp_path / 'dir with space'}"
    missing = conn.run("pwd", cwd=str(tmp_path / "missing"))
    assert missing.exit_code == 1
    assert b"missing" in missing.stderr


def test_bytes_that_are_not_utf8_arrive_as_they_were(conn: SSHConnection) -> None:
    """A host value read with surrogateescape (os.environ, argv) reaches the guest as its original bytes."""
    raw = b"caf\xe9 \xff"
    result = conn.run(["printf", "%s|%s", "$V", os.fsdecode(raw)], env={"V": os.fsdecode(raw)})
    assert (result.exit_code, result.stdout) == (0, b"$V|" + raw)
    result = conn.run(["sh", "-c", 'printf "%s" "$V"'], env={"V": os.fsdecode(raw)})
    assert result.stdout == raw


def test_env_name_is_validated(conn: SSHConnection) -> None:
    with pytest.raises(UsageError, match="invalid environment variable name `A;B`"):
        conn.run("true", env={"A;B": "x"})


def test_ten_megabytes_through_wc_count_exactly(conn: SSHConnection) -> None:
    data = os.urandom(10 * 1024 * 1024)
    assert conn.run(["wc", "-c"], input=data).stdout.split() == [b"10485760"]


def test_binary_roundtrip_both_ways_concurrently(conn: SSHConnection) -> None:
    data = os.urandom(8 * 1024 * 1024)
    # cat echoes while we are still sending: deadlocks unless both directions stream at once.
    result = conn.run("cat; echo done >&2", input=data)
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    assert result.stderr == b"done\n"


def test_stdin_from_a_pipe_and_eof(conn: SSHConnection) -> None:
    r, w = os.pipe()
    with os.fdopen(w, "wb") as wf:
        wf.write(b"line1\nline2\n")
    with os.fdopen(r, "rb") as rf:
        assert conn.exec(["sh", "-c", "cat >/dev/null; exit 4"], stdin=rf) == 4
    assert conn.run("cat").stdout == b""  # no stdin: EOF at once, cat does not hang


@pytest.mark.parametrize(("script", "code"), [("kill -TERM $$", 143), ("kill -KILL $$", 137), ("exit 255", 255)])
def test_signal_death_is_128_plus_n(conn: SSHConnection, script: str, code: int) -> None:
    assert conn.run(["sh", "-c", script]).exit_code == code


def _remote_sleep_running(conn: SSHConnection, tag: str) -> bool:
    return conn.run(["pgrep", "-f", f"sleep {tag}"], report_pid=False).exit_code == 0


def test_sigint_is_forwarded_and_returns_130(conn: SSHConnection) -> None:
    tag = "100.4242"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the run was started as a background job
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        code = conn.exec(["sleep", tag])
    finally:
        timer.join()
    assert code == 130
    assert time.monotonic() - started < 5
    assert not _remote_sleep_running(conn, tag)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_sigterm_is_forwarded_to_a_shell_pipeline(conn: SSHConnection) -> None:
    tag = "100.4343"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = conn.exec(f"sleep {tag} | cat; echo not-reached")
    finally:
        timer.join()
    assert code == 143
    assert not _remote_sleep_running(conn, tag)


def test_remote_process_signal_from_another_thread(conn: SSHConnection) -> None:
    proc = conn.start(["sleep", "100.4444"])
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(conn._drive(proc, None, None, None, False)))
    t.start()
    assert proc.signal("TERM")
    t.join(10)
    assert result == [143]
    assert proc.pid is not None and proc.pid > 1


def test_run_check_shows_the_tail(conn: SSHConnection) -> None:
    from devenv.errors import CommandFailed

    with pytest.raises(CommandFailed) as err:
        conn.run("echo boom >&2; exit 3").check()
    assert err.value.message == "`echo boom >&2; exit 3` failed in the guest with exit code 3\nboom"


# ---------------------------------------------------------------- shell (PTY)

SHELL_CHILD = textwrap.dedent(
    """
    import json, sys, termios
    from pathlib import Path
    from devenv.transport.ssh import SSHConnection, SSHTarget
    t = json.loads(sys.argv[1])
    target = SSHTarget(t["host"], t["port"], t["user"], Path(t["key"]), t["host_key"])
    before = termios.tcgetattr(0)
    with SSHConnection(target) as c:
        code = c.shell()
    sys.stdout.write("RESTORED=%s\\n" % (termios.tcgetattr(0) == before))
    sys.stdout.flush()
    sys.exit(code)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")
def test_interactive_shell_on_a_pty(sshd_server: SSHDServer, sshd: SSHDInfo) -> None:
    if not sshd_server.pty_supported:
        pytest.skip("a non-root sshd cannot hand out PTYs unless the user is in the `tty` group")
    import fcntl
    import json
    import pty
    import termios

    master, slave = pty.openpty()
    set_winsize(master, 30, 100)
    arg = json.dumps(
        {
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "key": str(sshd.client_key),
            "host_key": sshd.host_pubkey_line,
        }
    )

    def make_controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        [sys.executable, "-c", SHELL_CHILD, arg],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=make_controlling_tty,
        env={**os.environ, "TERM": "xterm", "PS1": "$ "},
    )
    os.close(slave)
    buf = bytearray()
    try:
        # The login shell's first output means raw mode is on and the remote PTY is up.
        os.write(master, b"echo READY-$((40+2))\r")
        assert read_until(master, b"READY-42", 20, buf), buf.decode(errors="replace")
        os.write(master, b"stty size\r")
        assert read_until(master, b"30 100", 10, buf), buf.decode(errors="replace")
        set_winsize(master, 40, 120)  # -> SIGWINCH in the child -> resize_pty
        time.sleep(0.5)
        os.write(master, b"stty size; echo hi; exit 3\r")
        assert read_until(master, b"RESTORED=", 20, buf), buf.decode(errors="replace")
        read_until(master, b"\n", 2, buf)
        code = child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    text = buf.decode(errors="replace")
    assert code == 3, text
    assert re.search(r"(^|\n)hi\r?\n", text), text
    assert "40 120" in text, text
    assert "RESTORED=True" in text, text


# ---------------------------------------------------------------- cp (SFTP)


def _make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o755)
    (root / "secret").write_bytes(os.urandom(1000))
    os.chmod(root / "secret", 0o600)
    (root / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    os.chmod(root / "sub" / "deeper" / "empty", 0o640)
    (root / "sub" / "link").symlink_to("../script.sh")
    os.chmod(root / "sub" / "deeper", 0o750)
    for i, p in enumerate(sorted(root.rglob("*"))):
        if not p.is_symlink():
            os.utime(p, (1_600_000_000 + i, 1_600_000_000 + i))


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out: dict[str, tuple[int, int, bytes]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            content = os.readlink(p).encode()
        elif p.is_file():
            content = p.read_bytes()
        else:
            content = b""
        mtime = 0 if p.is_symlink() else int(st.st_mtime)
        out[str(p.relative_to(root))] = (st.st_mode, mtime, content)
    return out


def test_copy_a_tree_in_and_back_out(conn: SSHConnection, tmp_path: Path) -> None:
    src = tmp_path / "host" / "tree"
    src.mkdir(parents=True)
    _make_tree(src)
    guest_dir = tmp_path / "guest"  # the "guest" is this machine: sshd runs here
    guest_dir.mkdir()
    seen: dict[str, int] = {}

    def progress(path: str, done: int, total: int) -> None:
        assert done <= total
        seen[path] = done

    plan_in = parse_copy_args(str(src), f"default:{guest_dir}")
    conn.copy(plan_in, progress)
    assert _snapshot(guest_dir / "tree") == _snapshot(src)
    assert seen[str(src / "sub" / "big.bin")] == 3 * 1024 * 1024 + 7

    back = tmp_path / "back"
    back.mkdir()
    conn.copy(parse_copy_args(f"default:{guest_dir / 'tree'}", str(back)))
    assert _snapshot(back / "tree") == _snapshot(src)

    # A file to a new name, and out to a new name.
    written = conn.copy_to_guest(src / "script.sh", str(guest_dir / "renamed.sh"))
    assert written == str(guest_dir / "renamed.sh")
    assert (guest_dir / "renamed.sh").stat().st_mode & 0o777 == 0o755
    out = conn.copy_from_guest(str(guest_dir / "renamed.sh"), tmp_path / "out.sh")
    assert out.read_bytes() == (src / "script.sh").read_bytes()


def test_copy_missing_source(conn: SSHConnection, tmp_path: Path) -> None:
    from devenv.errors import InstanceNotFound

    with pytest.raises(InstanceNotFound, match="no such file or directory in instance `t`: /nonexistent/x"):
        conn.copy_from_guest("/nonexistent/x", tmp_path)
    with pytest.raises(InstanceNotFound, match="no such file or directory on the host"):
        conn.copy_to_guest(tmp_path / "nope", str(tmp_path))


def test_copy_into_a_missing_or_forbidden_place_is_a_clear_error(conn: SSHConnection, tmp_path: Path) -> None:
    """Not a traceback or "a bug in devenv" (exit 70): the paths, the reason, a hint and a distinct code."""
    from devenv.errors import ExitCode

    (tmp_path / "f").write_text("x")
    cases = [
        (lambda: conn.copy_to_guest(tmp_path / "f", str(tmp_path / "no" / "dir" / "f")), ExitCode.NOT_FOUND),
        (lambda: conn.copy_from_guest(str(tmp_path / "f"), tmp_path / "no" / "dir" / "f"), ExitCode.NOT_FOUND),
    ]
    if os.geteuid() != 0:  # root writes anywhere; CI runs this as an ordinary user
        cases.append((lambda: conn.copy_to_guest(tmp_path / "f", "/root/f"), ExitCode.PERMISSION))
    for copy, code in cases:
        with pytest.raises(DevenvError) as caught:
            copy()
        assert caught.value.exit_code == code
        assert str(caught.value).startswith(f"cannot copy {tmp_path / 'f'}"), caught.value
        assert caught.value.hint


# ---------------------------------------------------------------- ssh-config for plain ssh


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (ssh)")
@pytest.mark.parametrize("control", [False, True])
def test_plain_ssh_uses_the_rendered_config(sshd: SSHDInfo, tmp_path: Path, control: bool) -> None:
    known = tmp_path / "known hosts"  # a space: the config must quote paths
    known.write_text(known_hosts_line("vm1", sshd.host_pubkey_line))
    entry = SSHConfigEntry(
        name="vm1",
        port=sshd.port,
        user=sshd.user,
        identity_file=sshd.client_key,
        known_hosts_file=known,
        control_path=tmp_path / "ctl" if control else None,
    )
    config = tmp_path / "ssh_config"
    config.write_text(entry.render())
    try:
        ok = subprocess.run(["ssh", "-F", str(config), "devenv-vm1", "echo", "ok"], capture_output=True, timeout=30)
        assert (ok.returncode, ok.stdout) == (0, b"ok\n"), ok.stderr

        other = keygen(tmp_path / "other")
        known.write_text(known_hosts_line("vm1", Path(f"{other}.pub").read_text()))
        if control:  # a live master would skip the host key check; stop it first
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", "devenv-vm1"], capture_output=True, timeout=10)
        bad = subprocess.run(["ssh", "-F", str(config), "devenv-vm1", "echo", "ok"], capture_output=True, timeout=30)
        assert bad.returncode == 255
        assert bad.stdout == b""
        assert b"Host key verification failed" in bad.stderr or b"HOST IDENTIFICATION HAS CHANGED" in bad.stderr
    finally:
        if control:
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", "devenv-vm1"], capture_output=True, timeout=10)


# ---------------------------------------------------------------- tunnels


def _echo_server(sock: socket.socket) -> threading.Thread:
    def serve() -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            with client:
                while data := client.recv(65536):
                    client.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _roundtrip(channel: object, payload: bytes) -> bytes:
    chan = channel  # paramiko.Channel
    chan.sendall(payload)  # type: ignore[attr-defined]
    chan.shutdown_write()  # type: ignore[attr-defined]
    got = bytearray()
    while data := chan.recv(65536):  # type: ignore[attr-defined]
        got += data
    chan.close()  # type: ignore[attr-defined]
    return bytes(got)


def test_tunnel_to_a_guest_unix_socket(conn: SSHConnection, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        _echo_server(server)
        payload = os.urandom(1024 * 1024)
        assert _roundtrip(conn.open_unix_socket(str(path)), payload) == payload
        assert _roundtrip(conn.open_unix_socket(str(path)), b"again") == b"again"


def test_tunnel_to_a_guest_tcp_port(conn: SSHConnection) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _echo_server(server)
        payload = os.urandom(512 * 1024)
        assert _roundtrip(conn.open_tcp(server.getsockname()[1]), payload) == payload


def test_tunnel_refused(conn: SSHConnection, tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    with pytest.raises(ConnectionFailed, match=f"the guest refused a connection to unix socket {missing}: "):
        conn.open_unix_socket(str(missing))
    assert conn.run("true").ok  # the connection survives a refused channel


def test_skip_reason_is_none_here() -> None:
    """On CI the fixture must run, not skip: fail loudly if sshd is missing."""
    if os.environ.get("CI"):
        assert ssh_tools_available() is None
