"""The host agent as a real detached process against a real sshd, with the real guest agent behind it.

The "guest" is this host: a local OpenSSH server (sshd_fixture) with the
stdlib guest agent run over it, exactly as in a VM. So the engine-socket
forward, port forwards, fd-passing exec, reconnects and the VM watch run
through the same code paths as with QEMU, in seconds instead of minutes.

Because guest and host are the same machine, the agent would see its own
127.0.0.1 listeners as guest ports and forward them in a loop; here it binds
127.0.0.2 (--bind-host), which the policy ignores as a guest address, and the
guest-side servers listen on ::1 (dialed as ::1), which also exercises the
IPv6-loopback path. A test socket on 127.0.0.2 is the "host port taken" case.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv import hostagent, paths, pidutil
from devenv.errors import ConnectionFailed
from devenv.guestagent import agent as guest_agent
from devenv.hostagent import client, wire
from devenv.hostagent.events import read_events
from tests.integration.sshd_fixture import SSHDServer, _descendants, ssh_tools_available
from tests.launcher_build import built_launcher

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guest agent reads Linux /proc"),
]

AGENT = Path(guest_agent.__file__)
BIND = "127.0.0.2"  # the agent's side; the "guest" (this host) sees it as neither wildcard nor loopback
SUDO_SHIM = '#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
    """sshd whose sessions find a `sudo` shim first on PATH (root has no sudo on CI hosts)."""
    reason = ssh_tools_available()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("sshd")
    shim = work / "bin"
    shim.mkdir()
    (shim / "sudo").write_text(SUDO_SHIM)
    (shim / "sudo").chmod(0o755)
    srv = SSHDServer(work / "srv", extra_config=f"SetEnv PATH={shim}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class EngineServer:
    """A stand-in for dockerd's socket: greets first, then answers the sha256 of all it read once EOF arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            c.settimeout(30)
            c.sendall(b"HELLO\n")
            h = hashlib.sha256()
            n = 0
            while data := c.recv(65536):
                h.update(data)
                n += len(data)
            c.sendall(f"{n} {h.hexdigest()}\n".encode())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@dataclass
class Env:
    inst: Path
    server: SSHDServer
    engine: EngineServer
    vm: subprocess.Popen[bytes]
    extra: list[str]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs = read_events(self.inst / "events.jsonl")
        return [e for e in evs if kind is None or e["event"] == kind]

    def state(self) -> dict[str, Any]:
        return hostagent.state(self.inst)

    def launch(self) -> dict[str, Any]:
        return hostagent.launch(self.inst, user=self.server.user, wait=30, extra_args=self.extra)


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_instance(root: Path, srv: SSHDServer, toml: str = "") -> Path:
    inst = root / "inst"
    (inst / "ssh").mkdir(parents=True)
    os.chmod(inst, 0o700)
    shutil.copy(srv.client_key, inst / "ssh" / "id_ed25519")
    os.chmod(inst / "ssh" / "id_ed25519", 0o600)
    (inst / "ssh" / "ssh_host_ed25519_key.pub").write_text(srv.info.host_pubkey_line + "\n")
    (inst / "ssh.port").write_text(f"{srv.port}\n")
    (inst / "devenv.toml").write_text('name = "t"\n' + toml)
    return inst


