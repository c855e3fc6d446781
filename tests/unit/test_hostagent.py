"""Host agent pieces that need no sshd: forwarding policy, clock jumps, socket paths, the client's import cost."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devenv import hostagent
from devenv.config import Mount, PortForward
from devenv.errors import ConnectionFailed, Timeout
from devenv.guestagent.protocol import NotSent
from devenv.hostagent import client, wire
from devenv.hostagent.clock import JumpDetector, resync_command
from devenv.hostagent.events import EventLog, read_events
from devenv.hostagent.mounts import (
    MOUNT_MARKER,
    NINEP_OPTIONS,
    boot_mount_args,
    mount_command,
    mount_specs,
    qemu_shares,
    read_mount_kind,
)
from devenv.hostagent.ports import Forward, auto_forwards, config_forwards
from devenv.provision import assets


def p(port: int, address: str, proto: str = "tcp") -> dict[str, object]:
    return {"proto": proto, "address": address, "port": port}


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([p(8080, "0.0.0.0")], {8080: "127.0.0.1"}),
        ([p(8080, "::", "tcp6")], {8080: "127.0.0.1"}),
        ([p(9123, "127.0.0.1")], {9123: "127.0.0.1"}),
        ([p(9123, "::1", "tcp6")], {9123: "::1"}),
        ([p(9123, "::1", "tcp6"), p(9123, "127.0.0.1")], {9123: "127.0.0.1"}),  # v4 loopback preferred
        ([p(22, "0.0.0.0"), p(80, "0.0.0.0"), p(1023, "0.0.0.0")], {}),  # privileged ports: config only
        ([p(1024, "0.0.0.0")], {1024: "127.0.0.1"}),
        ([p(5000, "172.17.0.1"), p(5001, "10.0.2.15")], {}),  # specific addresses are not "localhost"
        ([{"port": "x"}, {"address": "0.0.0.0"}], {}),  # junk from the guest is ignored
    ],
)
def test_auto_forward_policy(ports: list[dict[str, object]], expected: dict[int, str]) -> None:
    got = auto_forwards(ports)
    assert {k: v.guest_host for k, v in got.items()} == expected
    assert all(f.host_port == f.guest_port == k and f.source == "auto" for k, f in got.items())


def test_only_wildcard_listeners_are_on_the_guest_nic() -> None:
    """QEMU's user-mode net reaches the guest's NIC address: a port bound to loopback only is not there."""
    got = auto_forwards(
        [
            p(8080, "0.0.0.0"),
            p(8081, "::", "tcp6"),
            p(8082, "127.0.0.1"),
            p(8083, "::1", "tcp6"),
            p(8084, "127.0.0.1"),
            p(8084, "0.0.0.0"),
        ]
    )
    assert {k: f.on_nic for k, f in got.items()} == {8080: True, 8081: True, 8082: False, 8083: False, 8084: True}
    assert all(not f.on_nic for f in config_forwards([PortForward(guest=8080)])[0].values())


def test_the_port_ssh_comes_in_by_is_never_forwarded_automatically(tmp_path: Path) -> None:
    """WSL: the guest's sshd listens on the port its localhost forwarding holds on the host already."""
    from devenv.hostagent.ports import PortManager

    listening = {("tcp", "0.0.0.0", 22022): p(22022, "0.0.0.0"), ("tcp", "0.0.0.0", 8080): p(8080, "0.0.0.0")}
    for kept_off, wanted in (([], [8080, 22022]), ([22022], [8080])):
        pm = PortManager(EventLog(tmp_path / "events.jsonl"), opener=lambda h, port: None)  # type: ignore[arg-type,return-value]
        for port in kept_off:
            pm.keep_off(port)  # before the guest's ports are known: no listener is opened here
        pm._guest = dict(listening)
        assert sorted(pm.desired()) == wanted


def test_auto_forward_min_port_is_configurable() -> None:
    assert list(auto_forwards([p(80, "0.0.0.0")], min_port=1)) == [80]


