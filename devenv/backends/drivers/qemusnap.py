"""The QEMU driver's snapshots: internal qcow2 snapshots of the instance's overlay, by qemu-img.

The overlay (paths.DISK) is the only file the instance writes; the base image
under it is shared and never written, so a snapshot of the overlay alone is a
snapshot of the whole disk, and `qemu-img snapshot -a` puts it back exactly.
The snapshots live inside the overlay: deleting the instance deletes them.

qemu-img takes QEMU's image lock for a create, apply or delete: it refuses a
disk a running QEMU has open, so the driver asks these only of a VM that is
off; a suspended guest too is refused (its saved state is checked against the
disk's size and mtime, which a snapshot changes: the saved guest would be
thrown away at the next start). A listing reads the overlay with
--force-share, so it works while the VM runs. A disk that is not qcow2 is
an error, never probed as raw (`info -f qcow2`; `snapshot` has no -f, so
the header is read first).
"""

from __future__ import annotations

import json
from pathlib import Path

from devenv.backends.base import Snapshot
from devenv.backends.vm.driver import no_snapshot
from devenv.errors import CommandFailed
from devenv.runner import run

HINT = "qemu-img comes with QEMU (Debian: apt-get install qemu-utils)"


def listing(disk: Path) -> list[Snapshot]:
    """The overlay's snapshots, oldest first (`qemu-img info`: the image's own, not its base's)."""
    shown = run(["qemu-img", "info", "-f", "qcow2", "--force-share", "--output=json", str(disk)]).check(HINT)
    try:
        rows = json.loads(shown.stdout).get("snapshots", [])
        found = [Snapshot(str(r["name"]), int(r["date-sec"]) + int(r.get("date-nsec", 0)) / 1e9) for r in rows]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CommandFailed(f"`qemu-img info` on {disk} printed what devenv cannot read ({e})", HINT) from None
    return sorted(found, key=lambda s: (s.created, s.name))


def create(disk: Path, name: str) -> None:
    run(["qemu-img", "snapshot", "-c", name, _qcow2(disk)]).check(HINT)


def restore(disk: Path, name: str, instance: str) -> None:
    _known(disk, name, instance)
    run(["qemu-img", "snapshot", "-a", name, _qcow2(disk)]).check(HINT)


def delete(disk: Path, name: str, instance: str) -> None:
    _known(disk, name, instance)
    run(["qemu-img", "snapshot", "-d", name, _qcow2(disk)]).check(HINT)


def _qcow2(disk: Path) -> str:
    """The disk's path once its header says qcow2 (ImageError otherwise)."""
    from devenv.images.overlay import read_header

    read_header(disk)
    return str(disk)


def _known(disk: Path, name: str, instance: str) -> None:
    """qemu-img would also take a snapshot's numeric id for its name: only a name listed is asked for."""
    if not any(s.name == name for s in listing(disk)):
        raise no_snapshot(name, instance)
