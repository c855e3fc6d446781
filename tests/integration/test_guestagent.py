"""The guest agent as a real process with pipes, exactly as the host drives it over SSH.

agent.py is stdlib-only, so it runs on the test host under the same python.
Linux only: ports come from /proc/net/tcp and bridge mode uses unix sockets.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv.guestagent import agent, protocol
from tests.bytecode import FRESH_CHECK
from tests.loopback import Listener

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guest agent reads Linux /proc"),
]

AGENT = Path(agent.__file__)


@pytest.fixture
def proc() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(
        [sys.executable, str(AGENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    yield p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)
    for stream in (p.stdin, p.stdout, p.stderr):
        if stream:
            stream.close()


@pytest.fixture
def client(proc: subprocess.Popen[bytes]) -> Iterator[protocol.AgentClient]:
    assert proc.stdout and proc.stdin
    c = protocol.AgentClient(proc.stdout, proc.stdin)
    c.start()
    yield c
    c.close()


def raw(proc: subprocess.Popen[bytes], line: bytes) -> dict[str, Any]:
    """Send one raw line, return the next message (the hello must have been read)."""
    assert proc.stdin and proc.stdout
    proc.stdin.write(line)
    proc.stdin.flush()
    msg: dict[str, Any] = json.loads(proc.stdout.readline())
    return msg


def test_hello_is_first_line_with_protocol_version_and_sha(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout
    hello = json.loads(proc.stdout.readline())
    assert hello["type"] == "hello"
    assert hello["protocol"] == protocol.PROTOCOL_VERSION == 1
    assert hello["version"] == agent.AGENT_VERSION
    assert hello["sha256"] == hashlib.sha256(AGENT.read_bytes()).hexdigest() == protocol.agent_sha256()
    parsed = protocol.parse_hello(json.dumps(hello).encode())
    assert protocol.check_hello(parsed) is None


def test_ping_echoes_id(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout
    proc.stdout.readline()
    msg = raw(proc, b'{"id": "abc", "method": "ping"}\n')
    assert msg["type"] == "response" and msg["id"] == "abc" and msg["result"]["pong"] is True


@pytest.mark.parametrize(
    ("line", "req_id", "code"),
    [
        (b"this is not json\n", None, "bad_json"),
        (b"[1, 2, 3]\n", None, "bad_request"),
        (b'{"id": 7}\n', 7, "bad_request"),
        (b'{"id": 8, "method": "reboot_the_world"}\n', 8, "unknown_method"),
        (b'{"id": 9, "method": "__init__"}\n', 9, "unknown_method"),
        (b'{"id": 10, "method": "ping", "params": [1]}\n', 10, "bad_request"),
        (b'{"id": 11, "method": "exec", "params": {"argv": "ls"}}\n', 11, "bad_params"),
        (b'{"id": 12, "method": "exec", "params": {"argv": ["/no/such/program"]}}\n', 12, "not_found"),
        (b"\xff\xfe\n", None, "bad_json"),
    ],
)
def test_bad_input_gets_an_error_and_the_agent_keeps_serving(
    proc: subprocess.Popen[bytes], line: bytes, req_id: object, code: str
) -> None:
    assert proc.stdout
    proc.stdout.readline()
    msg = raw(proc, line)
    assert msg["type"] == "response"
    assert msg["id"] == req_id
    assert msg["error"]["code"] == code
    assert msg["error"]["message"]
    assert raw(proc, b'{"id": 99, "method": "ping"}\n')["result"]["pong"] is True


def test_an_oversized_line_is_refused_not_buffered_and_the_agent_keeps_serving(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout
    proc.stdout.readline()
    huge = b'{"id": 13, "method": "ping", "pad": "' + b"x" * (agent.MAX_LINE + 10) + b'"}\n'
    msg = raw(proc, huge)
    assert msg["type"] == "response" and msg["error"]["code"] == "too_large", msg
    assert raw(proc, b'{"id": 99, "method": "ping"}\n')["result"]["pong"] is True


def test_info_fields(client: protocol.AgentClient) -> None:
    info = client.call("info")
    assert info["kernel"] == os.uname().release
    assert info["arch"] == os.uname().machine
    assert info["cpus"] == os.cpu_count()
    assert info["memory"]["total"] > 0
    assert info["memory"]["available"] > 0
    assert info["uptime"] > 0
    assert isinstance(info["os"], str) and info["os"]
    assert info["agent"] == {
        "version": agent.AGENT_VERSION,
        "protocol": protocol.PROTOCOL_VERSION,
        "sha256": protocol.agent_sha256(),
    }
    assert "engine" in info  # None on a host without a devenv engine


def _listen(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s


def test_ports_lists_a_listening_socket(client: protocol.AgentClient) -> None:
    with _listen() as s4:
        port4 = s4.getsockname()[1]
        entries = client.call("ports")["ports"]
        assert {"proto": "tcp", "address": "127.0.0.1", "port": port4} in entries
    if socket.has_ipv6 and os.path.exists("/proc/net/tcp6"):
        try:
            s6 = _listen(socket.AF_INET6, "::1")
        except OSError:
            return  # IPv6 disabled on this host
        with s6:
            port6 = s6.getsockname()[1]
            assert {"proto": "tcp6", "address": "::1", "port": port6} in client.call("ports")["ports"]


def test_watch_ports_pushes_added_and_removed(client: protocol.AgentClient) -> None:
    first = client.call("watch_ports", {"interval": 0.1})
    sub = first["subscription"]
    s = _listen()
    port = s.getsockname()[1]
    entry = {"proto": "tcp", "address": "127.0.0.1", "port": port}
    assert entry not in first["ports"]

    def wait_for(key: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = client.next_event(timeout=1)
            if event and entry in event[key]:
                return event
        raise AssertionError(f"no ports event with {entry} in {key}")

    event = wait_for("added")
    assert event["type"] == "event" and event["event"] == "ports" and event["subscription"] == sub
    s.close()
    event = wait_for("removed")
    assert event["added"] == [] or entry not in event["added"]
    assert client.call("unwatch_ports", {"subscription": sub}) == {"stopped": [sub]}
    with pytest.raises(protocol.AgentError) as err:
        client.call("unwatch_ports", {"subscription": sub})
    assert err.value.code == "not_found"


def test_exec_exit_code_outputs_env_cwd_stdin(client: protocol.AgentClient, tmp_path: Path) -> None:
    script = 'import os,sys; d=sys.stdin.read(); print(os.getcwd(), os.environ["DEVENV_T"], d); sys.stderr.write("e\\n"); sys.exit(3)'
    result = client.call(
        "exec",
        {
            "argv": [sys.executable, "-c", script],
            "env": {"DEVENV_T": "v1"},
            "cwd": str(tmp_path),
            "stdin": base64.b64encode(b"in").decode(),
        },
    )
    assert result["exit_code"] == 3
    assert result["signal"] is None
    assert result["timed_out"] is False
    assert base64.b64decode(result["stdout"]) == f"{tmp_path} v1 in\n".encode()
    assert base64.b64decode(result["stderr"]) == b"e\n"


def test_exec_binary_output_and_timeout(client: protocol.AgentClient) -> None:
    result = client.call(
        "exec", {"argv": [sys.executable, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"]}
    )
    assert base64.b64decode(result["stdout"]) == bytes(range(256))
    started = time.monotonic()
    slow = client.call("exec", {"argv": ["sleep", "30"], "timeout": 0.5})
    assert time.monotonic() - started < 10
    assert slow["timed_out"] is True
    assert slow["signal"] == 9 and slow["exit_code"] == 137


def test_requests_are_concurrent(client: protocol.AgentClient) -> None:
    """A long exec must not hold up other requests."""
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(client.call("exec", {"argv": ["sleep", "2"]})))
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert client.call("ping")["pong"] is True
    assert time.monotonic() - started < 1.5
    t.join()
    assert results[0]["exit_code"] == 0


def test_stdin_eof_finishes_requests_already_read(proc: subprocess.Popen[bytes]) -> None:
    """`echo REQUEST | agent.py` works: EOF does not cut off work in flight."""
    out, _ = proc.communicate(
        b'{"id": 1, "method": "exec", "params": {"argv": ["sh", "-c", "sleep 0.3; echo ok"]}}\n', 20
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "hello"
    assert base64.b64decode(lines[1]["result"]["stdout"]) == b"ok\n"
    assert proc.returncode == 0


def test_version_flag_prints_hello() -> None:
    out = subprocess.run([sys.executable, str(AGENT), "--version"], capture_output=True, check=True).stdout
    assert json.loads(out)["protocol"] == protocol.PROTOCOL_VERSION


def test_usage_error() -> None:
    res = subprocess.run([sys.executable, str(AGENT), "frobnicate"], capture_output=True)
    assert res.returncode == 2
    assert b"usage:" in res.stderr


# ------------------------------------------------------------------ bridge


class EchoServer:
    """A unix-socket server that echoes everything and half-closes after the client does."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break  # client shut down its write side: answer the rest, then close ours
                self.received += len(data)
                conn.sendall(data)
            conn.sendall(b"<bye>")
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # unix socket paths must be short: /tmp, not pytest's deep tmp_path
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="dvga-", dir="/tmp"))
    yield d / "echo.sock"
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def test_bridge_copies_1mb_binary_both_ways_with_half_close(sock_path: Path) -> None:
    server = EchoServer(sock_path)
    payload = os.urandom(1024 * 1024)
    p = subprocess.Popen(
        [sys.executable, str(AGENT), "bridge", str(sock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # communicate writes everything, closes stdin (-> SHUT_WR on the socket) and reads to EOF
    out, err = p.communicate(payload, timeout=60)
    server.close()
    assert p.returncode == 0, err
    assert server.received == len(payload)
    assert out == payload + b"<bye>"  # the reply after our half-close still arrived


def test_bridge_reports_a_missing_socket(sock_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(AGENT), "bridge", str(sock_path)], capture_output=True, input=b"", timeout=30
    )
    assert res.returncode == 3
    assert f"cannot connect to {sock_path}".encode() in res.stderr


def test_bridge_command_runs_through_a_shell(sock_path: Path) -> None:
    """The exact command the host sends over SSH, with the agent at another path."""
    server = EchoServer(sock_path)
    command = protocol.bridge_command(str(sock_path)).replace(protocol.GUEST_PATH, str(AGENT))
    command = command.replace(protocol.GUEST_PYTHON, sys.executable, 1)
    out = subprocess.run(["sh", "-c", command], input=b"hello", capture_output=True, timeout=30).stdout
    server.close()
    assert out == b"hello<bye>"


def _as_installed(command: str, lib: Path) -> str:
    """A guest command with the guest's directory, python and sudo swapped for this host's."""
    command = command.replace(protocol.GUEST_DIR, str(lib)).replace("sudo -n sh -c", "sh -c")
    return command.replace(protocol.GUEST_PYTHON + " ", sys.executable + " ")


def test_an_installed_agent_is_compiled_and_launched_from_its_bytecode(tmp_path: Path) -> None:
    """install_command() then GUEST_LAUNCH, as the host runs them over SSH, into a directory of ours.

    The launch imports the file, so Python uses the bytecode install compiled
    (the guest user could not write it at start-up: the directory is root's).
    """
    lib = tmp_path / "lib"
    install = subprocess.run(
        ["sh", "-c", _as_installed(protocol.install_command(), lib)],
        input=protocol.agent_source(),
        capture_output=True,
        timeout=60,
    )
    assert install.returncode == 0, install.stderr
    installed = lib / "guestagent.py"
    assert installed.read_bytes() == protocol.agent_source()
    assert installed.stat().st_mode & 0o777 == 0o755
    fresh = subprocess.run([sys.executable, "-c", FRESH_CHECK, str(installed)], capture_output=True, timeout=30)
    assert fresh.stdout == b"True\n", fresh.stdout
    lib.chmod(0o555)  # as in the guest: the agent may not write next to itself
    try:
        p = subprocess.Popen(
            ["sh", "-c", _as_installed(protocol.serve_command(), lib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert p.stdin and p.stdout
        c = protocol.AgentClient(p.stdout, p.stdin)
        hello = c.start()
        assert (hello.sha256, protocol.check_hello(hello)) == (protocol.agent_sha256(), None)
        assert c.call("ping", {}, timeout=30)["pong"] is True
        c.close()
        assert p.wait(timeout=30) == 0
    finally:
        lib.chmod(0o755)
    assert sorted(q.name for q in lib.iterdir()) == ["__pycache__", "guestagent.py"]


def _spawn_output(client: protocol.AgentClient, proc_id: int, ack: bool) -> tuple[bytes, list[int], int]:
    """A spawn's stdout (payloads of its frames), the size of each, and its exit code; acknowledged when `ack`."""
    out, sizes = b"", []
    while True:
        ev = client.next_event(timeout=20)
        assert ev is not None, f"no event after {len(out)} bytes"
        if ev["event"] == "exit":
            return out, sizes, ev["exit_code"]
        assert "data" not in ev and ev["stream"] == "stdout"
        out += ev["payload"]
        sizes.append(len(ev["payload"]))
        if ack:
            client.notify("ack", {"process": proc_id, "bytes": len(ev["payload"])})


def test_spawn_frames_carry_raw_bytes_and_a_window_holds_output_back_until_acked(client: protocol.AgentClient) -> None:
    assert client.hello is not None and "frames" in client.hello.features
    data = os.urandom(6 * 1024 * 1024)
    window = 1024 * 1024
    script = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    spawned = client.call(
        "spawn", {"argv": [sys.executable, "-c", script], "stdin": True, "frames": True, "window": window}
    )
    proc_id = spawned["process"]
    # stdin as raw payloads, several in flight at once: the agent writes them in the order it read them
    step = 256 * 1024
    replies = [
        client.begin("stdin", {"process": proc_id, "eof": False}, payload=data[i : i + step])
        for i in range(0, len(data), step)
    ]
    assert [r.wait(20)["written"] for r in replies] == [step] * (len(data) // step)
    client.call("stdin", {"process": proc_id, "eof": True})
    # unacknowledged, the agent stops after a window (and at most one read more)
    held, sizes = b"", []
    while (ev := client.next_event(timeout=2)) is not None:
        held += ev["payload"]
        sizes.append(len(ev["payload"]))
    assert window <= len(held) < window + agent.OUTPUT_CHUNK, len(held)
    client.notify("ack", {"process": proc_id, "bytes": len(held)})
    rest, more, code = _spawn_output(client, proc_id, ack=True)
    assert (code, held + rest) == (0, data)
    assert max(sizes + more) <= agent.OUTPUT_CHUNK


def test_a_spawn_without_frames_is_base64_events_as_before(client: protocol.AgentClient) -> None:
    spawned = client.call("spawn", {"argv": ["printf", "a\\0b"]})
    events = [client.next_event(timeout=20) for _ in range(2)]
    assert [e["event"] for e in events if e] == ["output", "exit"]
    assert events[0] is not None and base64.b64decode(events[0]["data"]) == b"a\0b" and "payload" not in events[0]
    assert spawned["process"] == events[0]["subscription"]


def test_a_payload_announced_too_large_is_skipped_and_the_agent_keeps_serving(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout and proc.stdin
    proc.stdout.readline()
    size = agent.MAX_LINE + 10
    proc.stdin.write(b'{"id": 1, "method": "ping", "size": %d}\n' % size + bytes(size))
    proc.stdin.write(b'{"id": 2, "method": "ping"}\n')
    proc.stdin.flush()
    first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
    assert (first["id"], first["error"]["code"]) == (1, "too_large")
    assert (second["id"], second["result"]["pong"]) == (2, True)


def _echo_until_half_close(conn: socket.socket) -> None:
    """Echo, then <bye> after the client's half-close (the handler of a tests.loopback.Listener)."""

    def serve() -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b"<bye>")
            conn.shutdown(socket.SHUT_WR)

    threading.Thread(target=serve, daemon=True).start()


def _through(address: str, port: int, payload: bytes, source: str | None = None) -> bytes:
    with socket.create_connection((address, port), timeout=30, source_address=(source, 0) if source else None) as c:

        def send() -> None:
            try:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
            except OSError:  # a bridge that refused us closed the connection first
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = bytearray()
        try:
            while data := c.recv(1 << 20):
                got += data
        except ConnectionResetError:  # closed unread: the refused and the unjoined end so
            pass
        sender.join(30)
    return bytes(got)


def test_a_loopback_bridge_joins_the_peer_alone_to_a_loopback_port(client: protocol.AgentClient) -> None:
    """What QEMU's rule reaches for a port on the guest's loopback: 4 MiB both ways, half-close kept, peer checked."""
    assert client.hello is not None and "bridge" in client.hello.features
    with Listener(_echo_until_half_close) as server:
        # the peer is this host's loopback here; in a guest it is the hypervisor's address (10.0.2.2)
        r = client.call("bridge_open", {"port": server.port, "host": "127.0.0.1", "peer": "127.0.0.1"})
        assert r["address"] == "127.0.0.1" and r["port"] != server.port
        payload = os.urandom(4 * 1024 * 1024)
        assert _through(r["address"], r["port"], payload) == payload + b"<bye>"
        assert _through(r["address"], r["port"], b"again") == b"again<bye>"  # one bridge, many connections
        assert len(server.accepted) == 2
        # from any other address (a container, another account on its own address): closed, never joined
        assert _through(r["address"], r["port"], b"let me in", source="127.0.0.2") == b""
        assert len(server.accepted) == 2
        assert client.call("bridge_close", {"port": r["port"]}) == {"closed": True}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((r["address"], r["port"]), timeout=5).close()
        assert client.call("bridge_close", {"port": r["port"]}) == {"closed": False}


def test_a_bridge_to_a_port_nobody_listens_on_closes_the_connection(client: protocol.AgentClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = int(s.getsockname()[1])
    r = client.call("bridge_open", {"port": dead, "host": "127.0.0.1", "peer": "127.0.0.1"})
    assert _through(r["address"], r["port"], b"anyone?") == b""
    assert client.call("ping")["pong"] is True  # and the agent serves on


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"port": 0, "peer": "127.0.0.1"}, "port must be a TCP port number"),
        ({"port": True, "peer": "127.0.0.1"}, "port must be a TCP port number"),
        ({"port": 80, "host": "0.0.0.0", "peer": "127.0.0.1"}, "loopback ports only"),
        ({"port": 80, "host": "10.0.0.1", "peer": "127.0.0.1"}, "loopback ports only"),
        ({"port": 80}, "peer must be"),
        ({"port": 80, "peer": "not an address"}, "no listener facing not an address"),
    ],
)
def test_a_bridge_asked_for_wrongly_is_refused(client: protocol.AgentClient, params: dict[str, Any], says: str) -> None:
    with pytest.raises(protocol.AgentError, match=says):
        client.call("bridge_open", params)


# ---------------------------------------------------------------- zygote (systemd's Accept=no socket)


@contextlib.contextmanager
def zygote(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """`agent.py zygote` handed a listening unix socket as systemd does: fd 3, LISTEN_PID, LISTEN_FDS.

    The agent file is a copy in tmp_path (so a test may replace it), and the one watched file is
    tmp_path/environment in place of /etc/environment and /etc/group.
    """
    copy = tmp_path / "guestagent.py"
    copy.write_bytes(AGENT.read_bytes())
    env_file = tmp_path / "environment"
    env_file.write_text('EDITOR="vim"\n')
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import guestagent; "
        f"sys.exit(guestagent.zygote(watches=({str(env_file)!r},)))"
    )
    # LISTEN_PID names the process that execs python: the shell's own pid ($$), as systemd sets it
    script = f'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=agent exec "$0" -I -S -c {shlex.quote(code)}'
    p = subprocess.Popen(
        ["sh", "-c", script, sys.executable],
        preexec_fn=lambda: os.dup2(listener.fileno(), 3),  # the socket at fd 3, as systemd passes it
        pass_fds=(3,),
        stderr=subprocess.PIPE,
    )
    try:  # the listener stays open here too, as systemd keeps its socket whether the zygote runs or not
        yield p, path, env_file
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        assert p.stderr
        p.stderr.close()
        listener.close()


def connect(path: Path) -> tuple[socket.socket, protocol.AgentClient]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(path))
    c = protocol.AgentClient(s.makefile("rb"), s.makefile("wb"))
    return s, c


def hang_up(s: socket.socket, c: protocol.AgentClient) -> None:
    """The host going away: the socket closed, whatever file objects still refer to it."""
    c.close()
    s.shutdown(socket.SHUT_RDWR)
    s.close()


def agent_of(c: protocol.AgentClient) -> tuple[int, int, str]:
    """The pid of the agent serving `c`, the session it leads, and what its commands see of LISTEN_*."""
    script = 'echo $PPID $(cut -d" " -f6 /proc/$PPID/stat) "[$LISTEN_FDS$LISTEN_PID]"'
    r = c.call("exec", {"argv": ["sh", "-c", script]}, 30)
    pid, sid, listen = base64.b64decode(r["stdout"]).decode().split()
    return int(pid), int(sid), listen


def test_the_zygote_forks_one_agent_per_connection_each_in_its_own_session(tmp_path: Path) -> None:
    with zygote(tmp_path) as (p, path, _):
        s1, c1 = connect(path)
        s2, c2 = connect(path)
        h1, h2 = c1.start(), c2.start()
        assert h1.sha256 == h2.sha256 == hashlib.sha256((tmp_path / "guestagent.py").read_bytes()).hexdigest()
        (pid1, sid1, listen), (pid2, sid2, _) = agent_of(c1), agent_of(c2)
        assert pid1 != pid2 and p.pid not in (pid1, pid2), "one forked agent per connection, not the zygote itself"
        assert (sid1, sid2) == (pid1, pid2), "each agent leads a session of its own, as a service's process did"
        assert listen == "[]", "systemd's LISTEN_* are not handed on to the commands"
        hang_up(s1, c1)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid1}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{pid1}"), "the agent ends with its connection, and is reaped"
        assert agent_of(c2)[0] == pid2, "one connection ending leaves the others served"
        hang_up(s2, c2)
        assert p.poll() is None, "the zygote serves on"


def test_the_zygote_hands_a_connection_to_a_fresh_start_once_its_agent_or_environment_changed(
    tmp_path: Path,
) -> None:
    for change in ("agent", "environment"):
        sub = tmp_path / change
        sub.mkdir()
        with zygote(sub) as (p, path, env_file):
            s, c = connect(path)
            assert c.start() is not None
            hang_up(s, c)
            time.sleep(0.2)
            if change == "agent":  # as install_command does it: a new file moved over the old one
                new = sub / "guestagent.py.new"
                new.write_bytes((sub / "guestagent.py").read_bytes() + b"\n# a newer agent\n")
                new.replace(sub / "guestagent.py")
            else:
                env_file.write_text('EDITOR="nano"\n')
            waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiting.connect(str(path))
            assert p.wait(timeout=30) == 0, "a stale zygote stops, so systemd starts it afresh"
            waiting.settimeout(0.5)
            with pytest.raises(TimeoutError):
                waiting.recv(1)  # not accepted: the connection still waits on the socket for the fresh one
            waiting.close()


def test_the_zygote_refuses_to_run_without_a_socket_from_systemd() -> None:
    r = subprocess.run(
        [sys.executable, str(AGENT), "zygote"],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")},
        timeout=30,
        check=False,
    )
    assert r.returncode == 2
    assert b"no socket from systemd" in r.stderr