def test_config_forwards_same_port_by_default_and_reject_udp() -> None:
    fwd, rejected = config_forwards(
        [PortForward(guest=80, host=8080), PortForward(guest=5432), PortForward(guest=53, protocol="udp")]
    )
    assert fwd == {
        8080: Forward(8080, 80, "127.0.0.1", "config"),
        5432: Forward(5432, 5432, "127.0.0.1", "config"),
    }
    assert [(e.guest, why) for e, why in rejected] == [(53, "protocol udp is not forwarded (TCP only)")]


def test_clock_jump_detector_ignores_drift_and_reports_jumps() -> None:
    wall, mono = [1000.0], [50.0]
    d = JumpDetector(threshold=2.0, wall=lambda: wall[0], mono=lambda: mono[0])
    wall[0] += 1.0
    mono[0] += 1.0
    assert d.check() is None  # both clocks advanced together
    wall[0] += 1.5
    mono[0] += 0.2
    assert d.check() is None  # 1.3 s of slew: below the threshold
    wall[0] += 3600.0  # suspended for an hour: monotonic did not move
    mono[0] += 0.5
    assert d.check() == pytest.approx(3599.5)
    assert d.check() is None  # reported once
    wall[0] -= 10.0
    assert d.check() == pytest.approx(-10.0)


def test_only_the_e2e_suite_may_shift_the_wall_clock_the_detector_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devenv.hostagent.clock import SHIFT_ENV, SHIFT_FILE, detector_wall

    (tmp_path / SHIFT_FILE).write_text("45")
    monkeypatch.delenv(SHIFT_ENV, raising=False)
    assert detector_wall(tmp_path) is time.time  # a user's agent reads the host's clock, whatever the folder holds
    monkeypatch.setenv(SHIFT_ENV, "1")
    wall = detector_wall(tmp_path)
    assert 44.5 < wall() - time.time() < 45.5
    detector = JumpDetector(wall=wall)
    (tmp_path / SHIFT_FILE).write_text("-10")
    assert detector.check() == pytest.approx(-55, abs=0.5)
    (tmp_path / SHIFT_FILE).unlink()
    assert detector.check() == pytest.approx(10, abs=0.5) and abs(wall() - time.time()) < 0.5


def test_resync_command_sets_utc_epoch() -> None:
    assert resync_command(1700000000.25) == ["sudo", "-n", "date", "-u", "-s", "@1700000000.250"]


def test_socket_paths_fall_back_to_a_short_private_dir_when_too_long(tmp_path: Path) -> None:
    short = tmp_path / "i"
    assert wire.control_path(short) == short / "hostagent.sock"
    assert wire.engine_path(short) == short / "sock" / "docker.sock"
    deep = tmp_path / ("x" * 120) / "inst"
    c, e = wire.control_path(deep), wire.engine_path(deep)
    assert len(os.fsencode(str(c))) < wire.SUN_PATH_MAX and len(os.fsencode(str(e))) < wire.SUN_PATH_MAX
    assert c.parent == e.parent == wire.short_socket_dir(deep)
    assert wire.short_socket_dir(deep) != wire.short_socket_dir(deep.parent / "other")
    assert hostagent.docker_env(deep) == {"DOCKER_HOST": f"unix://{e}"}


def test_wire_roundtrip_and_rejects_non_objects() -> None:
    assert wire.decode(wire.encode({"op": "state"})) == {"op": "state"}
    with pytest.raises(ValueError):
        wire.decode(b"[1]\n")


