"""The QEMU driver's fast port path: forwards made by QEMU's own user-mode network (hostfwd over QMP).

No SSH, no crypto, no Python in the path.

A guest port that listens on every address (0.0.0.0 or a dual-stack ::, which
is what docker-proxy and most servers do) is reachable on the guest's NIC, so
QEMU's slirp can connect to it directly: `hostfwd_add net0
tcp:127.0.0.1:P-:P`. That runs about three times faster than a bridge through
SSH direct-tcpip under TCG (benchmarks/bench_hostagent.py), because nothing is
encrypted twice and the bytes never pass through this process. A port bound
only to the guest's loopback is not on the NIC and still goes through SSH
(hostagent/ports.py decides which is which). The host agent finds this through
the driver's DriverFeatures.fast_ports and imports it by name
(hostagent/fastports.py); DEVENV_FORWARDS=ssh turns it off.

QEMU keeps the rules when this agent dies, so a new agent first removes the
127.0.0.1 rules it finds (all but SSH's own) before it adds its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from pathlib import Path

from devenv import paths
from devenv.backends.drivers.qemuproc import qmp_socket
from devenv.backends.drivers.qmp import Qmp
from devenv.errors import DevenvError
from devenv.hostagent.fastports import FastPortError

log = logging.getLogger(__name__)

NETDEV = "net0"  # the id qemuargs gives the user-mode netdev


def for_instance(inst_dir: Path) -> UserNetForwarder | None:
    """The forwarder of the instance's QEMU (the factory DriverFeatures.fast_ports names).

    None without SSH's own port known: clearing stale rules could then cut the agent off.
    """
    try:
        ssh_port = int((inst_dir / paths.SSH_PORT).read_text().strip())
    except (OSError, ValueError):
        return None
    return UserNetForwarder(qmp_socket(inst_dir), keep_ports={ssh_port})


def parse_host_forwards(usernet: str) -> list[tuple[str, int, int]]:
    """`info usernet` -> [(host address, host port, guest port)] of its HOST_FORWARD rules.

    The rows look like `  TCP[HOST_FORWARD]  13   127.0.0.1 40001   10.0.2.15    22     0     0`.
    """
    rules = []
    for line in usernet.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0] == "TCP[HOST_FORWARD]":
            with contextlib.suppress(ValueError):
                rules.append((fields[2], int(fields[3]), int(fields[5])))
    return rules


class UserNetForwarder:
    """hostfwd rules of one QEMU process, each change over a short QMP connection.

    Short, because QEMU serves one QMP client at a time and `devenv status` and
    `stop` need it too.
    """

    via = "qemu"
    guest_peer = "10.0.2.2"  # slirp shows a connection from the host's loopback as coming from its own address

    def __init__(self, qmp_path: Path, keep_ports: set[int], netdev: str = NETDEV) -> None:
        self.qmp_path = qmp_path
        self.keep_ports = keep_ports
        self.netdev = netdev
        self.leftover: set[int] = set()  # host ports whose rule we failed to remove: QEMU may still hold them

    def _hmp(self, command: str) -> str:
        try:
            with Qmp(self.qmp_path, timeout=10) as q:
                out = q.command("human-monitor-command", **{"command-line": command})
        except (DevenvError, OSError, ValueError) as e:
            raise FastPortError(f"QEMU's monitor did not answer: {e}") from None
        return str(out or "")

    def add(self, host: str, host_port: int, guest_port: int, guest_addr: str = "") -> None:
        if guest_addr:  # from the guest agent: an IPv4 address, never more words for QEMU's monitor
            try:
                guest_addr = str(ipaddress.IPv4Address(guest_addr))
            except ValueError:
                raise FastPortError(f"not a guest IPv4 address: {guest_addr!r}") from None
        out = self._hmp(f"hostfwd_add {self.netdev} tcp:{host}:{host_port}-{guest_addr}:{guest_port}").strip()
        if out:  # HMP answers nothing on success, an error line otherwise
            raise FastPortError(out)

    def remove(self, host: str, host_port: int) -> None:
        """Remove a rule; a failure is remembered in `leftover`, for retry_leftover() before the port is reused."""
        try:
            out = self._hmp(f"hostfwd_remove {self.netdev} tcp:{host}:{host_port}").strip()
            if out and "removed" not in out.lower():
                raise FastPortError(out)
        except FastPortError:
            self.leftover.add(host_port)
            raise
        self.leftover.discard(host_port)

    def retry_leftover(self, host: str, host_port: int) -> bool:
        """Remove a rule an earlier remove() left behind; True when one was there and is gone now."""
        if host_port not in self.leftover:
            return False
        try:
            self.remove(host, host_port)
        except FastPortError as e:
            log.info("the QEMU forward of host port %d is still there: %s", host_port, e)
            return False
        return True

    def rules(self) -> list[tuple[str, int, int]]:
        return parse_host_forwards(self._hmp("info usernet"))

    def clear_stale(self, host: str) -> list[int]:
        """Remove the rules a previous agent left on `host` (never SSH's own); the host ports removed."""
        removed = []
        for addr, host_port, _guest in self.rules():
            if addr == host and host_port not in self.keep_ports:
                try:
                    self.remove(host, host_port)
                    removed.append(host_port)
                except FastPortError as e:  # remembered in leftover: retried before the port is used
                    log.info("could not remove the stale forward of host port %d: %s", host_port, e)
        return removed
