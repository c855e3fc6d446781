"""`devenv snapshot create|list|restore|delete`: named copies of an instance's disk.

The backend keeps them (a libvirt domain's internal snapshots, the QEMU
driver's qcow2 snapshots inside the overlay); this module checks the name,
asks the backend whether it has snapshots at all, and holds the instance's
operation lock (oplock.py) for what changes the disk, so a `devenv start` or
`stop` never runs beside a create, restore or delete. When a snapshot may be
taken (the instance shut down) is the backend's rule (backends/vm/snapshots.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

from devenv import instance, oplock
from devenv.errors import NotSupported, UsageError

if TYPE_CHECKING:
    from devenv.backends.base import Snapshot, Snapshots, StepReporter

# A letter first: QEMU finds a qcow2 snapshot by its numeric id or by its name, so an all-digit name could
# pick another snapshot; the rest is what a file name, a libvirt name and a shell all take unquoted.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,62}")


def validate_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise UsageError(
            f"`{name}` is not a snapshot name",
            "a name is a letter, then letters, digits, `.`, `_` or `-` (at most 63), e.g. before-upgrade",
        )


def _ops(inst: instance.Instance) -> Snapshots:
    backend = inst.backend()
    if not backend.features.snapshots:
        hint = (
            'the qemu, libvirt and hyperv backends have them (backend = "qemu", "libvirt" or "hyperv" in devenv.toml)'
            if backend.features.vm
            else "this backend runs the host's own engine: there is no guest disk to snapshot"
        )
        raise NotSupported(backend.name, "snapshots", hint)
    return cast("Snapshots", backend)


def create(name: str, snap: str, step: StepReporter) -> instance.Instance:
    validate_name(snap)
    inst = instance.get(name)
    ops = _ops(inst)
    with oplock.hold(inst.dir, "snapshot", step):
        ops.snapshot_create(inst.ref, snap, step)
        inst.event("snapshot-created", snapshot=snap)
    return inst


def listing(name: str) -> list[Snapshot]:
    inst = instance.get(name)
    return _ops(inst).snapshot_list(inst.ref)


def restore(name: str, snap: str, step: StepReporter) -> instance.Instance:
    validate_name(snap)
    inst = instance.get(name)
    ops = _ops(inst)
    with oplock.hold(inst.dir, "snapshot", step):
        ops.snapshot_restore(inst.ref, snap, step)
        inst.event("snapshot-restored", snapshot=snap)
    return inst


def delete(name: str, snap: str, step: StepReporter) -> instance.Instance:
    validate_name(snap)
    inst = instance.get(name)
    ops = _ops(inst)
    with oplock.hold(inst.dir, "snapshot", step):
        ops.snapshot_delete(inst.ref, snap, step)
        inst.event("snapshot-deleted", snapshot=snap)
    return inst