def test_event_log_appends_lines_in_the_instance_event_format(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("forward-added", host_port=8080, guest_port=80)
    log.emit("clock-resync", jump_seconds=12.5)
    (tmp_path / "events.jsonl").open("a").write("{torn")
    evs = read_events(tmp_path / "events.jsonl")
    assert [(e["event"], e.get("host_port")) for e in evs] == [("forward-added", 8080), ("clock-resync", None)]
    assert set(evs[0]) == {"time", "event", "host_port", "guest_port"}
    assert stat_mode(tmp_path / "events.jsonl") == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_mount_specs_same_path_by_default_and_9p_tags() -> None:
    specs = mount_specs([Mount("/src/proj", writable=True), Mount("~/data", mount_point="/data")])
    assert specs[0].host_path == specs[0].guest_path == "/src/proj" and specs[0].writable
    assert specs[1].host_path == os.path.expanduser("~/data") and specs[1].guest_path == "/data"
    assert [s.tag for s in specs] == ["devenv0", "devenv1"]
    assert qemu_shares([Mount("/src/proj", writable=True)]) == (("devenv0", "/src/proj", True),)


def _mount_script(command: str) -> str:
    """The root script inside mount_command()'s `exec sudo -n sh -c SCRIPT` (after its check for a boot mount)."""
    words = shlex.split(command)
    assert words[-6:-1] == ["exec", "sudo", "-n", "sh", "-c"]
    return words[-1]


def test_boot_mount_args_name_each_share_the_guest_script_can_read_back() -> None:
    specs = [
        Mount("/src/proj", writable=True),
        Mount("/data", mount_point="/srv/data+1@x"),
        Mount("/a b"),  # a blank: the script splits the command line on blanks
        Mount("/c", mount_point="/c:d"),  # a colon: its separator
        Mount("/e"),
    ]
    assert boot_mount_args(specs) == (
        "devenv.mount=devenv0:/src/proj:rw devenv.mount=devenv1:/srv/data+1@x:ro devenv.mount=devenv4:/e:ro"
    )
    many = [Mount(f"/{'x' * 150}{i}") for i in range(10)]
    assert len(boot_mount_args(many)) <= 1024  # the kernel's command line is 2 KiB on x86, ours uses ~400 bytes


def _stand_ins(tmp_path: Path, *tools: str) -> Path:
    """A PATH of the real tools named plus `mount` and `sudo` stand-ins that record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    for fake in ("mount", "sudo"):
        (bin_dir / fake).write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/{fake}.calls\n')
        (bin_dir / fake).chmod(0o755)
    return bin_dir


def test_the_guest_mounts_at_boot_what_the_kernel_command_line_names(tmp_path: Path) -> None:
    """provisioning/guest/mounts.sh run by a real sh on boot_mount_args' words, /proc files and `mount` stood in for."""
    bin_dir = _stand_ins(tmp_path, "grep", "mkdir")
    ro, done = tmp_path / "ro", tmp_path / "done"
    args = boot_mount_args([Mount(str(tmp_path / "rw"), writable=True), Mount("/x", mount_point=str(ro))])
    args += f" devenv.mount=devenv2:{done}:rw"
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"root=LABEL=devenv-root rw quiet devenv.mount=bad {args} console=ttyS0\n")
    proc_mounts = tmp_path / "mounts"
    proc_mounts.write_text(f"/dev/vda / ext4 rw 0 0\ndevenv2 {done} 9p rw,trans=virtio 0 0\n")
    script = assets.provisioning_dir() / "guest" / "mounts.sh"
    env = {"PATH": str(bin_dir), "DEVENV_TEST_CMDLINE": str(cmdline), "DEVENV_TEST_MOUNTS": str(proc_mounts)}
    r = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    options = NINEP_OPTIONS
    assert (tmp_path / "mount.calls").read_text().splitlines() == [
        f"-t 9p -o {options} devenv0 {tmp_path / 'rw'}",
        f"-t 9p -o {options},ro devenv1 {ro}",
    ]  # the malformed word skipped, the one already mounted left alone
    assert (tmp_path / "rw").is_dir() and ro.is_dir() and not done.exists()
    assert f"OPTS={NINEP_OPTIONS}\n" in script.read_text()  # the options the host's own mount uses