@pytest.fixture
def make_env(server: SSHDServer, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(toml: str = "", launch: bool = True) -> Env:
        inst = make_instance(tmp_path, server, toml)
        engine = EngineServer(tmp_path / "engine.sock")
        vm = subprocess.Popen(["sleep", "600"])  # stands in for QEMU: the agent exits with it
        (inst / "qemu.pid").write_text(f"{vm.pid}\n")
        extra = [  # what the VM backend passes for a driver (backends/vm/agent.py), and the test's own
            "--watch-pid-file",
            str(inst / "qemu.pid"),
            "--console",
            str(inst / "serial.log"),
            "--agent-command",
            f"{sys.executable} {AGENT}",
            "--engine-socket",
            str(engine.path),
            "--ports-interval",
            "0.2",
            "--bind-host",
            BIND,
        ]
        env = Env(inst, server, engine, vm, extra)
        made.append(env)
        if launch:
            st = env.launch()
            assert st["state"] == "connected", (st, hostagent.log_tail(inst))
        return env

    yield make
    for env in made:
        hostagent.shutdown(env.inst)
        env.vm.kill()
        env.vm.wait()
        env.engine.close()
        if server.proc is None:
            server.start()


def test_start_replaces_an_agent_left_by_another_devenv_build(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade while the VM ran: the old agent would ignore what the new CLI asks; launch replaces it, once."""
    env = make_env()
    first = env.state()
    assert first["code"] == hostagent.code_version()
    assert env.launch()["pid"] == first["pid"]  # the same build: kept, forwards and mounts untouched
    monkeypatch.setattr(hostagent, "code_version", lambda root=None: "another-build")
    st = env.launch()
    assert st["state"] == "connected" and st["pid"] != first["pid"]
    replaced = [e for e in env.events() if e["event"] == "host-agent-replaced"]
    assert len(replaced) == 1 and replaced[0]["reason"] == "started by another devenv build"


def test_launch_connects_and_writes_pid_socket_and_events(make_env: Callable[..., Env]) -> None:
    env = make_env()
    st = env.state()
    assert st["alive"] and st["state"] == "connected" and st["degraded"] is False
    assert hostagent.is_running(env.inst)
    # the guest's memory only when asked (status), not on every poll of the agent (start's waits)
    assert "guest_memory" not in st
    memory = hostagent.state(env.inst, guest_memory=True)["guest_memory"]
    assert memory["total"] > memory["available"] > 0, memory  # from the real guest agent's /proc/meminfo
    pid = int((env.inst / "hostagent.pid").read_text())
    assert st["pid"] == pid and pid != os.getpid()
    sock = hostagent.control_path(env.inst)
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE((env.inst / "sock").stat().st_mode) == 0o700
    kinds = [e["event"] for e in env.events()]
    assert kinds.index("agent-started") < kinds.index("connected")
    # launch is idempotent: a second call finds the running agent, starts no other
    assert env.launch()["pid"] == pid


def test_engine_socket_keeps_half_close_and_data_intact(make_env: Callable[..., Env]) -> None:
    env = make_env()
    payload = os.urandom(8 * 1024 * 1024 + 17)
    assert hostagent.docker_env(env.inst) == {"DOCKER_HOST": f"unix://{env.inst / 'sock' / 'docker.sock'}"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(env.inst / "sock" / "docker.sock"))
        assert s.recv(6) == b"HELLO\n"  # the server speaks first, as attach does
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the answer must still come back
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


def test_engine_socket_many_parallel_connections(make_env: Callable[..., Env]) -> None:
    env = make_env()
    results: list[bytes] = []

    def one(i: int) -> None:
        data = f"conn{i}".encode() * 1000
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(env.inst / "sock" / "docker.sock"))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
            assert buf == b"HELLO\n" + f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
            results.append(buf)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20


def _echo_server(host: str, port: int) -> tuple[socket.socket, threading.Event]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                c.settimeout(10)
                while data := c.recv(65536):
                    c.sendall(b"echo:" + data)

    threading.Thread(target=loop, daemon=True).start()
    return srv, stop


def _ask(port: int, data: bytes) -> bytes:
    with socket.create_connection((BIND, port), timeout=10) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out


def _free_port_both() -> int:
    """A port free on 127.0.0.1, 127.0.0.2 and ::1, outside Linux's ephemeral range.

    Ephemeral ports get reused as source ports of the agent's own connections,
    which made a port picked by bind(0) occasionally busy a moment later.
    """
    for _ in range(200):
        p = random.randint(20000, 30000)
        try:
            for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, BIND), (socket.AF_INET6, "::1")):
                with socket.socket(fam) as s:
                    s.bind((host, p))
        except OSError:
            continue
        return p
    raise RuntimeError("no port free on 127.0.0.1, 127.0.0.2 and ::1")


def test_guest_port_is_forwarded_then_removed(make_env: Callable[..., Env]) -> None:
    env = make_env()
    port = _free_port_both()
    srv, stop = _echo_server("::1", port)
    try:
        wait_for(lambda: any(f["host_port"] == port for f in env.state()["forwards"]), 5, "forward-added")
        row = next(f for f in env.state()["forwards"] if f["host_port"] == port)
        assert row == {
            "host": f"{BIND}:{port}",
            "host_port": port,
            "guest_port": port,
            "source": "auto",
            "status": "active",
            "via": "ssh",  # no QEMU here (and ::1 is loopback-only anyway)
        }
        assert _ask(port, b"ping") == b"echo:ping"
    finally:
        stop.set()
        srv.close()
    started = time.monotonic()
    wait_for(lambda: all(f["host_port"] != port for f in env.state()["forwards"]), 5, "forward-removed")
    assert time.monotonic() - started < 2.5
    with pytest.raises(OSError), socket.create_connection((BIND, port), timeout=2):
        pass
    kinds = [(e["event"], e.get("host_port")) for e in env.events()]
    assert ("forward-added", port) in kinds and ("forward-removed", port) in kinds


def test_host_port_taken_is_an_event_not_a_crash(make_env: Callable[..., Env]) -> None:
    env = make_env()
    port = _free_port_both()
    taken = socket.socket()
    taken.bind((BIND, port))  # something else on the host holds the port
    taken.listen(1)
    srv, stop = _echo_server("::1", port)
    try:
        fails = wait_for(lambda: [e for e in env.events("forward-failed") if e["host_port"] == port], 5, "failure")
        assert "not available" in fails[0]["reason"] and "in use" in fails[0]["reason"].lower()
        row = next(f for f in env.state()["forwards"] if f["host_port"] == port)
        assert row["status"] == "failed"
        assert env.state()["state"] == "connected"
    finally:
        stop.set()
        srv.close()
        taken.close()


def test_explicit_forward_from_config(make_env: Callable[..., Env]) -> None:
    guest_port = _free_port_both()
    host_port = _free_port_both()
    while host_port == guest_port:
        host_port = _free_port_both()
    env = make_env(f"\n[[ports]]\nguest = {guest_port}\nhost = {host_port}\n")
    row = next(f for f in env.state()["forwards"] if f["host_port"] == host_port)
    assert row["source"] == "config" and row["guest_port"] == guest_port and row["status"] == "active"
    # Nothing listens in the guest yet: the host listener exists, the connection is closed at once.
    with contextlib.suppress(ConnectionResetError):  # closed with our byte unread: a reset, also fine
        assert _ask(host_port, b"x") == b""
    srv, stop = _echo_server("127.0.0.1", guest_port)  # config forwards dial 127.0.0.1 in the guest
    try:
        assert _ask(host_port, b"hi") == b"echo:hi"
    finally:
        stop.set()
        srv.close()


def test_a_forward_asked_for_at_run_time_dials_the_address_given(make_env: Callable[..., Env]) -> None:
    """`devenv up`'s forwardPorts: host port to an address the guest reaches (a dev container's), not its loopback."""
    env = make_env()
    guest_port, host_port = _free_port_both(), _free_port_both()
    while host_port == guest_port:
        host_port = _free_port_both()
    srv, stop = _echo_server("::1", guest_port)  # the "container": an address other than the 127.0.0.1 default
    try:
        row = hostagent.add_forward(env.inst, host_port, "::1", guest_port, "devcontainer")
        assert (row["host"], row["guest_port"], row["source"], row["status"]) == (
            f"{BIND}:{host_port}", guest_port, "devcontainer", "active",
        )  # fmt: skip
        assert _ask(host_port, b"up") == b"echo:up"
        assert row in env.state()["forwards"]
        taken = hostagent.add_forward(env.inst, host_port, "::1", guest_port, "devcontainer")
        assert taken["status"] == "active"  # asked again (a second `up`): the same forward, kept
        with pytest.raises(ConnectionFailed, match="forward needs host_port, guest_port"):
            hostagent.add_forward(env.inst, 0, "::1", guest_port, "devcontainer")
    finally:
        stop.set()
        srv.close()


def _exec(
    env: Env,
    argv: list[str],
    stdin: bytes | None = None,
    cwd: str | None = None,
    stream: bool | None = None,
    workdir: str | None = None,
) -> tuple[int | None, bytes, bytes]:
    """client.exec with real files as the three fds, as a shell would pass them."""
    d = env.inst.parent
    (d / "in").write_bytes(stdin or b"")
    with open(d / "in", "rb") as i, open(d / "out", "wb") as o, open(d / "err", "wb") as e:
        code = client.exec(
            env.inst,
            argv,
            {"DEVENV_T": "v a l"},
            cwd,
            workdir=workdir,
            stdin_fd=i.fileno(),
            stdout_fd=o.fileno(),
            stderr_fd=e.fileno(),
            stream=stream,
        )
    return code, (d / "out").read_bytes(), (d / "err").read_bytes()


def _check_exec(env: Env, stream: bool | None) -> None:
    assert _exec(env, ["sh", "-c", 'echo "$DEVENV_T"; echo oops >&2; exit 7'], stream=stream) == (
        7,
        b"v a l\n",
        b"oops\n",
    )
    blob = os.urandom(3 * 1024 * 1024)
    code, out, _ = _exec(env, ["sha256sum"], stdin=blob, stream=stream)
    assert code == 0 and out.split()[0].decode() == hashlib.sha256(blob).hexdigest()
    code, out, err = _exec(env, ["no-such-command-xyz"], stream=stream)
    assert code == 127 and out == b"" and b"no-such-command-xyz" in err
    code, out, _ = _exec(env, ["sh", "-c", "head -c 5000000 /dev/zero"], stream=stream)
    assert code == 0 and out == b"\0" * 5000000


@pytest.mark.parametrize("stream", [None, True], ids=["fd-passing", "stream-mode"])
def test_exec_streams_exit_code_env_and_stdin(make_env: Callable[..., Env], stream: bool | None) -> None:
    _check_exec(make_env(), stream)


def test_tcp_control_channel_needs_the_token(make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows' control channel (loopback TCP + a 0600 token file), forced here with DEVENV_CONTROL=tcp."""
    monkeypatch.setenv("DEVENV_CONTROL", "tcp")
    env = make_env()
    token_file = env.inst / "hostagent.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    info = json.loads(token_file.read_text())
    assert len(info["token"]) == 64 and not hostagent.control_path(env.inst).exists()
    st = env.state()
    assert st["state"] == "connected" and st["control"].startswith(f"tcp://127.0.0.1:{info['port']} ")
    _check_exec(env, None)  # the client finds the token file and streams: no fd passing over TCP
    marker = env.inst.parent / "ran"
    for token in ({}, {"token": "0" * 64}, {"token": info["token"][:-1]}):
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=5) as s:
            msg = {"op": "exec", "argv": ["touch", str(marker)], "stream": True, **token}
            s.sendall(json.dumps(msg).encode() + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        assert reply == {"final": True, "error": "wrong control token", "code": 77}
    assert not marker.exists()
    assert _exec(env, ["touch", str(marker)])[0] == 0 and marker.exists()
    assert hostagent.shutdown(env.inst) is True
    assert not token_file.exists() and hostagent.state(env.inst)["alive"] is False


def test_exec_maps_cwd_under_a_mount_only(make_env: Callable[..., Env], tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    env = make_env(f'\n[[mounts]]\nlocation = "{proj}"\nmount_point = "{tmp_path / "gproj"}"\nwritable = true\n')
    wait_for(lambda: env.state()["mounts"] and env.state()["mounts"][0]["state"] in ("mounted", "failed"), 30, "mount")
    if env.state()["mounts"][0]["state"] == "mounted":
        assert _exec(env, ["pwd"], cwd=str(proj / "sub"))[1] == f"{tmp_path / 'gproj' / 'sub'}\n".encode()
    code, out, _ = _exec(env, ["pwd"], cwd="/nonexistent-on-purpose")
    assert code == 0 and out.strip() == os.path.expanduser("~").encode()  # not under a mount: the guest home
    guest_only = tmp_path / "guest-only"
    guest_only.mkdir()
    assert _exec(env, ["pwd"], cwd=str(proj / "sub"), workdir=str(guest_only)) == (0, f"{guest_only}\n".encode(), b"")
    assert _exec(env, ["pwd"], cwd=str(proj), workdir="/etc/hostname")[:2] == (1, b"")  # a file, not a folder
    code, out, err = _exec(env, ["pwd"], cwd=str(proj), workdir="/nonexistent-on-purpose")
    assert (code, out, err) == (1, b"", b"devenv: /nonexistent-on-purpose: No such file or directory\n")  # as cd


def _sudo_ok() -> bool:
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(
    shutil.which("sshfs") is None or not os.access("/dev/fuse", os.R_OK | os.W_OK) or not _sudo_ok(),
    reason="this host stands in for the guest here: it needs sshfs, a usable /dev/fuse and passwordless sudo "
    "as the real guest has; tests/e2e covers sshfs against a real guest",
)
def test_reverse_sshfs_mount_both_ways_and_read_only(make_env: Callable[..., Env], tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "from-host.txt").write_text("host says hi")
    (ro / "locked.txt").write_text("read me")
    g_rw, g_ro = tmp_path / "g-rw", tmp_path / "g-ro"
    env = make_env(
        f'\n[[mounts]]\nlocation = "{rw}"\nmount_point = "{g_rw}"\nwritable = true\n'
        f'\n[[mounts]]\nlocation = "{ro}"\nmount_point = "{g_ro}"\n'
    )
    try:
        mounts = wait_for(
            lambda: (m := env.state()["mounts"]) and len(m) == 2 and all(r["state"] == "mounted" for r in m) and m,
            30,
            f"both mounts (log: {hostagent.log_tail(env.inst)})",
        )
        assert {(m["guest"], m["type"], m["writable"]) for m in mounts} == {
            (str(g_rw), "sshfs", True),
            (str(g_ro), "sshfs", False),
        }
        assert _exec(env, ["cat", str(g_rw / "from-host.txt")])[1] == b"host says hi"
        assert _exec(env, ["sh", "-c", f"echo guest wrote > {g_rw}/from-guest.txt"])[0] == 0
        assert (rw / "from-guest.txt").read_text() == "guest wrote\n"
        assert _exec(env, ["cat", str(g_ro / "locked.txt")])[1] == b"read me"
        code, _, err = _exec(env, ["sh", "-c", f"echo x > {g_ro}/nope.txt"])
        assert code != 0 and b"Read-only" in err
        assert not (ro / "nope.txt").exists()
        assert [e["guest"] for e in env.events("mount-added")] == sorted(
            [str(g_ro), str(g_rw)], key=[str(g_rw), str(g_ro)].index
        )
    finally:
        hostagent.shutdown(env.inst)
        for g in (g_rw, g_ro):
            subprocess.run(["umount", "-l", str(g)], capture_output=True)


@pytest.mark.parametrize("control", ["unix", "tcp"])
def test_exec_forwards_sigint_to_the_remote_command(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch, control: str
) -> None:
    monkeypatch.setenv("DEVENV_CONTROL", control)
    env = make_env()
    marker = env.inst.parent / "trapped"
    script = f"trap 'echo INT > {marker}; exit 42' INT; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devenv.hostagent.client", str(env.inst), "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 42
    assert marker.read_text() == "INT\n"


def test_stream_mode_sigint_while_stdin_is_left_unread(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 MiB of stdin the command never reads must not hold up ^C (the stdin window keeps the agent reading)."""
    monkeypatch.setenv("DEVENV_CONTROL", "tcp")
    env = make_env()
    big = env.inst.parent / "big-stdin"
    with open(big, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    script = "trap 'exit 42' INT; echo ready; while :; do sleep 0.1; done"
    with open(big, "rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devenv.hostagent.client", str(env.inst), "--", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stdin=stdin,
        )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(1.0)  # let the pipe to the command fill up
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 42
    assert _exec(env, ["echo", "still fine"])[:2] == (0, b"still fine\n")


def test_a_stale_token_file_is_never_used(tmp_path: Path) -> None:
    """A killed agent's token file names a port anyone may hold now: the client sends nothing there."""
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(1)
        dead = subprocess.Popen(["true"])
        dead.wait()
        info = {"port": trap.getsockname()[1], "token": "a" * 64, "pid": dead.pid}
        (tmp_path / "hostagent.token").write_text(json.dumps(info))
        assert client.connect(tmp_path, timeout=1.0) is None  # first: a regression fails here, never hangs in exec
        assert client.exec(tmp_path, ["true"]) is None
        trap.settimeout(0.2)
        with pytest.raises(TimeoutError):
            trap.accept()


def test_exec_without_an_agent_returns_none(tmp_path: Path) -> None:
    assert client.exec(tmp_path, ["true"]) is None
    assert hostagent.state(tmp_path)["alive"] is False


def test_reconnects_after_sessions_are_killed_and_forwards_come_back(make_env: Callable[..., Env]) -> None:
    env = make_env()
    port = _free_port_both()
    srv, stop = _echo_server("::1", port)
    try:
        wait_for(lambda: any(f["host_port"] == port for f in env.state()["forwards"]), 5, "forward")
        env.server.kill_sessions()  # the transport drops; sshd keeps listening
        wait_for(lambda: env.events("disconnected"), 10, "disconnected event")
        wait_for(
            lambda: env.state()["state"] == "connected" and env.events("connected")[-1]["reconnect"], 30, "reconnect"
        )
        assert _ask(port, b"again") == b"echo:again"
        assert _exec(env, ["echo", "ok"])[:2] == (0, b"ok\n")
    finally:
        stop.set()
        srv.close()


def test_status_is_degraded_while_sshd_is_down(make_env: Callable[..., Env]) -> None:
    env = make_env()
    assert env.server.proc is not None
    sessions = _descendants(env.server.proc.pid)
    env.server.stop()  # the listener goes; its per-connection processes live on unless killed
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        st = wait_for(lambda: (s := env.state())["state"] == "reconnecting" and s, 10, "reconnecting")
        assert st["degraded"] is True and st["alive"] is True
        time.sleep(1.5)  # several failed attempts: still alive, still degraded, never crashed
        assert env.state()["state"] == "reconnecting" and env.state()["last_error"]
    finally:
        env.server.start()
    wait_for(lambda: env.state()["state"] == "connected", 30, "reconnected")
    assert env.state()["degraded"] is False


def test_exits_when_the_vm_process_is_gone(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.vm.kill()
    env.vm.wait()
    wait_for(lambda: not hostagent.is_running(env.inst), 10, "agent exit")
    assert not (env.inst / "hostagent.pid").exists()
    assert not hostagent.control_path(env.inst).exists()
    assert not (env.inst / "sock" / "docker.sock").exists()
    assert env.events("agent-exit")[-1]["reason"] == "the VM's process is gone"
    assert env.events("agent-stopped")


def test_shutdown_while_waiting_for_the_boot_is_prompt(make_env: Callable[..., Env]) -> None:
    """`devenv stop` just after a start: the agent waits for the console's line and must not dial after all.

    It used to leave that wait and log in anyway, into a guest whose sshd was
    not up, until SIGTERM and then SIGKILL each waited 5 s: 10 s of every such stop.
    """
    env = make_env(launch=False)
    (env.inst / "serial.log").write_text("[    0.000000] Linux version 6.1.0\n")  # booting, no readiness line
    env.server.stop()  # a login would hang on the retries, as on a guest still booting
    st = hostagent.launch(env.inst, user=env.server.user, wait=1.0, extra_args=env.extra)
    assert st["alive"] and st["state"] != "connected"
    started = time.monotonic()
    assert hostagent.shutdown(env.inst) is True
    took = time.monotonic() - started
    assert took < 3.0, f"shutdown took {took:.1f} s"
    assert env.events("agent-stopped") and not env.events("connected")


def _send_junk(sock: socket.socket, junk: bytes) -> bytes:
    """Send `junk` to a control channel, end our side, and return all it answered (the socket is closed)."""
    with sock:
        with contextlib.suppress(OSError):  # the agent may refuse an oversized line before it is all sent
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
        got = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                got += chunk
    return got


def test_shutdown_and_bad_clients(make_env: Callable[..., Env]) -> None:
    env = make_env()
    path = str(hostagent.control_path(env.inst))
    # a client that sends half a request and then nothing holds its own connection, nobody else's
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(path)
    slow.sendall(b'{"op": "sta')
    rss_before = pidutil.rss_bytes(env.state()["pid"])
    junk_and_answer = [
        (b"not json\n", b"bad request"),
        (b"[1,2]\n", b"must be a JSON object"),
        (b'{"op": "state"', b"bad request"),  # cut short: the connection ends inside it
        (b"\xff\xfe\n", b"bad request"),  # not UTF-8
        (b'{"op":"' + b"x" * (2 * wire.MAX_LINE) + b'"}\n', b"too long"),  # over 1 MiB: refused, not buffered
        (b'{"op":"nope","version":99}\n', b"unknown op 'nope'"),  # a newer client's op
        (b'{"op":"exec","argv":["true"]}\n', b"3 file descriptors"),
        (b"", b""),
    ]
    for junk, answer in junk_and_answer:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(path)
        got = _send_junk(sock, junk)
        assert answer in got, (junk[:40], got)
        if answer:  # one final line with an error and its code
            reply = json.loads(got)
            assert reply["final"] is True and reply["code"] in (2, 255) and reply["error"], reply
        assert client.request(env.inst, {"op": "ping"}) == {"pong": True, "final": True}  # still serving
    slow.close()
    rss_after = pidutil.rss_bytes(env.state()["pid"])
    assert rss_before and rss_after and rss_after - rss_before < 16 * 1024**2, (rss_before, rss_after)
    reply = client.request(env.inst, {"op": "exec", "argv": ["true"]})
    assert reply is not None and "3 file descriptors" in reply["error"]
    assert env.state()["state"] == "connected"
    assert hostagent.shutdown(env.inst) is True
    assert not hostagent.is_running(env.inst)
    assert hostagent.state(env.inst)["alive"] is False
    assert env.events("agent-stopped")
    # and it stopped cleanly: the log's last lines are events, no traceback (paramiko's channel file once
    # flushed itself again at interpreter exit and logged "Exception ignored ... I/O operation on closed file")
    log_text = (env.inst / paths.HOSTAGENT_LOG).read_text()
    assert "Traceback" not in log_text and "Exception ignored" not in log_text, log_text[-2000:]


def test_the_tcp_control_channel_answers_junk_and_keeps_serving(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows' control channel: the same junk as the unix socket's, before and after the token check."""
    monkeypatch.setenv("DEVENV_CONTROL", "tcp")
    env = make_env()
    info = json.loads((env.inst / "hostagent.token").read_text())
    token = info["token"]
    rss_before = pidutil.rss_bytes(env.state()["pid"])
    slow = socket.create_connection(("127.0.0.1", info["port"]), timeout=5)
    slow.sendall(b'{"op": "sta')  # half a request, then nothing: it holds only its own connection
    junk_and_answer = [
        (b"not json\n", b"bad request"),
        (b"[1,2]\n", b"must be a JSON object"),
        (b'{"op": "state"', b"bad request"),
        (b"\xff\xfe\n", b"bad request"),
        (b'{"op":"' + b"x" * (2 * wire.MAX_LINE) + b'"}\n', b"too long"),
        (b'{"op":"state"}\n', b"wrong control token"),  # well formed, no token: nothing served
        (b'{"op":"state","token":["' + token.encode() + b'"]}\n', b"wrong control token"),
        (json.dumps({"op": "nope", "version": 99, "token": token}).encode() + b"\n", b"unknown op 'nope'"),
    ]
    for junk, answer in junk_and_answer:
        got = _send_junk(socket.create_connection(("127.0.0.1", info["port"]), timeout=5), junk)
        assert answer in got, (junk[:40], got)
        reply = json.loads(got)
        assert reply["final"] is True and reply["code"] in (2, 77) and reply["error"], reply
        assert client.request(env.inst, {"op": "ping"}) == {"pong": True, "final": True}  # still serving
    slow.close()
    rss_after = pidutil.rss_bytes(env.state()["pid"])
    assert rss_before and rss_after and rss_after - rss_before < 16 * 1024**2, (rss_before, rss_after)
    assert token not in (env.inst / "hostagent.log").read_text()  # refusals never log the secret
    assert hostagent.shutdown(env.inst) is True


def test_docker_context_is_created_and_updated_never_selected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this host")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    inst = tmp_path / "inst"
    inst.mkdir()
    assert hostagent.ensure_docker_context("ctx1", inst) == "devenv-ctx1"
    assert hostagent.ensure_docker_context("ctx1", inst) == "devenv-ctx1"  # update path
    out = subprocess.run(["docker", "context", "inspect", "devenv-ctx1"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)[0]["Endpoints"]["docker"]["Host"] == f"unix://{inst / 'sock' / 'docker.sock'}"
    current = subprocess.run(["docker", "context", "show"], capture_output=True, text=True, check=True).stdout.strip()
    assert current == "default"
    assert hostagent.remove_docker_context("ctx1")


def test_long_argv_passes_whole_with_the_fds(make_env: Callable[..., Env]) -> None:
    """A request line longer than one sendmsg can carry still arrives whole (the rest follows the fds)."""
    env = make_env()
    args = [c * 100_000 for c in "abcd"]
    code, out, err = _exec(
        env, ["sh", "-c", 'for a in "$@"; do printf "%s\\n" "${#a}${a%"${a#?}"}"; done', "sh", *args]
    )
    assert (code, err) == (0, b"")
    assert out == b"100000a\n100000b\n100000c\n100000d\n"


WARM_PATH_SPARE = {"socket", "selectors", "json", "re", "enum", "threading", "signal", "typing", "pathlib"}


def test_warm_exec_imports_none_of_the_costly_stdlib(make_env: Callable[..., Env]) -> None:
    """The fd-passing exec client runs without socket.py, json, re, enum, threading or signal (~40 ms together)."""
    env = make_env()
    code = "import sys\nfrom devenv.hostagent.client import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, str(env.inst), "--", "sh", "-c", "echo hi; exit 3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (3, "hi\n")
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "devenv.hostagent.client" in imported
    assert not imported & WARM_PATH_SPARE, sorted(imported & WARM_PATH_SPARE)


def test_stdin_is_a_pipe_only_when_there_is_something_to_read(make_env: Callable[..., Env]) -> None:
    """A /dev/null stdin becomes the guest's /dev/null (no pipe, no round trip); a file's data is piped."""
    env = make_env()
    probe = ["sh", "-c", "readlink /proc/self/fd/0; cat"]
    with open(os.devnull, "rb") as null, open(env.inst.parent / "out", "wb") as o:
        code = client.exec(env.inst, probe, {}, None, stdin_fd=null.fileno(), stdout_fd=o.fileno(), stderr_fd=2)
    assert (code, (env.inst.parent / "out").read_bytes()) == (0, b"/dev/null\n")
    code, out, _ = _exec(env, probe, stdin=b"data")
    assert code == 0 and out.startswith(b"pipe:") and out.endswith(b"\ndata")


def test_native_launcher_runs_exec_through_the_real_agent(make_env: Callable[..., Env], tmp_path: Path) -> None:
    """launcher.c against the real host agent: output, exit code, binary stdin, ^C, and the agent's own errors.

    Nothing is beside the launcher, so a hand-over to the Python CLI would fail
    with 70: every result here came from the launcher's own request.
    """
    launcher = built_launcher(tmp_path / "native")
    env = make_env()
    home = Path(tempfile.mkdtemp(prefix="dn-", dir="/tmp"))  # short: the socket path must fit sun_path
    try:
        (home / "instances").mkdir()
        (home / "instances" / "t").symlink_to(env.inst)
        run_env = {**os.environ, "DEVENV_HOME": str(home)}

        def run(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [launcher, "exec", "-n", "t", "--", *argv], input=stdin, capture_output=True, env=run_env, timeout=60
            )

        r = run("sh", "-c", "echo out; echo err >&2; exit 7")
        assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
        blob = os.urandom(3 * 1024 * 1024)
        r = run("sha256sum", stdin=blob)
        assert (r.returncode, r.stdout.split()[0].decode()) == (0, hashlib.sha256(blob).hexdigest())
        r = run("no-such-command-xyz")
        assert r.returncode == 127 and b"no-such-command-xyz" in r.stderr
        r = run("printf", "%s", "caf\u00e9 \udcff")  # not UTF-8 on the way in: the same bytes come out
        assert r.stdout == "caf\u00e9 \udcff".encode("utf-8", "surrogateescape")

        marker = tmp_path / "trapped"
        script = f"trap 'echo INT > {marker}; exit 42' INT; echo ready; while :; do sleep 0.1; done"
        proc = subprocess.Popen(
            [launcher, "exec", "-n", "t", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=run_env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 42
        assert marker.read_text() == "INT\n"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_an_agent_whose_logins_keep_failing_asks_where_sshd_answers_and_goes_there(
    make_env: Callable[..., Env],
) -> None:
    """As after Windows sleeps with WSL's localhost forwarding dead: the driver's question gives the new address.

    The agent starts with an address nothing answers on (127.0.0.3; the sshd listens on 127.0.0.1 only); after
    one failed login (itself retried for the connect timeout, 20 s) it asks the driver (here
    devenv.testing.sshd_driver.relocate), logs in there, and says so.
    """
    from devenv.testing import sshd_driver

    env = make_env(launch=False)
    (env.inst / sshd_driver.RELOCATE_TO).write_text("127.0.0.1\n")
    env.extra += ["--ssh-host", "127.0.0.3", "--relocate", "devenv.testing.sshd_driver:relocate"]
    st = hostagent.launch(env.inst, user=env.server.user, wait=60, extra_args=env.extra)
    assert st["state"] == "connected", (st, hostagent.log_tail(env.inst))
    moved = env.events("relocated")
    assert len(moved) == 1, moved
    assert (moved[0]["host"], moved[0]["previous"], moved[0]["ssh_port"]) == ("127.0.0.1", "127.0.0.3", env.server.port)
    failed_first = [e for e in env.events() if e["event"] in ("relocated", "connected")]
    assert failed_first[0]["event"] == "relocated"  # no login got through before the move
    log_text = (env.inst / paths.HOSTAGENT_LOG).read_text()
    connect_failures = [line for line in log_text.splitlines() if "connect failed" in line]
    assert len(connect_failures) == 1, connect_failures
