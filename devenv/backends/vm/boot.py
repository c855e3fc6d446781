"""From a launched VM to a guest that says it is ready: the one readiness wait every driver shares.

A driver with a console (a serial log file) gets the console's readiness line
(provision/readiness.py): the guest prints DEVENV-READY or DEVENV-FAILED
there at the end of every boot, so nothing is guessed with timeouts. A driver
without one gets the same answer over SSH, from the guest's own record of its
provisioning, once its sshd answers.

The budget: an emulated guest is ~10x slower than one the hardware runs,
and a first boot also provisions (cloud-init on a pulled image): on a 2-core CI
host an emulated aarch64 guest took 136 s to sshd and more than 284 s more to
provision, past 420 s. Lima waits 10 minutes for a boot; the first boot here
gets 15 under emulation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.errors import DevenvError, StateError
from devenv.provision.readiness import (
    ANNOUNCED_FIRST_PROBE,
    NOT_YET,
    PROBE_EVERY,
    ConsoleWatch,
    Readiness,
    scan_console,
    ssh_banner,
    wait_for_sshd,
)
from devenv.provision.userdata import FAILED_PREFIX, READY_LINE, STATE_DIR

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, StepReporter
    from devenv.backends.vm.driver import Boot, Driver, Endpoint
    from devenv.transport.ssh import SSHConnection

BOOT_TIMEOUT = {"emulated": 420.0, "default": 180.0}
FIRST_BOOT_TIMEOUT = {"emulated": 900.0, "default": 300.0}

# The guest's record of its provisioning, read over SSH when there is no console: the same
# line the console would carry. DEVENV_STATE_DIR is for a guest that keeps it elsewhere
# (devenv.testing's sshd driver, whose "guest" is this host and cannot write /var/lib).
ANNOUNCEMENT_PROBE = (
    f'd="${{DEVENV_STATE_DIR:-{STATE_DIR}}}"; if [ -e "$d/provisioned" ]; then echo {READY_LINE};'
    f' elif [ -e "$d/failed" ]; then echo "{FAILED_PREFIX} $(cat "$d/failed")"; fi'
)


def boot_budget(emulated: bool, *, first_boot: bool) -> float:
    """Seconds from launch to ready: the first boot provisions too, so it gets more."""
    table = FIRST_BOOT_TIMEOUT if first_boot else BOOT_TIMEOUT
    return table["emulated"] if emulated else table["default"]


def sshd_timeout_hint(console: Path | None, name: str) -> str:
    """What to do when the guest's sshd never answered; an empty console means the kernel hung early.

    With `quiet` on the kernel command line the first console line comes from
    userspace, so a console still empty at the deadline points at the kernel
    (seen in emulated guests: both vCPUs spinning in the kernel, nothing written to the disk).
    """
    try:
        silent = console is not None and console.stat().st_size == 0
    except OSError:
        silent = True
    if silent:
        return (
            "the console stayed empty, so the guest kernel hung early in boot (emulated guests do, rarely): "
            f"boot it again with `devenv stop --force -n {name}` and `devenv start -n {name}`"
        )
    return "the guest may be stuck in boot: read the console above; an emulated guest's first boot takes minutes"


def wait_ready(driver: Driver, inst: InstanceRef, step: StepReporter, boot: Boot, *, announces: bool) -> None:
    """Until the guest says it is ready (or failed), within the boot budget.

    `announces`: the guest was provisioned, so devenv-ready.service prints
    the readiness line right after sshd starts and probing the port would
    only cost the guest an sshd child (readiness.ANNOUNCED_FIRST_PROBE).
    One that does not is on its first boot, which provisions too and gets
    the longer budget.
    """
    endpoint = driver.endpoint(inst)
    assert endpoint is not None, "a launched VM has an endpoint"
    budget = boot_budget(boot.emulated, first_boot=not announces)
    deadline = time.monotonic() + budget
    console = driver.console_log(inst)

    step("boot: waiting for the guest's sshd")
    watch = ConsoleWatch(console) if console is not None else None
    if watch is not None:
        # a guest behind a proxy is not probed: its console's line says when sshd is up
        first_probe = math.inf if endpoint.proxy else ANNOUNCED_FIRST_PROBE if announces else 0.0
        up = wait_for_sshd(
            watch, endpoint.port, deadline, tick=boot.watch, first_probe_after=first_probe, host=endpoint.host
        )
    else:
        up = _wait_banner(endpoint, deadline, boot)
    if not up:
        raise driver.failure(
            inst,
            f"the guest's sshd did not answer on {endpoint.host}:{endpoint.port} within {budget:.0f} s",
            sshd_timeout_hint(console, inst.name),
        )

    step("guest ready: provisioning (first boot) and engine start")
    if watch is not None:
        _wait_line(driver, inst, boot, watch.poll, deadline, budget)
        return
    announcement = _Announcement(inst, endpoint, deadline)
    try:
        _wait_line(driver, inst, boot, announcement, deadline, budget)
    finally:
        announcement.close()


def _wait_line(
    driver: Driver, inst: InstanceRef, boot: Boot, poll: Callable[[], Readiness], deadline: float, budget: float
) -> None:
    while True:
        readiness = poll()
        if readiness.failed:
            raise driver.failure(
                inst, readiness.describe(), f"`devenv shell -n {inst.name}` and read the log it names", StateError
            )
        if readiness.ready:
            return
        boot.after_sshd()
        if time.monotonic() > deadline:
            raise driver.failure(
                inst,
                f"the guest did not report DEVENV-READY within {budget:.0f} s",
                "the first-boot provisioning may still be running or stuck: read the console above",
            )
        time.sleep(0.2)


def _wait_banner(endpoint: Endpoint, deadline: float, boot: Boot) -> bool:
    while time.monotonic() < deadline:
        boot.watch()
        if ssh_banner(endpoint.port, host=endpoint.host, proxy=endpoint.proxy):
            return True
        time.sleep(min(PROBE_EVERY, max(deadline - time.monotonic(), 0.0)))
    return False


class _Announcement:
    """The readiness line of a guest without a console, asked once a second over one SSH connection."""

    def __init__(self, inst: InstanceRef, endpoint: Endpoint, deadline: float) -> None:
        self.inst = inst
        self.endpoint = endpoint
        self.deadline = deadline
        self.next_ask = 0.0
        self.conn: SSHConnection | None = None

    def __call__(self) -> Readiness:
        if time.monotonic() < self.next_ask:
            return NOT_YET
        self.next_ask = time.monotonic() + 1.0
        from devenv.transport.ssh import SSHConnection, SSHTarget

        try:
            if self.conn is None:
                ep = self.endpoint
                target = SSHTarget.for_instance(self.inst.dir, port=ep.port, user=ep.user, host=ep.host, proxy=ep.proxy)
                left = max(self.deadline - time.monotonic(), 1.0)
                self.conn = SSHConnection(target, boot_timeout=left).connect(
                    min(left, 5.0)
                )  # short: the boot watch runs between tries
            out = self.conn.run(["sh", "-c", ANNOUNCEMENT_PROBE], report_pid=False).stdout
        except DevenvError:  # sshd is up but a login is not yet (cloud-init still makes the user)
            self.close()
            return NOT_YET
        found = scan_console(out.decode(errors="replace"))
        if found.done:
            self.close()
        return found

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