def test_a_share_mounted_at_boot_is_reported_as_9p_without_sudo(tmp_path: Path) -> None:
    spec = mount_specs([Mount("/src/proj", writable=True)])[0]
    command = mount_command(spec)
    assert shlex.split(command)[:5] == ["if", "grep", "-qsF", "devenv0 /src/proj 9p ", "/proc/mounts;"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for answer, name in ((0, "mounted"), (1, "not-mounted")):
        (bin_dir / "grep").write_text(f"#!/bin/sh\nexit {answer}\n")  # what /proc/mounts says, stood in for
        (bin_dir / "grep").chmod(0o755)
        (bin_dir / "sudo").write_text(f"#!/bin/sh\necho sudo >> {tmp_path}/{name}.sudo\n")
        (bin_dir / "sudo").chmod(0o755)
        r = subprocess.run(["/bin/sh", "-c", command], env={"PATH": str(bin_dir)}, capture_output=True, timeout=30)
        assert r.returncode == 0
        if answer == 0:
            assert r.stderr == f"{MOUNT_MARKER}9p\n".encode() and not (tmp_path / "mounted.sudo").exists()
        else:
            assert r.stderr == b"" and (tmp_path / "not-mounted.sudo").read_text() == "sudo\n"


def test_mount_command_is_one_sudo_and_quotes_paths_and_honours_read_only() -> None:
    ro, rw = mount_specs([Mount("/a b"), Mount("/c", writable=True)])
    script = _mount_script(mount_command(ro))
    assert "sudo" not in script  # everything in it runs under the one sudo
    assert "umount -l '/a b'" in script and "mkdir -p '/a b'" in script
    assert "mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=mmap,ro devenv0 '/a b'" in script
    assert script.splitlines()[-1] == "exec sshfs -f -o slave,allow_other,dcache_timeout=1,ro :'/a b' '/a b'"
    assert (
        _mount_script(mount_command(rw)).splitlines()[-1]
        == "exec sshfs -f -o slave,allow_other,dcache_timeout=1 :/c /c"
    )
    assert _mount_script(mount_command(rw, sshfs=False)).splitlines()[-1] == "exit 0"


def _run_mount_script(tmp_path: Path, sshfs: bool) -> tuple[str, subprocess.CompletedProcess[bytes]]:
    """mount_command()'s script run by a real sh, as root in a guest without a 9p share for it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mountpoint", "grep", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    if sshfs:  # stands in for sshfs: records its arguments
        (bin_dir / "sshfs").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/sshfs.args\n')
        (bin_dir / "sshfs").chmod(0o755)
    guest = tmp_path / "mnt point"
    spec = mount_specs([Mount("/host dir", mount_point=str(guest))])[0]
    env = {"PATH": str(bin_dir)}
    r = subprocess.run(["/bin/sh", "-c", _mount_script(mount_command(spec))], env=env, capture_output=True, timeout=30)
    assert guest.is_dir()
    return str(guest), r


def test_mount_script_announces_sshfs_then_becomes_it(tmp_path: Path) -> None:
    guest, r = _run_mount_script(tmp_path, sshfs=True)
    assert (r.returncode, r.stderr) == (0, f"{MOUNT_MARKER}sshfs\n".encode())
    args = (tmp_path / "sshfs.args").read_text().splitlines()
    assert args == ["-f", "-o", "slave,allow_other,dcache_timeout=1,ro", ":/host dir", guest]


def test_mount_script_says_none_without_sshfs(tmp_path: Path) -> None:
    _, r = _run_mount_script(tmp_path, sshfs=False)
    assert (r.returncode, r.stderr) == (0, f"{MOUNT_MARKER}none\n".encode())


class _Stderr:
    """The two channel methods read_mount_kind uses, fed in chunks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.timeouts: list[float | None] = []

    def settimeout(self, t: float | None) -> None:
        self.timeouts.append(t)

    def recv_stderr(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_read_mount_kind_across_chunks_keeps_other_stderr() -> None:
    ch = _Stderr(b"sudo: a warning\ndevenv-mo", b"unt:ssh", b"fs\nsshfs: early\n")
    assert read_mount_kind(ch, 20.0) == ("sshfs", b"sudo: a warning\nsshfs: early\n")  # type: ignore[arg-type]
    assert ch.timeouts == [20.0, None]  # the channel is left without a timeout for sshfs's quiet hours
    failed = _Stderr(b"sudo: a password is required\n")
    assert read_mount_kind(failed, 20.0) == (None, b"sudo: a password is required\n")  # type: ignore[arg-type]


def test_client_without_agent_returns_none_and_not_alive(tmp_path: Path) -> None:
    assert client.exec(tmp_path, ["true"]) is None
    assert client.request(tmp_path, {"op": "state"}) is None
    assert hostagent.state(tmp_path) == {"alive": False, "state": "not running", "forwards": [], "mounts": []}
    assert hostagent.is_running(tmp_path) is False
    assert hostagent.shutdown(tmp_path) is True


def test_client_ignores_a_stale_socket_file(tmp_path: Path) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "hostagent.sock"))
    s.close()  # the file stays, nobody listens: a crashed agent
    assert client.exec(tmp_path, ["true"]) is None


