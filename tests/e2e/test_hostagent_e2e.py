"""The host agent, checked through each VM driver (the conformance suite): a real guest, its real docker engine,
the host's real docker CLI.

One VM per driver for the whole module (booting costs ~90 s under TCG), created with the
devenv CLI in a private DEVENV_HOME from a project folder whose devenv.toml
mounts the project itself. `devenv start` launches the host agent; the fixture
starts again after it replaced the agent, which launches it as start does.

The guest image must contain sshfs for the mount test (vmimages/debian-12.toml);
for an older image, DEVENV_TEST_GUEST_DEBS may name a folder of .debs (sshfs,
fuse3, libfuse3-3) that the fixture installs into the guest first.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv import hostagent, launcher
from devenv.hostagent import client, clock
from devenv.hostagent.events import read_events
from devenv.provision import userdata
from devenv.provision.engines import LOCAL_IMAGE
from tests.bytecode import FRESH_CHECK
from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
]

DEVENV = [sys.executable, "-m", "devenv"]
IMAGE = LOCAL_IMAGE  # built at first boot by provisioning


@dataclass
class VM:
    home: Path
    project: Path
    inst: Path
    env: dict[str, str]
    driver: DriverCase

    @property
    def name(self) -> str:
        return self.driver.instance

    def cli(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*DEVENV, *args], env=self.env, cwd=self.project, capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(f"devenv {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def guest(self, script: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        """A command through the agent's fast exec path (the same one `devenv exec` takes)."""
        d = self.home / "io"
        d.mkdir(exist_ok=True)
        (d / "in").write_bytes(stdin)
        with open(d / "in", "rb") as i, open(d / "out", "wb") as o, open(d / "err", "wb") as e:
            code = client.exec(
                self.inst,
                ["sh", "-c", script],
                {},
                None,
                stdin_fd=i.fileno(),
                stdout_fd=o.fileno(),
                stderr_fd=e.fileno(),
            )
        assert code is not None, "no host agent answered"
        return code, (d / "out").read_bytes(), (d / "err").read_bytes()

    def docker(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **hostagent.docker_env(self.inst), "DOCKER_CONFIG": str(self.home / "docker")}
        return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)

    def state(self) -> dict[str, Any]:
        return hostagent.state(self.inst)


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def vm(vm: tuple[Devenv, str, Any], driver: DriverCase) -> Iterator[VM]:
    """The session's shared VM, seen through this module's helpers (overrides the conftest fixture)."""
    d, name, _ = vm
    machine = VM(d.home, d.project, d.home / "instances" / name, d.env, driver)
    debs = os.environ.get("DEVENV_TEST_GUEST_DEBS")
    has_sshfs = machine.cli("exec", "-w", "/", "--", "sh", "-c", "command -v sshfs", check=False).returncode == 0
    if debs and not has_sshfs:
        hostagent.shutdown(machine.inst)  # mounts are set up when the agent connects
        for deb in sorted(Path(debs).glob("*.deb")):
            machine.cli("cp", str(deb), f"{machine.name}:/tmp/")
        machine.cli("exec", "-w", "/", "--", "sh", "-c", "sudo -n dpkg -i /tmp/*.deb")
        machine.cli("start")  # a new host agent, launched with the driver's options as start launches it
    st = machine.state()
    assert st["state"] == "connected", (st, hostagent.log_tail(machine.inst))
    yield machine


