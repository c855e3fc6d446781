"""QEMU user-mode-net forwards (hostfwd over QMP) against a real QEMU process.

A paused QEMU with no disk and a user netdev `net0`, like the one qemuargs
builds: hostfwd rules are real listening sockets of QEMU on the host, so the
tests see them as a port that is taken, then free again.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.backends.drivers.qemuports import UserNetForwarder
from devenv.hostagent.events import EventLog, read_events
from devenv.hostagent.fastports import FastPortError
from devenv.hostagent.ports import PortManager
from tests.integration.qemu_fixture import MISSING, QEMU, start_paused_qemu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(QEMU is None, reason=MISSING),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """(QMP socket, the SSH hostfwd port given on the command line)."""
    sock = tmp_path / "qmp.sock"
    ssh_port = free_port()
    proc = start_paused_qemu(
        sock, "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22", "-device", "virtio-net-pci,netdev=net0"
    )
    try:
        yield sock, ssh_port
    finally:
        proc.kill()
        proc.wait()


def _manager(tmp_path: Path, fw: UserNetForwarder) -> PortManager:
    """A PortManager whose fast path is this QEMU; no SSH (its opener is never called in these tests)."""
    return PortManager(EventLog(tmp_path / "events.jsonl"), opener=lambda h, p: None, min_port=1, fast=fw)  # type: ignore[arg-type,return-value]


def test_add_list_remove_and_a_taken_port(qemu: tuple[Path, int]) -> None:
    sock, ssh_port = qemu
    fw = UserNetForwarder(sock, keep_ports={ssh_port})
    assert fw.rules() == [("127.0.0.1", ssh_port, 22)]  # parsed from QEMU's own `info usernet`
    port = free_port()
    fw.add("127.0.0.1", port, 8080)
    assert port_taken(port)
    assert sorted(fw.rules()) == sorted([("127.0.0.1", ssh_port, 22), ("127.0.0.1", port, 8080)])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", other := free_port()))
        holder.listen(1)
        with pytest.raises(FastPortError, match="host forwarding rule"):
            fw.add("127.0.0.1", other, 8080)
    fw.remove("127.0.0.1", port)
    assert not port_taken(port)
    assert fw.rules() == [("127.0.0.1", ssh_port, 22)]


def test_clear_stale_keeps_the_ssh_rule(qemu: tuple[Path, int]) -> None:
    sock, ssh_port = qemu
    fw = UserNetForwarder(sock, keep_ports={ssh_port})
    left = [free_port(), free_port()]
    for p in left:
        fw.add("127.0.0.1", p, p)
    assert sorted(fw.clear_stale("127.0.0.1")) == sorted(left)
    assert fw.rules() == [("127.0.0.1", ssh_port, 22)] and not any(port_taken(p) for p in left)


def test_unreachable_qmp_is_a_usernet_error(tmp_path: Path) -> None:
    with pytest.raises(FastPortError, match="did not answer"):
        UserNetForwarder(tmp_path / "none.sock", keep_ports=set()).add("127.0.0.1", 1, 1)


def test_port_manager_hands_wildcard_ports_to_qemu(qemu: tuple[Path, int], tmp_path: Path) -> None:
    """Wildcard listeners go to QEMU, loopback-only ones to an SSH bridge; removal frees the port."""
    sock, ssh_port = qemu
    events = EventLog(tmp_path / "events.jsonl")
    fw = UserNetForwarder(sock, keep_ports={ssh_port})
    wild, loop = free_port(), free_port()
    pm = PortManager(events, opener=lambda h, p: None, min_port=1, fast=fw)  # type: ignore[arg-type,return-value]
    try:
        pm.set_guest_ports(
            [
                {"proto": "tcp", "address": "0.0.0.0", "port": wild},
                {"proto": "tcp", "address": "127.0.0.1", "port": loop},
            ]
        )
        via = {r["host_port"]: r["via"] for r in pm.snapshot()}
        assert via == {wild: "qemu", loop: "ssh"}
        assert ("127.0.0.1", wild, wild) in fw.rules() and ("127.0.0.1", loop, loop) not in fw.rules()
        pm.set_guest_ports([{"proto": "tcp", "address": "127.0.0.1", "port": loop}])
        assert not port_taken(wild) and fw.rules() == [("127.0.0.1", ssh_port, 22)]
        added = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "forward-added"]
        assert {(e["host_port"], e["via"]) for e in added} == {(wild, "qemu"), (loop, "ssh")}
    finally:
        pm.close()
    assert not port_taken(loop)


def test_a_rule_whose_removal_failed_is_removed_before_the_port_is_used_again(
    qemu: tuple[Path, int], tmp_path: Path
) -> None:
    sock, ssh_port = qemu
    fw = UserNetForwarder(sock, keep_ports={ssh_port})
    port = free_port()
    fw.add("127.0.0.1", port, port)
    fw.qmp_path = tmp_path / "gone.sock"  # QMP unreachable for a moment: the removal fails
    with pytest.raises(FastPortError):
        fw.remove("127.0.0.1", port)
    assert fw.leftover == {port} and port_taken(port)
    fw.qmp_path = sock
    pm = _manager(tmp_path, fw)
    try:
        pm.set_guest_ports([{"proto": "tcp", "address": "0.0.0.0", "port": port}])
        assert [(r["host_port"], r["status"], r["via"]) for r in pm.snapshot()] == [(port, "active", "qemu")]
        assert fw.leftover == set() and fw.rules().count(("127.0.0.1", port, port)) == 1
    finally:
        pm.close()


class RecordingBridger:
    """The guest agent's side of a loopback bridge, as PortManager sees it: what it was asked, and its answers."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.opened: list[tuple[str, int, str]] = []
        self.closed: list[int] = []
        self.next_port = 40000

    def open(self, guest_host: str, guest_port: int, peer: str) -> tuple[str, int]:
        if self.fail:
            raise OSError("no bridge today")
        self.opened.append((guest_host, guest_port, peer))
        self.next_port += 1
        return "10.0.2.15", self.next_port

    def close(self, bridge_port: int) -> None:
        self.closed.append(bridge_port)