def test_client_imports_neither_paramiko_nor_typer() -> None:
    """The `devenv exec` fast path: measured with -X importtime, like the CLI's import budget."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import devenv.hostagent.client"],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "paramiko" not in modules and "typer" not in modules and "cryptography" not in modules
    assert "devenv" in modules
    cumulative = [
        int(line.split("|")[1]) for line in out.stderr.splitlines() if line.rstrip().endswith("devenv.hostagent.client")
    ]
    assert cumulative and cumulative[0] < 50_000  # microseconds; ~5 ms here


def test_hostagent_package_api_is_importable_without_paramiko() -> None:
    code = "import sys, devenv.hostagent, devenv.hostagent.client; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko','typer'))))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [
        ("/home/ann/proj", "/home/ann/proj"),
        ("/home/ann/proj/src", "/home/ann/proj/src"),
        ("/home/ann/projX", None),
        ("/srv/data/x", "/data/x"),
        ("/elsewhere", None),
        (None, None),
    ],
)
def test_guest_cwd_is_one_rule_for_both_exec_paths(cwd: str | None, expected: str | None) -> None:
    from devenv.config import Mount
    from devenv.hostagent.mounts import guest_cwd, mount_specs

    specs = mount_specs([Mount("/home/ann/proj", "", True), Mount("/srv/data", "/data", False)])
    assert guest_cwd(specs, cwd) == expected


class _Refusing:
    """A guest-agent client whose spawn fails the given way."""

    hello = None  # an agent that said nothing of frames: spawn as before them

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def call(self, method: str, params: object, timeout: float | None = None) -> object:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "reply", "said"),
    [
        (NotSent("guest agent connection is closed", ""), "unavailable", b""),
        (
            Timeout("guest agent did not answer `spawn` within 60 s"),
            {"exit_code": 255},
            b"devenv: guest agent did not answer `spawn` within 60 s; the command may have started in the guest\n",
        ),
        (ConnectionFailed("guest agent connection closed during `spawn`", ""), {"exit_code": 255}, None),
    ],
    ids=["not-sent", "no-answer", "closed-after-sending"],
)
def test_a_spawn_the_guest_may_have_seen_is_never_run_again(
    exc: Exception, reply: object, said: bytes | None, tmp_path: Path
) -> None:
    """Only a request that never left may fall back to SSH ("unavailable"); one that went out ends here."""
    from types import SimpleNamespace

    from devenv.hostagent.fastexec import ExecRequest

    session = SimpleNamespace(client=_Refusing(exc), can_spawn=True)
    agent = SimpleNamespace(
        wait_session=lambda timeout: session,
        wait_mounts=lambda timeout: [],
        opts=SimpleNamespace(env={}),
        guest_cwd=lambda c: c,
    )
    fds = [
        os.open(os.devnull, os.O_RDONLY),
        os.open(os.devnull, os.O_WRONLY),
        os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT),
    ]
    msg = {"op": "exec", "argv": ["true"], "env": {}, "cwd": None, "stdin": False}
    result = ExecRequest(agent, None, None, msg, fds).run()  # type: ignore[arg-type]
    if reply == "unavailable":
        assert result["unavailable"] is True and (tmp_path / "err").read_bytes() == b""
    else:
        assert result == reply
        err = (tmp_path / "err").read_bytes()
        assert err == said if said is not None else err.endswith(b"; the command may have started in the guest\n")


@pytest.mark.parametrize(
    ("extra", "guest_dir"),
    [
        ({}, "mapped:/host/proj"),  # where the caller is, through the mounts
        ({"workdir": "/srv/app"}, "/srv/app"),  # -w: a guest directory, as it is
        ({"workdir": ""}, "mapped:/host/proj"),
    ],
    ids=["cwd", "workdir", "empty-workdir"],
)
def test_exec_runs_in_the_workdir_asked_for_else_the_mapped_cwd(
    extra: dict[str, str], guest_dir: str, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from devenv.hostagent.fastexec import ExecRequest

    calls: list[tuple[str, Any]] = []

    def call(method: str, params: Any, timeout: float | None = None) -> object:
        calls.append((method, params))
        raise NotSent("recorded", "")  # the request ends here, as "unavailable"

    session = SimpleNamespace(client=SimpleNamespace(call=call, hello=None), can_spawn=True)
    agent = SimpleNamespace(
        wait_session=lambda timeout: session,
        wait_mounts=lambda timeout: [],
        opts=SimpleNamespace(env={"T": "toml"}),
        guest_cwd=lambda c: f"mapped:{c}",
    )
    fds = [os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY), os.open(os.devnull, os.O_WRONLY)]
    msg = {"op": "exec", "argv": ["pwd"], "env": {"T": "flag", "A": "1"}, "cwd": "/host/proj", "stdin": False, **extra}
    assert ExecRequest(agent, None, None, msg, fds).run()["unavailable"] is True  # type: ignore[arg-type]
    assert calls == [
        ("spawn", {"argv": ["pwd"], "env": {"T": "flag", "A": "1"}, "cwd": guest_dir, "stdin": False}),
    ]


def _spec(guest: str) -> Any:
    from devenv.hostagent.mounts import MountSpec

    return MountSpec(host_path="/host" + guest, guest_path=guest, writable=True, tag="t")


def test_wait_mounts_returns_once_every_mount_under_way_has_settled(tmp_path: Path) -> None:
    """A reconnect mounts again; waiters see each mount through to mounted or failed, or are told which lag."""
    from devenv.hostagent.daemon import HostAgent, Options

    agent = HostAgent(Options(inst_dir=tmp_path))
    a, b = _spec("/a"), _spec("/b")
    assert agent.wait_mounts(5) == []  # nothing under way: no wait
    agent.mount_state(a, "mounted", type="9p")
    agent.mount_state(a, "mounting")
    assert agent.state()["mounts"][0]["type"] == "9p"  # the kind it had, while it mounts again
    agent.mount_state(b, "mounting")
    began = time.monotonic()
    assert agent.wait_mounts(0.3) == ["/a", "/b"]
    assert 0.25 < time.monotonic() - began < 2
    threading.Timer(0.3, agent.mount_state, (a, "mounted"), {"type": "9p"}).start()
    threading.Timer(0.6, agent.mount_state, (b, "failed"), {"reason": "no"}).start()
    began = time.monotonic()
    assert agent.wait_mounts(10) == []
    assert 0.5 < time.monotonic() - began < 5  # woken by the last one, not by the timeout


def test_exec_waits_for_the_mounts_under_way_then_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a reboot inside, the session is back before the project folder: an exec then ran on an empty folder."""
    from types import SimpleNamespace

    from devenv.hostagent import fastexec
    from devenv.hostagent.daemon import HostAgent, Options
    from devenv.hostagent.fastexec import ExecRequest

    agent = HostAgent(Options(inst_dir=tmp_path))
    proj, slow = _spec("/proj"), _spec("/slow")
    agent.mount_state(proj, "remounting")
    agent.mount_state(slow, "remounting")
    seen: list[list[str]] = []

    def call(method: str, params: Any, timeout: float | None = None) -> object:
        seen.append([m["state"] for m in agent.state()["mounts"]])
        raise NotSent("recorded", "")

    session = SimpleNamespace(client=SimpleNamespace(call=call, hello=None), can_spawn=True)
    monkeypatch.setattr(agent, "wait_session", lambda timeout: session)
    threading.Timer(0.3, agent.mount_state, (proj, "mounted"), {"type": "sshfs"}).start()
    monkeypatch.setattr(fastexec, "MOUNTS_WAIT", 1.0)  # /slow never comes: the command runs, with a warning
    fds = [os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)]
    fds.append(os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT))
    msg = {"op": "exec", "argv": ["ls"], "env": {}, "cwd": "/proj", "stdin": False}
    assert ExecRequest(agent, None, None, msg, fds).run()["unavailable"] is True  # type: ignore[arg-type]
    assert seen == [["mounted", "remounting"]]
    assert (tmp_path / "err").read_bytes() == b"devenv: warning: /slow not mounted yet\n"


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname(), timeout=10)
        far, _ = listener.accept()
    return near, far


