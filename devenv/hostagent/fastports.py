"""A driver's fast port path: guest ports the hypervisor itself forwards, with no SSH and no Python in the path.

A guest port that listens on every address is on the guest's NIC, and some
hypervisors can forward a host port to it themselves (QEMU's user-mode net:
hostfwd over QMP, ~3x the throughput of a bridge through SSH under TCG,
benchmarks/bench_hostagent.py). The host agent knows no hypervisor: the
driver names a factory ("module:function", DriverFeatures.fast_ports), which
the agent imports by that name and calls with the instance directory. A
driver without one names none, and every forward goes through SSH.
DEVENV_FORWARDS=ssh turns the fast path off (to compare, or to debug).

Rules a hypervisor keeps after the agent dies are the agent's to clear: a
new agent removes those it finds on its bind address before adding its own.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Protocol

ENV = "DEVENV_FORWARDS"


class FastPortError(Exception):
    """The hypervisor refused a rule, or could not be reached; the message says which."""


class FastPorts(Protocol):
    via: str  # how `devenv status` names forwards that take this path ("qemu")
    # The address the guest sees this path's connections come from (QEMU's user net: 10.0.2.2); "" when it
    # cannot tell. With it, a port on the guest's loopback takes this path too, through a guest-agent bridge
    # that lets in that address alone (ports.py).
    guest_peer: str

    def add(self, host: str, host_port: int, guest_port: int, guest_addr: str = "") -> None:
        """Forward host:host_port to guest_addr:guest_port (the hypervisor's default guest address when "")."""

    def remove(self, host: str, host_port: int) -> None:
        """Remove a rule; a failure is remembered, for retry_leftover() before the port is reused."""

    def retry_leftover(self, host: str, host_port: int) -> bool:
        """Remove a rule an earlier remove() left behind; True when one was there and is gone now."""

    def clear_stale(self, host: str) -> list[int]:
        """Remove the rules a previous agent left on `host`; the host ports removed."""


def wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() != "ssh"


def load(spec: str, inst_dir: Path) -> FastPorts | None:
    """The fast port path a driver named ("module:function"), or None when it has none for this instance."""
    module_name, _, function = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), function)
    made: FastPorts | None = factory(inst_dir)
    return made
