"""When a VM's disk may be snapshotted or put back: one rule for every driver that has snapshots.

A snapshot is of the disk alone, never of a running guest's memory. Create
and restore need the VM off:
- running or paused: the hypervisor has the disk open and the guest's page
  cache holds writes the disk has not seen; a disk-only snapshot of a running
  VM is not something every hypervisor does, and a full checkpoint of memory
  and devices is refused by some while a shared folder is mounted (and would
  double the cost).
- suspended (saved): the saved guest belongs to the disk exactly as it is; a
  snapshot or a restore changes that disk, and restoring the saved memory on
  top of another disk would corrupt the guest's filesystem. The user's saved
  work is never thrown away for a snapshot: they shut it down first
  (`devenv stop --shutdown` restores the saved guest and powers it off cleanly).
A snapshot of an instance whose guest never finished its first boot is
refused too: it would be the base image, and restoring it would leave the
instance believing its guest is provisioned when it is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from devenv.backends.vm.driver import require_off
from devenv.errors import NotSupported, StateError

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, Snapshot, StepReporter
    from devenv.backends.vm.driver import DiskSnapshots, Driver


def of(driver: Driver) -> DiskSnapshots:
    """The driver's snapshot operations; NotSupported naming the driver and what has them when it has none."""
    if not driver.features.snapshots:
        raise NotSupported(driver.name, "snapshots", "`devenv doctor` lists the backends of this host")
    return cast("DiskSnapshots", driver)


def create(driver: Driver, inst: InstanceRef, name: str, step: StepReporter, *, provisioned: bool) -> None:
    ops = of(driver)
    if not provisioned:
        raise StateError(
            f"instance `{inst.name}` has never finished its first boot: a snapshot now would be its bare image",
            f"start it once (`devenv start -n {inst.name}`), shut it down, then snapshot it",
        )
    require_off(driver.state(inst), inst, "take a snapshot")
    if any(s.name == name for s in ops.snapshot_list(inst)):
        raise StateError(
            f"instance `{inst.name}` already has a snapshot `{name}`",
            f"choose another name, or `devenv snapshot delete {name} -n {inst.name}` first",
        )
    ops.snapshot_create(inst, name, step)


def listing(driver: Driver, inst: InstanceRef) -> list[Snapshot]:
    return of(driver).snapshot_list(inst)


def restore(driver: Driver, inst: InstanceRef, name: str, step: StepReporter) -> None:
    ops = of(driver)
    require_off(driver.state(inst), inst, "restore a snapshot")
    ops.snapshot_restore(inst, name, step)


def delete(driver: Driver, inst: InstanceRef, name: str, step: StepReporter) -> None:
    of(driver).snapshot_delete(inst, name, step)
