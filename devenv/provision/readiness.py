"""Read the guest's readiness line from its console log instead of guessing with timeouts.

The guest prints exactly one of these on the serial console (and on
/dev/virtio-ports/io.devenv.0 when the backend adds that port) at the end of
every boot (provisioning/cloud-init/firstboot.sh):

    DEVENV-READY
    DEVENV-FAILED step=NAME rc=N log=/var/log/devenv-provision.log

The backend truncates (or notes the size of) serial.log before each boot and
calls scan_console() on what was written since.

On every boot after the first the line comes right after sshd started and
the guest's network is configured (devenv-ready.service runs After=ssh.service
network-online.target), which makes it the signal to log in on: a connection
made earlier, while the guest's network is still down, is held by QEMU's
user-mode net without an answer, and waiting on it cost a start up to ~10 s
after sshd was up (wait_for_sshd). sshd can be up before the network: the
NIC's DHCP lease is not on its path.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devenv.provision.userdata import FAILED_PREFIX, PROVISION_LOG, READY_LINE


@dataclass(frozen=True)
class Readiness:
    ready: bool
    failed: bool
    detail: dict[str, str]  # step, rc, log when failed

    @property
    def done(self) -> bool:
        return self.ready or self.failed

    def describe(self) -> str:
        if self.ready:
            return "guest is ready"
        if self.failed:
            d = self.detail
            return (
                f"provisioning failed in step `{d.get('step', '?')}` (exit code {d.get('rc', '?')}); "
                f"see {d.get('log', PROVISION_LOG)} in the guest"
            )
        return "guest has not finished booting"


NOT_YET = Readiness(ready=False, failed=False, detail={})


def scan_console(text: str) -> Readiness:
    """The first readiness line in `text` (console output may carry \\r and kernel noise)."""
    for raw in text.splitlines():
        line = raw.strip("\r\x00 ")
        idx = line.find(READY_LINE)
        if idx >= 0 and line[idx:].rstrip() == READY_LINE:
            return Readiness(ready=True, failed=False, detail={})
        idx = line.find(FAILED_PREFIX)
        if idx >= 0:
            fields = dict(p.split("=", 1) for p in line[idx + len(FAILED_PREFIX) :].split() if "=" in p)
            return Readiness(ready=False, failed=True, detail=fields)
    return NOT_YET


def console_readiness(serial: Path) -> Readiness:
    try:
        return scan_console(serial.read_text(errors="replace"))
    except OSError:
        return NOT_YET


class ConsoleWatch:
    """One boot's console log, polled while it grows: each poll reads only what was added since the last."""

    def __init__(self, serial: Path) -> None:
        self.serial = serial
        self._offset = 0
        self._tail = b""  # a line not finished yet: scanned again with what completes it
        self._result = NOT_YET

    def poll(self) -> Readiness:
        if self._result.done:
            return self._result
        try:
            with open(self.serial, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._offset:  # a new file in its place: start over
                    self._offset, self._tail = 0, b""
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return NOT_YET
        self._offset += len(data)
        done, _, self._tail = (self._tail + data).rpartition(b"\n")
        found = scan_console((done + b"\n" + self._tail).decode(errors="replace"))
        if found.done:
            self._result = found
        return found


def ssh_banner(port: int, timeout: float = 2.0, host: str = "127.0.0.1", proxy: tuple[str, ...] = ()) -> bool:
    """The guest's sshd answers with its banner: cheap, no paramiko, no login.

    `proxy`: the guest is reached through that command (a jump host), which then carries the probe.
    """
    if proxy:
        return _banner_through(proxy, host, port, timeout)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _banner_through(proxy: tuple[str, ...], host: str, port: int, timeout: float) -> bool:
    from devenv.transport.proxy import proxy_socket

    try:
        with proxy_socket(proxy, host, port) as s:
            s.settimeout(max(timeout, 5.0))  # the proxy logs in to its jump host first
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


PROBE_EVERY = 3.0  # seconds between banner probes while the console says nothing

# A provisioned guest announces every boot on its console (devenv-ready.service),
# so a probe there only costs: sshd accepts it by forking and re-executing a
# child that reads its host keys, and the waiter then closes it unused. Under
# TCG that is CPU taken from the engine's start, in the seconds `devenv start`
# waits for. Such a guest is probed only when its console stays silent this long.
ANNOUNCED_FIRST_PROBE = 60.0


def wait_for_sshd(
    console: ConsoleWatch,
    port: int,
    deadline: float,
    tick: Callable[[], None] = lambda: None,
    probe_timeout: float = 5.0,
    first_probe_after: float = 0.0,
    host: str = "127.0.0.1",
) -> bool:
    """True once the guest's sshd is known to be up, False at the deadline (time.monotonic()).

    Up means the console's readiness line (either kind: the failure line
    comes after sshd too, and the caller reads it) or an SSH banner. The
    console is read every 0.2 s; meanwhile one banner probe at a time waits
    up to probe_timeout, a new one PROBE_EVERY seconds after the last, for
    guests whose console stays silent until then (the first boot, before
    provisioning ends; an image without devenv-ready.service). The first
    probe waits first_probe_after seconds (ANNOUNCED_FIRST_PROBE for a guest
    that announces; math.inf: the console alone). `tick` may raise to stop the wait (the VM died).
    """
    probe: socket.socket | None = None
    probe_until = time.monotonic()
    next_probe = probe_until + first_probe_after
    try:
        while time.monotonic() < deadline:
            tick()
            if console.poll().done:
                return True
            now = time.monotonic()
            if probe is None and now >= next_probe:
                try:
                    probe = socket.create_connection((host, port), timeout=1.0)
                    probe.setblocking(False)
                    probe_until = now + probe_timeout
                except OSError:
                    next_probe = now + PROBE_EVERY
            if probe is None:
                time.sleep(0.2)
                continue
            readable, _, _ = select.select([probe], [], [], 0.2)
            if readable or time.monotonic() > probe_until:
                try:
                    banner = probe.recv(64) if readable else b""
                except OSError:
                    banner = b""
                probe.close()
                probe = None
                if banner.startswith(b"SSH-"):
                    return True
                next_probe = time.monotonic() + PROBE_EVERY
        return False
    finally:
        if probe is not None:
            probe.close()
