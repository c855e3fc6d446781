"""Which guest ports get a host listener, and the set of listeners kept in step with that.

Policy (like Lima's default rules):
- Automatic: a guest TCP port listening on a wildcard (0.0.0.0, ::) or on
  loopback (127.0.0.1, ::1) gets a 127.0.0.1 listener on the same host port.
  Ports below 1024 are skipped (binding them on the host needs privileges on
  most systems, and they are the guest's own services: sshd on 22, DNS
  stubs on 53); configure them explicitly to forward them. Ports bound to
  another specific address (docker's bridge 172.17.0.1, the NIC) are not
  reachable as "localhost" in the guest either, so they are left alone.
  docker-published ports appear automatically: docker-proxy listens on
  0.0.0.0:PORT in the guest.
- Explicit: `[[ports]]` in devenv.toml, guest -> host (host 0 = same number),
  any port number, always on, whether or not the guest listens yet.
- Host side: always 127.0.0.1 only; a host port already taken gives a
  `forward-failed` event with the reason and is retried on the next change.
- Path: an automatic forward of a port that listens on every guest address
  goes through the driver's fast port path when it has one (fastports.py;
  QEMU's own user-mode network: ~3x the throughput). A port on the guest's
  loopback alone takes that path too when the guest agent can bridge it
  (`bridge` in its hello): the agent listens on the guest's address facing
  the hypervisor, lets in only connections from the address the hypervisor's
  forwards come from (QEMU: 10.0.2.2; a container or another guest account
  is refused) and joins each to the loopback port; the rule points there
  ("qemu+bridge"; 2.5x the throughput of SSH under TCG, whose sshd spent a
  whole guest CPU on it). The bridges die with the agent's session, so a
  new session makes them again (set_bridger). Every other forward is a
  127.0.0.1 listener of this process bridged through SSH direct-tcpip. A
  refused fast rule or bridge falls back to SSH. `via` in the snapshot says which.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import paramiko

from devenv.hostagent.events import EventLog
from devenv.hostagent.fastports import FastPortError, FastPorts
from devenv.hostagent.forward import BridgeSet, Listener, bind_tcp

log = logging.getLogger(__name__)

AUTO_MIN_PORT = 1024
WILDCARDS = {"0.0.0.0", "::"}
LOOPBACKS = {"127.0.0.1", "::1"}
# The guest's own services above 1024 that a user never means to reach from the host.
IGNORED_GUEST_PORTS = {5355}  # systemd-resolved's LLMNR responder


@dataclass(frozen=True)
class Forward:
    host_port: int
    guest_port: int
    guest_host: str  # the address dialed from inside the guest (direct-tcpip target)
    source: str  # "auto" | "config" | "devcontainer"
    on_nic: bool = False  # listens on every guest address: a fast port path (QEMU's user-mode net) can reach it


def auto_forwards(ports: Iterable[Mapping[str, Any]], min_port: int = AUTO_MIN_PORT) -> dict[int, Forward]:
    """Guest listening sockets (the guest agent's `ports` entries) -> forwards by host port."""
    dial: dict[int, str] = {}
    wildcard: set[int] = set()
    for entry in ports:
        try:
            port = int(entry["port"])
            address = str(entry["address"])
        except (KeyError, TypeError, ValueError):
            continue
        if port < min_port or port > 65535 or port in IGNORED_GUEST_PORTS:
            continue
        if address in WILDCARDS or address == "127.0.0.1":
            dial[port] = "127.0.0.1"  # IPv4 loopback reaches 0.0.0.0, dual-stack :: and 127.0.0.1
        elif address == "::1":
            dial.setdefault(port, "::1")
        if address in WILDCARDS:
            wildcard.add(port)
    return {p: Forward(p, p, host, "auto", p in wildcard) for p, host in sorted(dial.items())}


def config_forwards(entries: Iterable[Any]) -> tuple[dict[int, Forward], list[tuple[Any, str]]]:
    """devenv.toml [[ports]] -> (forwards by host port, [(entry, why it is not forwarded)])."""
    out: dict[int, Forward] = {}
    rejected: list[tuple[Any, str]] = []
    for e in entries:
        if getattr(e, "protocol", "tcp") != "tcp":
            rejected.append((e, f"protocol {e.protocol} is not forwarded (TCP only)"))
            continue
        host = int(e.host or e.guest)
        out[host] = Forward(host, int(e.guest), "127.0.0.1", "config")
    return out, rejected


Opener = Callable[[str, int], paramiko.Channel]


class Bridger(Protocol):
    """The guest agent's loopback bridges (session.py makes one per session whose agent has them)."""

    def open(self, guest_host: str, guest_port: int, peer: str) -> tuple[str, int]:
        """A bridge to guest_host:guest_port that lets `peer` in: its (address, port) in the guest."""

    def close(self, bridge_port: int) -> None: ...


class FastRule:
    """An active forward held by the hypervisor (QEMU: a hostfwd rule) rather than by a listener of ours."""

    def __init__(
        self, forwarder: FastPorts, host: str, host_port: int, bridge: tuple[Bridger, int] | None = None
    ) -> None:
        self.forwarder = forwarder
        self.host = host
        self.host_port = host_port
        self.bridge = bridge  # the guest agent's bridge the rule points at, for a port on the guest's loopback

    def close(self) -> None:
        try:
            self.forwarder.remove(self.host, self.host_port)
        except FastPortError as e:  # the VM gone: its rules went with it
            log.info("removing the %s forward of port %d: %s", self.forwarder.via, self.host_port, e)
        self.close_bridge()

    def close_bridge(self) -> None:
        if self.bridge is not None:
            bridger, port = self.bridge
            self.bridge = None
            try:
                bridger.close(port)
            except Exception as e:  # the agent's session gone: its bridges went with it
                log.info("closing the guest's bridge %d of port %d: %s", port, self.host_port, e)


class PortManager:
    """The host's listeners, reconciled against config + the guest's current port list.

    Listeners live across SSH reconnects (a client connecting meanwhile waits
    for the new transport); after a reconnect the guest's fresh full port list
    replaces the old one, which removes forwards of ports that died meanwhile.
    """

    def __init__(
        self,
        events: EventLog,
        opener: Opener,
        explicit: Mapping[int, Forward] | None = None,
        min_port: int = AUTO_MIN_PORT,
        bind_host: str = "127.0.0.1",
        fast: FastPorts | None = None,
    ) -> None:
        self.events = events
        self.fast = fast
        self.opener = opener
        self.explicit = dict(explicit or {})
        self.min_port = min_port
        self.bind_host = bind_host
        self.bridges = BridgeSet()
        self._lock = threading.RLock()
        self._guest: dict[tuple[str, str, int], Mapping[str, Any]] = {}
        self._active: dict[int, tuple[Forward, Listener | FastRule]] = {}
        self._failed: dict[int, tuple[Forward, str]] = {}
        self._kept_off: set[int] = set()
        self.bridger: Bridger | None = None

    # -- input from the guest
    def set_guest_ports(self, ports: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._guest = {_key(p): p for p in ports}
            self.reconcile()

    def apply_event(self, added: Iterable[Mapping[str, Any]], removed: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for p in removed:
                self._guest.pop(_key(p), None)
            for p in added:
                self._guest[_key(p)] = p
            self.reconcile()

    def set_bridger(self, bridger: Bridger | None) -> None:
        """A new guest-agent session: the bridges of the last one ended with it, so their rules go too.

        No reconcile here: the session's fresh port list follows at once
        (set_guest_ports), and bridges made for the old list would be wasted.
        """
        with self._lock:
            self.bridger = bridger
            for host_port, (_fwd, handle) in list(self._active.items()):
                if isinstance(handle, FastRule) and handle.bridge is not None:
                    handle.bridge = None  # not asked of the new agent: it never had it
                    del self._active[host_port]
                    handle.close()

    def rehome_fast(self, fast: FastPorts | None) -> None:
        """The hypervisor process was replaced under this agent (a resume): its rules went with the old one.

        The forwards it held are made again on the new one (or bridged over SSH
        when it refuses them); the listeners of ours never went away.
        """
        with self._lock:
            self.fast = fast
            for host_port, (_fwd, handle) in list(self._active.items()):
                if isinstance(handle, FastRule):
                    del self._active[host_port]
                    handle.close_bridge()  # the guest agent lives on (a resume keeps its session): made anew
            self.reconcile()

    def add_forward(self, fwd: Forward) -> dict[str, Any]:
        """A forward asked for while the agent runs (`devenv up`'s forwardPorts); its snapshot row.

        Kept like a devenv.toml forward until the agent ends: a later `up`
        asks again, so a forward to a container that was replaced follows it.
        """
        with self._lock:
            self.explicit[fwd.host_port] = fwd
            self.reconcile()
            return next(r for r in self.snapshot() if r["host_port"] == fwd.host_port)

    # -- the listeners
    def keep_off(self, host_port: int) -> None:
        """A host port an automatic forward never takes: the one the agent's own SSH reaches the guest by.

        Under WSL the guest's sshd listens on that same port number, which WSL's
        localhost forwarding already holds on the host: forwarding it again only
        ever failed, and showed as a failed forward in `status`.
        """
        with self._lock:
            if host_port not in self._kept_off:
                self._kept_off.add(host_port)
                self.reconcile()

    def desired(self) -> dict[int, Forward]:
        want = {p: f for p, f in auto_forwards(self._guest.values(), self.min_port).items() if p not in self._kept_off}
        want.update(self.explicit)  # explicit wins a host-port clash
        return want

    def reconcile(self) -> None:
        with self._lock:
            want = self.desired()
            for host_port in list(self._active):
                fwd, listener = self._active[host_port]
                if want.get(host_port) != fwd:
                    del self._active[host_port]
                    listener.close()
                    self.events.emit("forward-removed", host_port=host_port, guest_port=fwd.guest_port)
            for host_port in list(self._failed):
                if host_port not in want:
                    del self._failed[host_port]
            for host_port, fwd in want.items():
                if host_port in self._active:
                    continue
                previous = self._failed.get(host_port)
                try:
                    handle = self._open(fwd)
                except OSError as e:
                    reason = f"host port {host_port} is not available: {e.strerror or e}"
                    if previous is None or previous != (fwd, reason):
                        self.events.emit(
                            "forward-failed", host_port=host_port, guest_port=fwd.guest_port, reason=reason
                        )
                    self._failed[host_port] = (fwd, reason)
                    continue
                self._failed.pop(host_port, None)
                self._active[host_port] = (fwd, handle)
                self.events.emit(
                    "forward-added", host_port=host_port, guest_port=fwd.guest_port, source=fwd.source, via=_via(handle)
                )

    def _open(self, fwd: Forward) -> Listener | FastRule:
        """The fast port path when it can reach the guest port, else our listener bridged over SSH.

        Binding first proves the host port free either way (OSError: taken); for
        the fast path the probe is closed just before the hypervisor binds the
        same port (QEMU sets SO_REUSEADDR, so nothing lingers in between). A
        refused fast rule falls back to SSH.
        """
        try:
            sock = bind_tcp(fwd.host_port, self.bind_host)
        except OSError:
            if self.fast is None or not self.fast.retry_leftover(self.bind_host, fwd.host_port):
                raise
            sock = bind_tcp(fwd.host_port, self.bind_host)
        if self.fast is not None and (fwd.on_nic or self._bridgeable(fwd)):
            sock.close()
            try:
                if fwd.on_nic:
                    self.fast.add(self.bind_host, fwd.host_port, fwd.guest_port)
                    return FastRule(self.fast, self.bind_host, fwd.host_port)
                return self._bridged(self.fast, fwd)
            except FastPortError as e:
                log.info("%s could not forward port %d (%s); bridging it over SSH", self.fast.via, fwd.host_port, e)
            sock = bind_tcp(fwd.host_port, self.bind_host)
        return Listener(sock, f"tcp{fwd.host_port}", self._opener_for(fwd), self.bridges).start()

    def _bridgeable(self, fwd: Forward) -> bool:
        return self.bridger is not None and fwd.guest_host in LOOPBACKS and bool(self.fast and self.fast.guest_peer)

    def _bridged(self, fast: FastPorts, fwd: Forward) -> FastRule:
        """A loopback-only guest port on the fast path: the guest agent's bridge, and the hypervisor's rule to it."""
        bridger = self.bridger
        assert bridger is not None
        try:
            address, port = bridger.open(fwd.guest_host, fwd.guest_port, fast.guest_peer)
        except Exception as e:  # any failure of the agent: SSH carries it instead
            raise FastPortError(f"the guest agent made no bridge: {e}") from None
        try:
            fast.add(self.bind_host, fwd.host_port, port, guest_addr=address)
        except FastPortError:
            with contextlib.suppress(Exception):  # the agent's session gone: its bridge went with it
                bridger.close(port)
            raise
        return FastRule(fast, self.bind_host, fwd.host_port, (bridger, port))

    def _opener_for(self, fwd: Forward) -> Callable[[], paramiko.Channel]:
        def open_channel() -> paramiko.Channel:
            return self.opener(fwd.guest_host, fwd.guest_port)

        return open_channel

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = [
                {
                    "host": f"{self.bind_host}:{p}",
                    "host_port": p,
                    "guest_port": f.guest_port,
                    "source": f.source,
                    "status": "active",
                    "via": _via(handle),
                }
                for p, (f, handle) in self._active.items()
            ]
            rows += [
                {
                    "host": f"{self.bind_host}:{p}",
                    "host_port": p,
                    "guest_port": f.guest_port,
                    "source": f.source,
                    "status": "failed",
                    "reason": why,
                }
                for p, (f, why) in self._failed.items()
            ]
        return sorted(rows, key=lambda r: int(r["host_port"]))

    def close(self) -> None:
        with self._lock:
            active, self._active = self._active, {}
            self._failed.clear()
        for _, handle in active.values():
            with contextlib.suppress(Exception):
                handle.close()
        self.bridges.close_all()


def _via(handle: Listener | FastRule) -> str:
    if isinstance(handle, FastRule):
        return f"{handle.forwarder.via}+bridge" if handle.bridge is not None else handle.forwarder.via
    return "ssh"


def _key(entry: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(entry.get("proto")), str(entry.get("address")), int(entry.get("port", 0)))