def http_get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def test_docker_version_shows_the_guest_server(vm: VM) -> None:
    r = vm.docker("version", "--format", "{{.Server.Os}}/{{.Server.Version}}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("linux/")
    info = vm.docker("info", "--format", "{{.Name}}")
    assert info.stdout.strip() == vm.name  # the guest's hostname: it is the guest's engine answering


def test_docker_run_prints_hi(vm: VM) -> None:
    r = vm.docker("run", "--rm", IMAGE, "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr


def test_containers_reach_out_through_the_guests_nat(vm: VM, tmp_path: Path) -> None:
    """dockerd runs with iptables off (it saves ~10 s per boot); devenv's own MASQUERADE rule gives containers a way out.

    The way out here is the host itself: QEMU's user-mode net shows the host's
    127.0.0.1 to the guest as 10.0.2.2.
    """
    import http.server
    import threading

    token = os.urandom(8).hex()
    (tmp_path / "token").write_text(token)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        r = vm.docker("run", "--rm", IMAGE, "wget", "-qO-", f"http://10.0.2.2:{port}/token")
        assert (r.returncode, r.stdout) == (0, token), r.stderr
    finally:
        server.shutdown()
    code, out, err = vm.guest("cat /etc/docker/daemon.json; sudo -n iptables -t nat -S POSTROUTING")
    assert code == 0, err
    assert b'"iptables": false' in out
    assert b"-A POSTROUTING -s 172.16.0.0/12 ! -d 172.16.0.0/12 -j MASQUERADE" in out


def test_docker_stdin_and_half_close(vm: VM) -> None:
    """`docker run -i` sends stdin then closes its side; the answer must still arrive (half-close)."""
    env = {**os.environ, **hostagent.docker_env(vm.inst), "DOCKER_CONFIG": str(vm.home / "docker")}
    data = os.urandom(300_000)
    r = subprocess.run(["docker", "run", "--rm", "-i", IMAGE, "wc", "-c"], input=data, env=env, capture_output=True)
    assert r.returncode == 0 and r.stdout.decode().strip() == str(len(data)), r.stderr


def test_published_port_is_forwarded_and_removed_when_the_container_stops(vm: VM) -> None:
    vm.docker("rm", "-f", "hae2e-web")
    r = vm.docker(
        "run", "-d", "--name", "hae2e-web", "-p", "18080:8080", IMAGE, "httpd", "-f", "-p", "8080", "-h", "/etc"
    )
    assert r.returncode == 0, r.stderr
    try:
        status, body = wait_for(lambda: _try_get(18080, "/hostname"), 30, "HTTP on 127.0.0.1:18080")
        # busybox httpd serves the container's /etc/hostname: the container id's first 12 characters
        assert (status, body.strip()) == (200, r.stdout.strip()[:12].encode())
        # docker-proxy listens on 0.0.0.0 in the guest: QEMU's user-mode net carries it, not SSH
        assert [(f["status"], f["via"]) for f in vm.state()["forwards"] if f["host_port"] == 18080] == [
            ("active", vm.driver.fast_via)
        ]
    finally:
        stopped = vm.docker("stop", "-t", "1", "hae2e-web")
        assert stopped.returncode == 0, stopped.stderr
        t = time.monotonic()
        wait_for(lambda: all(f["host_port"] != 18080 for f in vm.state()["forwards"]), 5, "forward removed")
        assert time.monotonic() - t < 5
        vm.docker("rm", "-f", "hae2e-web")
    assert _try_get(18080, "/") is None


def _try_get(port: int, path: str) -> tuple[int, bytes] | None:
    try:
        return http_get(port, path, timeout=5)
    except OSError:
        return None


def _via(vm: VM, port: int) -> str | None:
    return next((f.get("via") for f in vm.state()["forwards"] if f["host_port"] == port), None)


def test_guest_listener_is_reachable_without_configuration(vm: VM) -> None:
    """On every address (QEMU's user-mode net) and on the guest's loopback only (a bridge, or SSH direct-tcpip)."""
    code, _, err = vm.guest(
        "cd /tmp && (nohup python3 -m http.server 9123 >/dev/null 2>&1 &"
        " nohup python3 -m http.server --bind 127.0.0.1 9125 >/dev/null 2>&1 &) && echo started"
    )
    assert code == 0, err
    try:
        for port, via in ((9123, vm.driver.fast_via), (9125, vm.driver.loopback_via)):
            status, body = wait_for(functools.partial(_try_get, port, "/"), 20, f"HTTP on 127.0.0.1:{port}")
            assert status == 200 and b"Directory listing" in body
            assert _via(vm, port) == via
        if vm.driver.loopback_via.endswith("+bridge"):
            _the_bridge_lets_nobody_in_the_guest_through(vm)
    finally:
        vm.guest("pkill -f 'http.server'")
    wait_for(lambda: _try_get(9123, "/") is None and _try_get(9125, "/") is None, 5, "both forwards gone")


def _the_bridge_lets_nobody_in_the_guest_through(vm: VM) -> None:
    """The guest agent's bridge listens on the guest's address: from inside the guest it answers nobody.

    A container or another account reaches that address too; only the
    hypervisor's forwarded connections (from 10.0.2.2) are joined to the port.
    """
    code, out, err = vm.guest("ss -Hltnp")
    assert code == 0, err
    local = [line.split()[3] for line in out.decode().splitlines() if "python3" in line]
    loopback_or_any = ("127.", "[::1]", "0.0.0.0:", "*:", "[::]:")
    bridges = [a for a in local if not a.startswith(loopback_or_any)]
    assert bridges, "no bridge listener of the guest agent in `ss -ltnp`"
    probe = (
        "import socket, sys\n"
        "for a in sys.argv[1:]:\n"
        "    host, _, port = a.rpartition(':')\n"
        "    c = socket.create_connection((host, int(port)), timeout=10)\n"
        "    c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "    try:\n"
        "        got = c.recv(100)\n"
        "    except ConnectionResetError:\n"
        "        got = b''\n"
        "    print(a, len(got))\n"
    )
    code, out, err = vm.guest(f"python3 -c {shlex.quote(probe)} {' '.join(bridges)}")
    assert code == 0, err
    assert out.decode().split() == [w for b in bridges for w in (b, "0")], out  # closed unanswered, every one


def test_project_folder_is_shared_both_ways(vm: VM) -> None:
    mounts = wait_for(
        lambda: [m for m in vm.state()["mounts"] if m["state"] in ("mounted", "failed")], 60, "the project mount"
    )
    assert mounts[0]["state"] == "mounted", mounts
    # 9p when the guest user has the host user's uid (userdata.guest_uid), else reverse sshfs (root here)
    assert mounts[0]["type"] == ("9p" if userdata.guest_uid() == os.getuid() else "sshfs"), mounts
    (vm.project / "from-host.txt").write_text("written on the host\n")
    code, out, err = vm.guest(
        f"cat {vm.project}/from-host.txt && echo written in the guest > {vm.project}/from-guest.txt"
    )
    assert (code, out) == (0, b"written on the host\n"), err
    assert (vm.project / "from-guest.txt").read_text() == "written in the guest\n"
    # `devenv exec` from inside the project runs in the same folder in the guest
    d = vm.home / "io"
    with open(os.devnull, "rb") as i, open(d / "out", "wb") as o:
        assert client.exec(vm.inst, ["pwd"], {}, str(vm.project), stdin_fd=i.fileno(), stdout_fd=o.fileno()) == 0
    assert (d / "out").read_text().strip() == str(vm.project)


def _installed_devenv() -> Path:
    """The `devenv` command of this install; skipped unless it is the native launcher (required in CI on Linux)."""
    info = launcher.installed()
    if info["kind"] == "native" and info["path"]:
        return Path(info["path"])
    if os.environ.get("CI"):
        pytest.fail(f"{info['path']} is not the native launcher; ci/setup-linux.sh installs gcc so that it is built")
    pytest.skip(f"{info['path']} is the Python CLI here (no C compiler at install)")


def test_the_installed_devenv_command_serves_exec_natively(vm: VM) -> None:
    """What a user types: `devenv exec` through the native launcher, other commands through devenv-py."""
    devenv = _installed_devenv()

    def run(*args: str, stdin: bytes = b"", python: bool = False) -> subprocess.CompletedProcess[bytes]:
        # Without python, a hand-over to devenv-py could not start: what answers is the launcher itself.
        env = vm.env if python else {**vm.env, "PYTHONHOME": "/nonexistent"}
        return subprocess.run([devenv, *args], input=stdin, capture_output=True, env=env, cwd=vm.project, timeout=120)

    r = run("exec", "-e", "GREETING=hi there", "--", "sh", "-c", 'pwd; echo "$GREETING" >&2; exit 7')
    assert (r.returncode, r.stdout, r.stderr) == (7, f"{vm.project}\n".encode(), b"hi there\n")  # the mounted project
    data = os.urandom(10 * 1024 * 1024)
    r = run("exec", "--", "wc", "-c", stdin=data)
    assert (r.returncode, r.stdout.strip()) == (0, str(len(data)).encode())
    assert run("status").returncode != 0  # the check above can tell: this one needs Python
    r = run("status", "--json", python=True)  # handed to the Python CLI beside it
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "running"


def test_forwards_come_back_after_sshd_restarts_and_status_says_degraded(vm: VM) -> None:
    # bound to the guest's loopback: this forward rides on SSH, the connection being cut, or (qemu) on the
    # guest agent's bridge, which ends with the agent's session and must be made again by the new one
    code, _, err = vm.guest("nohup python3 -m http.server --bind 127.0.0.1 9124 >/dev/null 2>&1 & echo ok")
    assert code == 0, err
    wait_for(lambda: _try_get(9124, "/"), 20, "HTTP on 9124 before")
    assert _via(vm, 9124) == vm.driver.loopback_via
    n_before = len([e for e in read_events(vm.inst / "events.jsonl") if e["event"] == "disconnected"])
    # Restart sshd and kill every session (systemd's KillMode=process would keep ours alive),
    # from a transient unit so the command outlives the session it kills.
    code, _, err = vm.guest(
        "sudo -n systemd-run --no-block sh -c 'sleep 1; systemctl restart ssh; pkill -KILL -f \"sshd: devenv\"'"
    )
    assert code == 0, err
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        st = vm.state()
        if not seen or seen[-1] != st["state"]:
            seen.append(st["state"])
        if "reconnecting" in seen and st["state"] == "connected":
            break
        time.sleep(0.05)
    assert "reconnecting" in seen and seen[-1] == "connected", seen
    # `devenv status` shows the same view as degraded while reconnecting (hostagent.state()["degraded"])
    evs = read_events(vm.inst / "events.jsonl")
    assert len([e for e in evs if e["event"] == "disconnected"]) == n_before + 1
    assert [e for e in evs if e["event"] == "connected"][-1]["reconnect"] is True
    try:
        status, _ = wait_for(lambda: _try_get(9124, "/"), 20, "HTTP on 9124 after the reconnect")
        assert status == 200 and _via(vm, 9124) == vm.driver.loopback_via
        assert vm.docker("version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"
    finally:
        vm.guest("pkill -f 'http.server 9124'")


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("echo '# an older build' | sudo -n tee -a {path} >/dev/null", "differs from the one this devenv ships"),
        ("sudo -n sed -i 's/^PROTOCOL_VERSION = .*/PROTOCOL_VERSION = 0/' {path}", "guest agent speaks protocol 0"),
    ],
    ids=["another-build", "another-protocol"],
)
def test_a_stale_guest_agent_is_replaced(vm: VM, change: str, said: str) -> None:
    """Another build, or another protocol, of the agent in the guest: the host sees it in the hello and installs its own."""
    from devenv.guestagent import protocol

    code, _, err = vm.guest(change.format(path=protocol.GUEST_PATH))
    assert code == 0, err
    hostagent.shutdown(vm.inst)
    vm.cli("start")
    installed = [e for e in read_events(vm.inst / "events.jsonl") if e["event"] == "guest-agent-installed"]
    assert installed and installed[-1]["exit_code"] == 0 and said in installed[-1]["reason"], installed[-1:]
    code, out, _ = vm.guest(f"sha256sum {protocol.GUEST_PATH}")
    assert (code, out.split()[0].decode()) == (0, protocol.agent_sha256())
    code, out, _ = vm.guest(f"python3 -c {shlex.quote(FRESH_CHECK)} {protocol.GUEST_PATH}")
    assert (code, out) == (0, b"True\n")  # the reinstalled agent starts from bytecode again


def test_a_killed_host_agent_is_explained_and_start_recovers(vm: VM) -> None:
    code, _, err = vm.guest("nohup python3 -m http.server 9126 >/dev/null 2>&1 & echo ok")
    assert code == 0, err
    wait_for(lambda: _via(vm, 9126) == vm.driver.fast_via, 20, "a fast-path forward of 9126")
    pid = int((vm.inst / "hostagent.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not hostagent.is_running(vm.inst), 15, "the agent to be gone")
    st = json.loads(vm.cli("status", "--json").stdout)
    assert st["state"] == "degraded", st
    assert "host agent is not running" in st["reason"] and "devenv start" in st["reason"], st
    vm.cli("start")
    assert json.loads(vm.cli("status", "--json").stdout)["state"] == "running"
    assert vm.docker("version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"
    # QEMU kept the dead agent's rule; the new agent cleared it and made its own (no "port taken")
    try:
        wait_for(lambda: _via(vm, 9126) == vm.driver.fast_via, 20, "9126 forwarded again")
        assert _try_get(9126, "/") is not None
        failed = [e for e in read_events(vm.inst / "events.jsonl") if e["event"] == "forward-failed"]
        assert not [e for e in failed if e["host_port"] == 9126], failed
    finally:
        vm.guest("pkill -f 'http.server 9126'")


def test_agent_exits_when_the_vm_dies_and_start_recovers(vm: VM) -> None:
    """Last in the module: kill QEMU; the agent follows by itself; `devenv start` brings both back."""
    pid = int((vm.inst / vm.driver.vm_pid_file).read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not hostagent.is_running(vm.inst), 15, "the agent to exit")
    assert not (vm.inst / "sock" / "docker.sock").exists()
    kinds = [e["event"] for e in read_events(vm.inst / "events.jsonl")]
    assert kinds[-1] == "agent-stopped" or "agent-exit" in kinds[-3:], kinds[-5:]
    st = json.loads(vm.cli("status", "--json").stdout)
    assert st["state"] == "broken" and "devenv start" in st["reason"], st
    vm.cli("start")
    assert hostagent.is_running(vm.inst)
    assert vm.docker("version", "--format", "{{.Server.Os}}").stdout.strip() == "linux"


def test_a_wake_from_sleep_sets_the_guests_clock_from_the_hosts(vm: VM) -> None:
    """Sleep and wake, as a laptop's lid does it: the guest's clock is left behind; the host agent sees the
    host's wall clock jump and sets the real guest's clock. The jump is what only the detector sees
    (DEVENV_TEST_CLOCK_SHIFT: no test may move this machine's clock); the guest's clock is really set back."""
    code, _, err = vm.guest(f"sudo -n date -u -s @{time.time() - 3600:.0f} >/dev/null")
    assert code == 0, err
    _, behind, _ = vm.guest("date +%s")
    assert time.time() - float(behind) > 3000  # an hour behind, as after a sleep
    shift = vm.inst / clock.SHIFT_FILE
    try:
        shift.write_text("45")  # the host's wall clock jumps 45 s past its monotonic clock
        resync = wait_for(
            lambda: [e for e in read_events(vm.inst / "events.jsonl") if e.get("jump_seconds")], 20, "a clock-resync"
        )
        assert resync[-1]["event"] == "clock-resync" and resync[-1]["ok"] is True, resync
        assert 44 < resync[-1]["jump_seconds"] < 46, resync
        _, now, _ = vm.guest("date +%s.%N")
        assert abs(float(now) - time.time()) < 3, (float(now), time.time())
    finally:
        shift.unlink(missing_ok=True)


def test_status_lists_forwards_mounts_and_the_engine_socket(vm: VM) -> None:
    st = json.loads(vm.cli("status", "--json").stdout)
    assert st["state"] == "running", st
    assert st["details"]["docker_host"] == hostagent.docker_env(vm.inst)["DOCKER_HOST"]
    assert any(str(vm.project) in m and "mounted" in m for m in st["details"]["mounts"]), st["details"]
    code, _, err = vm.guest("nohup python3 -m http.server 9127 >/dev/null 2>&1 & echo ok")
    assert code == 0, err
    try:
        wait_for(lambda: _via(vm, 9127), 20, "a forward of 9127")
        st = json.loads(vm.cli("status", "--json").stdout)
        assert f"127.0.0.1:9127 -> 9127 (active via {vm.driver.fast_via})" in st["details"]["forwards"], st["details"]
    finally:
        vm.guest("pkill -f 'http.server 9127'")
    out = vm.cli("docker-env").stdout.splitlines()
    assert out == [
        f"export DOCKER_HOST={hostagent.docker_env(vm.inst)['DOCKER_HOST']}",
        "export TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE=/var/run/docker.sock",  # the guest's, for the reaper
        "export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1",
        "export TESTCONTAINERS_CONNECTION_MODE=docker_host",
    ]


def _secret_parts(key: Path) -> list[bytes]:
    """Pieces of a private key that only its private half holds (the PEM body's end, not the public part)."""
    body = [line for line in key.read_bytes().splitlines() if line and not line.startswith(b"-----")]
    assert len(body) >= 3, key
    return [line[8:48] for line in body[-3:-1]]


def test_no_secret_reaches_logs_events_or_json(vm: VM) -> None:
    """The keys stay in their 0600 files (and the 0600 seed that carries the host key to the guest)."""
    secrets = _secret_parts(vm.inst / "ssh" / "id_ed25519") + _secret_parts(vm.inst / "ssh" / "ssh_host_ed25519_key")
    keep_out = {"ssh", "cidata.iso", "disk.qcow2", "memory.ram", "state.img", "relay.sock", "qmp.sock"}
    said = [
        vm.cli("status", "--json").stdout.encode(),
        vm.cli("list", "--json").stdout.encode(),
        vm.cli("ssh-config").stdout.encode(),
    ]
    looked = []
    for path in sorted(vm.inst.rglob("*")):
        rel = path.relative_to(vm.inst)
        if rel.parts[0] in keep_out or not path.is_file() or path.stat().st_size > 64 * 1024**2:
            continue
        looked.append(str(rel))
        said.append(path.read_bytes())
    assert {"hostagent.log", "events.jsonl", "serial.log"} <= set(looked), looked
    for text in said:
        assert not any(s in text for s in secrets)
    for name in ("ssh/id_ed25519", "ssh/ssh_host_ed25519_key", "cidata.iso"):
        assert stat.S_IMODE((vm.inst / name).stat().st_mode) == 0o600, name


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, read from /proc as `ss -ltnp` does."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            raw = bytes.fromhex(addr)
            if v6:
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add((socket.inet_ntop(socket.AF_INET6, packed), int(port, 16)))
            else:
                found.add((socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)))
    return found


def test_every_port_the_instance_opens_on_the_host_is_on_loopback(vm: VM) -> None:
    """Forwards of both kinds, a published container port, QEMU's SSH port: 127.0.0.1 (or ::1) only."""
    code, _, err = vm.guest(
        "cd /tmp && (nohup python3 -m http.server 9133 >/dev/null 2>&1 &"
        " nohup python3 -m http.server --bind 127.0.0.1 9135 >/dev/null 2>&1 &) && echo started"
    )
    assert code == 0, err
    published = vm.docker("run", "-d", "--rm", "-p", "9137:80", IMAGE, "httpd", "-f", "-p", "80")
    assert published.returncode == 0, published.stderr
    try:
        for port in (9133, 9135, 9137):
            wait_for(lambda p=port: _via(vm, p), 60, f"a forward of {port}")
        qemu_pid = int((vm.inst / vm.driver.vm_pid_file).read_text().split()[0])
        listening = _listening(vm.state()["pid"]) | _listening(qemu_pid)
        assert {9133, 9135, 9137} <= {port for _, port in listening}, listening
        assert {addr for addr, _ in listening} <= {"127.0.0.1", "::1"}, listening
    finally:
        vm.guest("pkill -f 'http.server 913'")
        vm.docker("rm", "-f", published.stdout.strip())
