"""An instance's files as volumes of a libvirt storage pool, for a daemon whose QEMU cannot open them where they are.

The system daemon runs QEMU as its own user (libvirt-qemu on Debian), who
cannot enter a 0700 instance folder, and a remote daemon's QEMU runs on
another host: both get the files through libvirt itself, into the pool
`devenv` (a folder pool the daemon owns, made when absent). The base image,
kernel and initrd are uploaded once, named by their sha256, so every
instance of one image shares them; each instance gets its own qcow2 overlay
on the base and its seed, named by the domain. An upload goes to a `.part`
volume first and is copied to its final name only when complete: a name
without `.part` is always a whole file.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt

POOL = "devenv"
POOL_DIR = "/var/lib/libvirt/images/devenv"
CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def qcow2_size(path: Path) -> int:
    """The virtual size a qcow2 file's header gives (big-endian u64 at byte 24, after the QFI\\xfb magic)."""
    with open(path, "rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        raise ValueError(f"{path} is not a qcow2 image")
    return int.from_bytes(header[24:32], "big")


def pool(conn: Any) -> Any:
    """The `devenv` pool, defined, built and started (and autostarted) when the daemon has none."""
    try:
        p = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        root = ET.Element("pool", {"type": "dir"})
        ET.SubElement(root, "name").text = POOL
        ET.SubElement(ET.SubElement(root, "target"), "path").text = POOL_DIR
        p = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"))
        p.build(0)
        p.setAutostart(1)
    if not p.isActive():
        p.create(0)
    return p


def _volume(p: Any, name: str) -> Any:
    try:
        return p.storageVolLookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise
        return None


def exists(p: Any, name: str) -> bool:
    return _volume(p, name) is not None


def _vol_xml(name: str, capacity: int, fmt: str, backing: str = "") -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(capacity)
    if fmt == "raw":
        ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", {"type": fmt})
    ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0600"
    if backing:
        store = ET.SubElement(root, "backingStore")
        ET.SubElement(store, "path").text = backing
        ET.SubElement(store, "format", {"type": "qcow2"})
    return ET.tostring(root, encoding="unicode")


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield block


def _upload(conn: Any, vol: Any, local: Path) -> None:
    size = local.stat().st_size
    stream = conn.newStream(0)
    vol.upload(stream, 0, size, 0)
    chunks = _chunks(local)
    stream.sendAll(lambda _st, _n, _opaque: next(chunks, b""), None)
    stream.finish()


def upload_once(conn: Any, p: Any, name: str, local: Path) -> str:
    """The path of volume `name` holding `local`'s bytes, uploaded only when the pool lacks it."""
    vol = _volume(p, name)
    if vol is not None:
        return str(vol.path())
    part = _volume(p, name + ".part")
    if part is not None:  # an upload that did not finish
        part.delete(0)
    part = p.createXML(_vol_xml(name + ".part", local.stat().st_size, "raw"), 0)
    # the copy keeps the file's own format: a dir pool probes the uploaded part (a qcow2 base is seen as one),
    # and a copy declared raw is converted to raw, which the overlays' backing_fmt=qcow2 then cannot open
    # (with the qcow2's own virtual size: the file's size would cut the disk short)
    fmt, capacity = ("qcow2", qcow2_size(local)) if name.endswith(".qcow2") else ("raw", local.stat().st_size)
    try:
        _upload(conn, part, local)
        vol = p.createXMLFrom(_vol_xml(name, capacity, fmt), part, 0)
    finally:
        part.delete(0)
    return str(vol.path())


def replace(conn: Any, p: Any, name: str, local: Path) -> str:
    """Volume `name` with `local`'s bytes now (the seed, written again at each start)."""
    old = _volume(p, name)
    if old is not None:
        old.delete(0)
    vol = p.createXML(_vol_xml(name, local.stat().st_size, "raw"), 0)
    _upload(conn, vol, local)
    return str(vol.path())


def overlay(p: Any, name: str, base: str, capacity: int) -> str:
    """The instance's own qcow2 volume on the shared base, kept when it exists (the driver checks whose it is)."""
    vol = _volume(p, name)
    if vol is None:
        vol = p.createXML(_vol_xml(name, capacity, "qcow2", backing=base), 0)
    return str(vol.path())


def remove(p: Any, names: list[str]) -> None:
    for name in names:
        vol = _volume(p, name)
        if vol is not None:
            vol.delete(0)