@pytest.mark.parametrize("graceful", [True, False], ids=["lingering-close", "plain-close"])
def test_a_tcp_control_client_gets_the_last_lines_despite_input_left_unread(graceful: bool) -> None:
    """What the host agent must do for Windows' TCP control channel, and what plain close() did instead.

    The client's last line (a stdin EOF, sent as its command ended) may still
    be unread when the agent is done: close() then resets the connection and
    drops the answer lines not yet sent (without TCP_NODELAY a small line
    waits for the previous one's ACK). In CI that showed as "lost the
    connection to the host agent" (ECONNRESET) for an exit 7.
    """
    from devenv.hostagent.daemon import _close_tcp_client

    client, agent = _tcp_pair()
    with client, agent:
        client.sendall(b'{"op":"stdin","data":"","eof":true}\n')  # never read by the agent
        time.sleep(0.2)
        agent.sendall(b'{"out":"stderr","data":"b29wcwo="}\n')
        agent.sendall(b'{"exit_code":7,"final":true}\n')
        closer = threading.Thread(target=_close_tcp_client if graceful else lambda s: None, args=(agent,))
        closer.start()
        if not graceful:
            agent.close()
        got = b""
        try:
            while chunk := client.recv(65536):
                got += chunk
        except ConnectionResetError:
            got += b"<reset>"
        client.close()  # as hostagent.client does after the final line: the agent's drain ends at once
        closer.join(10)
        assert not closer.is_alive()
    if graceful:
        assert got == b'{"out":"stderr","data":"b29wcwo="}\n{"exit_code":7,"final":true}\n'
    else:  # what the lingering close avoids: a reset, which loses whatever the agent had not yet sent
        assert got.endswith(b"<reset>"), got