def test_a_loopback_port_goes_to_qemu_through_the_guest_agents_bridge(qemu: tuple[Path, int], tmp_path: Path) -> None:
    """QEMU's rule points at the bridge (not at the loopback port it cannot reach); a new session makes it again."""
    sock, ssh_port = qemu
    fw = UserNetForwarder(sock, keep_ports={ssh_port})
    loop = free_port()
    pm = _manager(tmp_path, fw)
    first = RecordingBridger()
    try:
        pm.set_bridger(first)
        pm.set_guest_ports([{"proto": "tcp", "address": "127.0.0.1", "port": loop}])
        assert first.opened == [("127.0.0.1", loop, "10.0.2.2")]  # QEMU's user net: the host is 10.0.2.2
        assert [(r["host_port"], r["via"]) for r in pm.snapshot()] == [(loop, "qemu+bridge")]
        assert ("127.0.0.1", loop, 40001) in fw.rules() and port_taken(loop)

        second = RecordingBridger()  # a reconnect: the old agent and its bridge are gone
        pm.set_bridger(second)
        assert first.closed == [] and fw.rules() == [("127.0.0.1", ssh_port, 22)]
        pm.set_guest_ports([{"proto": "tcp", "address": "127.0.0.1", "port": loop}])
        assert second.opened == [("127.0.0.1", loop, "10.0.2.2")] and ("127.0.0.1", loop, 40001) in fw.rules()

        pm.set_guest_ports([])  # the guest port closed: the rule and the bridge both go
        assert second.closed == [40001] and fw.rules() == [("127.0.0.1", ssh_port, 22)] and not port_taken(loop)

        pm.set_bridger(RecordingBridger(fail=True))  # an agent that cannot bridge: SSH carries the port
        pm.set_guest_ports([{"proto": "tcp", "address": "127.0.0.1", "port": loop}])
        assert [(r["host_port"], r["via"]) for r in pm.snapshot()] == [(loop, "ssh")]
        assert fw.rules() == [("127.0.0.1", ssh_port, 22)]
    finally:
        pm.close()
    assert not port_taken(loop)


def test_a_bridge_whose_rule_qemu_refuses_is_closed_and_ssh_carries_the_port(
    qemu: tuple[Path, int], tmp_path: Path
) -> None:
    sock, ssh_port = qemu
    fw = UserNetForwarder(sock, keep_ports={ssh_port})
    fw.qmp_path = tmp_path / "gone.sock"  # QMP unreachable: every rule refused
    loop = free_port()
    pm = _manager(tmp_path, fw)
    bridger = RecordingBridger()
    try:
        pm.set_bridger(bridger)
        pm.set_guest_ports([{"proto": "tcp", "address": "127.0.0.1", "port": loop}])
        assert bridger.opened == [("127.0.0.1", loop, "10.0.2.2")] and bridger.closed == [40001]
        assert [(r["host_port"], r["via"]) for r in pm.snapshot()] == [(loop, "ssh")]
    finally:
        pm.close()


@pytest.mark.parametrize("bad", ["10.0.2.15 tcp::1-:22", "10.0.2.15,x", "::1", "host"])
def test_a_guest_address_that_is_not_one_ipv4_address_never_reaches_qemus_monitor(bad: str, tmp_path: Path) -> None:
    fw = UserNetForwarder(tmp_path / "none.sock", keep_ports=set())  # no QMP: refused before any is asked
    with pytest.raises(FastPortError, match="not a guest IPv4 address"):
        fw.add("127.0.0.1", 1, 1, guest_addr=bad)
