"""A libvirt domain's snapshots as devenv's: internal qcow2 snapshots of its own disk, taken while it is off.

libvirt takes an internal snapshot of an inactive domain with `qemu-img
snapshot -c` on each disk the snapshot names, and reverts one with `-a`,
whether the daemon is the session's or the system's (a pool volume is a
file to it as well). The snapshot names the instance's writable disk alone:
the seed is a raw read-only disk that devenv rewrites at each start and that
libvirt could not snapshot anyway. The snapshot's record (its name, time and
the domain's XML) is libvirt's; it lives as long as the domain is defined,
through devenv's redefine at every start, and the driver's delete undefines
the domain with it (VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from devenv.backends.base import Snapshot
from devenv.backends.vm.driver import no_snapshot

DESCRIPTION = "devenv snapshot"


def snapshot_xml(dom: Any, name: str) -> str:
    """<domainsnapshot>: the domain's writable disks internal, every other disk (the seed) left out."""
    root = ET.fromstring(dom.XMLDesc(0))
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "name").text = name
    ET.SubElement(snap, "description").text = DESCRIPTION
    ET.SubElement(snap, "memory", {"snapshot": "no"})
    disks = ET.SubElement(snap, "disks")
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        writable = disk.get("device", "disk") == "disk" and disk.find("readonly") is None
        ET.SubElement(disks, "disk", {"name": str(target.get("dev")), "snapshot": "internal" if writable else "no"})
    return ET.tostring(snap, encoding="unicode")


def create(dom: Any, name: str) -> None:
    dom.snapshotCreateXML(snapshot_xml(dom, name), 0)


def listing(dom: Any) -> list[Snapshot]:
    """The domain's snapshots, oldest first (libvirt's creationTime, whole seconds)."""
    found = []
    for snap in dom.listAllSnapshots(0):
        created = ET.fromstring(snap.getXMLDesc(0)).findtext("creationTime") or "0"
        found.append(Snapshot(snap.getName(), float(created)))
    return sorted(found, key=lambda s: (s.created, s.name))


def restore(dom: Any, name: str, instance: str) -> None:
    """The disk back as it was (`qemu-img snapshot -a` on it); the domain stays off."""
    dom.revertToSnapshot(lookup(dom, name, instance), 0)


def delete(dom: Any, name: str, instance: str) -> None:
    lookup(dom, name, instance).delete(0)


def lookup(dom: Any, name: str, instance: str) -> Any:
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise no_snapshot(name, instance) from None
        raise