def test_code_version_follows_every_source_file(tmp_path: Path) -> None:
    """What `start` compares with the running agent's: any .py or .c edited, added or renamed changes it."""
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "launcher.c").write_text("int main(void) { return 0; }\n")
    first = hostagent.code_version(str(tmp_path))
    assert hostagent.code_version(str(tmp_path)) == first
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"compiled")
    (tmp_path / "notes.txt").write_text("not code")
    assert hostagent.code_version(str(tmp_path)) == first  # bytecode and other files do not count
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    second = hostagent.code_version(str(tmp_path))
    assert second != first
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "b.py")
    assert hostagent.code_version(str(tmp_path)) not in (first, second)
    assert hostagent.code_version() == hostagent.code_version()  # devenv's own tree


def test_a_failed_connect_is_info_but_a_bug_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import paramiko

    from devenv.hostagent.daemon import log_connect_failure

    caplog.set_level(logging.INFO, logger="devenv.hostagent")
    for expected in (ConnectionRefusedError(111, "refused"), paramiko.SSHException("banner"), ConnectionFailed("x")):
        caplog.clear()
        said = log_connect_failure(expected, 0.5)
        assert said == f"{type(expected).__name__}: {expected}"
        (record,) = caplog.records
        assert record.levelno == logging.INFO and record.exc_info is None
    caplog.clear()
    try:
        {}["session"]  # a bug's own exception, raised so that it has a traceback
    except KeyError as bug:
        said = log_connect_failure(bug, 0.5)
    assert said.startswith("internal error (a bug in devenv): KeyError: 'session'")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in caplog.text and "test_a_failed_connect_is_info" in caplog.text


