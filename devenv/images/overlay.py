"""Per-instance disks: a qcow2 overlay on the cached base image, grown to the configured size.

The base is shared by every instance made from it and is never written: each
instance writes only its overlay (`qemu-img create -b BASE`). The overlay's
backing file is an absolute path into the image cache, which is how
catalog.remove() knows a base is still in use.

The qcow2 header is read directly (a few bytes at fixed offsets, spec:
docs/interop/qcow2.txt in QEMU) for the virtual size and the backing file. That
costs no subprocess and works while QEMU holds the image's lock, where
`qemu-img info` would need --force-share.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from devenv import hostdisk
from devenv.errors import ConfigError, ImageError, StateError
from devenv.runner import run
from devenv.sizes import format_size

QCOW2_MAGIC = b"QFI\xfb"
OVERLAY_ROOM = 512 * 1024  # a new overlay's header and tables (qemu-img made ~200 KiB for 20 GiB on a 2 GiB base)
_HEADER = struct.Struct(">4sIQIIQ")  # magic, version, backing_file_offset, backing_file_size, cluster_bits, size


@dataclass(frozen=True)
class QcowHeader:
    version: int
    virtual_size: int
    backing_file: str  # as stored: may be relative to the image's folder; "" when none


def read_header(path: Path) -> QcowHeader:
    """The fields of a qcow2 header devenv needs; ImageError if it is not qcow2."""
    try:
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size or head[:4] != QCOW2_MAGIC:
                raise ImageError(f"{path} is not a qcow2 image", "convert it: `qemu-img convert -O qcow2 IN OUT`")
            _, version, offset, length, _, size = _HEADER.unpack(head)
            backing = ""
            if offset and length:
                f.seek(offset)
                backing = f.read(length).decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}", "check that the file exists and is readable") from None
    return QcowHeader(version, size, backing)


def is_qcow2(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == QCOW2_MAGIC
    except OSError:
        return False


def backing_file(path: Path) -> Path | None:
    """The absolute path of the image `path` is layered on, or None."""
    name = read_header(path).backing_file
    if not name:
        return None
    backing = Path(name)
    return backing if backing.is_absolute() else (path.parent / backing).resolve()


def backing_chain(path: Path, limit: int = 16) -> list[Path]:
    """Every backing file below `path`, nearest first (stops at missing files)."""
    chain: list[Path] = []
    current = path
    for _ in range(limit):
        if not current.is_file():
            break
        below = backing_file(current)
        if below is None:
            break
        chain.append(below)
        current = below
    return chain


def create_overlay(base: Path, overlay: Path, size: int | None = None) -> Path:
    """A new qcow2 at `overlay` backed by `base` (read-only from now on), grown to `size` bytes.

    Refuses to overwrite an existing overlay (it holds an instance's data) and
    to shrink below the base's virtual size.
    """
    base = base.resolve()
    header = read_header(base)
    if overlay.exists():
        raise StateError(
            f"{overlay} already exists; it holds an instance's data",
            "delete the instance first, or start it instead of creating it",
        )
    if size is not None:
        _check_not_shrinking(size, header.virtual_size, base)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    try:
        made = run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)])
        if hostdisk.said_full(made.stderr + made.stdout):
            raise hostdisk.full(overlay, OVERLAY_ROOM, "a new overlay disk")
        made.check("qemu-img comes with QEMU (Debian: apt-get install qemu-utils)")
        if size is not None and size != header.virtual_size:
            resize(overlay, size)
    except BaseException:
        overlay.unlink(missing_ok=True)  # a part of one, which a later start would boot
        raise
    return overlay


def _check_not_shrinking(size: int, current: int, path: Path) -> None:
    if size < current:
        raise ConfigError(
            [
                f"field `disk` must be at least {format_size(current)}: {path.name} is that big "
                f"and disks can only grow (asked for {format_size(size)})"
            ],
            f'set `disk = "{format_size(current)}"` or more in devenv.toml',
        )


def resize(disk: Path, size: int) -> None:
    """Grow `disk` to `size` bytes; the guest's first boot grows the filesystem."""
    current = read_header(disk).virtual_size
    _check_not_shrinking(size, current, disk)
    if size == current:
        return
    grown = run(["qemu-img", "resize", "-q", "-f", "qcow2", str(disk), str(size)])
    if hostdisk.said_full(grown.stderr + grown.stdout):
        raise hostdisk.full(disk, OVERLAY_ROOM, f"growing {disk.name} to {format_size(size)}")
    grown.check()