@pytest.mark.parametrize("sending", [True, False], ids=["busy", "silent"])
def test_a_guest_agent_that_keeps_sending_is_busy_not_gone(sending: bool) -> None:
    """A ping answered late behind a stream of output must not drop the session (and every exec on it)."""
    import json
    import threading
    from types import SimpleNamespace

    from devenv.guestagent import protocol
    from devenv.hostagent.session import GuestSession

    to_host_r, to_host_w = os.pipe()
    to_agent_r, to_agent_w = os.pipe()
    stop = threading.Event()

    def fake_agent() -> None:  # says hello, then only output events: it never answers the ping
        with open(to_host_w, "wb", buffering=0) as out:
            out.write(json.dumps({"type": "hello", "protocol": protocol.PROTOCOL_VERSION}).encode() + b"\n")
            while sending and not stop.wait(0.05):
                out.write(b'{"type":"event","event":"output","subscription":1,"stream":"stdout","data":""}\n')
            stop.wait()

    threading.Thread(target=fake_agent, daemon=True).start()
    with open(to_host_r, "rb") as rfile, open(to_agent_w, "wb") as wfile:
        client = protocol.AgentClient(rfile, wfile)
        client.start()
        session = GuestSession(SimpleNamespace(), None)  # type: ignore[arg-type]
        session.client = client
        try:
            assert session.ping(timeout=0.5) is sending
        finally:
            stop.set()
            os.close(to_agent_r)


def test_the_agent_counts_the_commands_it_started_in_the_guest(tmp_path: Path) -> None:
    """The load test tells an exec this agent served from one that fell back to SSH by this count."""
    from devenv.hostagent.daemon import HostAgent, Options

    agent = HostAgent(Options(inst_dir=tmp_path))
    assert agent.state()["execs_spawned"] == 0
    threads = [threading.Thread(target=lambda: [agent.count_exec() for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert agent.state()["execs_spawned"] == 8000


def test_only_a_directly_booted_kernel_with_9p_shares_gets_the_boot_mounts() -> None:
    """The drivers' one rule (qemuhost.with_boot_mounts): a firmware-booted image reads its own command line."""
    from types import SimpleNamespace

    from devenv.backends.drivers.qemuhost import with_boot_mounts

    inst: Any = SimpleNamespace(config=SimpleNamespace(mounts=[Mount("/src/proj", writable=True)]))
    shares = qemu_shares(inst.config.mounts)
    base = "root=LABEL=devenv-root rw quiet"
    assert with_boot_mounts(base, inst, shares, direct_kernel=True) == f"{base} devenv.mount=devenv0:/src/proj:rw"
    assert with_boot_mounts(base, inst, shares, direct_kernel=False) == base
    assert with_boot_mounts(base, inst, (), direct_kernel=True) == base  # sshfs: no 9p share to mount
