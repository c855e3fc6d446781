"""Instance overlays: never write the base, grow to the configured size, refuse to shrink."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from devenv.errors import ConfigError, ImageError, StateError
from devenv.images import overlay
from devenv.runner import run

GIB = 1024**3
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def _fake_qcow2(path: Path, size: int, backing: str = "") -> Path:
    """A qcow2 header as QEMU writes it (version 3), enough for read_header."""
    offset = 512 if backing else 0
    head = struct.pack(">4sIQIIQ", b"QFI\xfb", 3, offset, len(backing.encode()), 16, size)
    data = head.ljust(512, b"\0") + backing.encode()
    path.write_bytes(data)
    return path


def test_read_header(tmp_path: Path) -> None:
    path = _fake_qcow2(tmp_path / "a.qcow2", 3 * GIB, "/cache/base.qcow2")
    assert overlay.read_header(path) == overlay.QcowHeader(3, 3 * GIB, "/cache/base.qcow2")
    assert overlay.backing_file(path) == Path("/cache/base.qcow2")


def test_relative_backing_file_is_resolved_next_to_the_image(tmp_path: Path) -> None:
    path = _fake_qcow2(tmp_path / "a.qcow2", GIB, "base.qcow2")
    assert overlay.backing_file(path) == tmp_path / "base.qcow2"


def test_not_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 1024)
    assert not overlay.is_qcow2(raw)
    with pytest.raises(ImageError, match=r"disk.raw is not a qcow2 image"):
        overlay.read_header(raw)


def test_backing_chain(tmp_path: Path) -> None:
    base = _fake_qcow2(tmp_path / "base.qcow2", GIB)
    mid = _fake_qcow2(tmp_path / "mid.qcow2", GIB, str(base))
    top = _fake_qcow2(tmp_path / "top.qcow2", GIB, str(mid))
    assert overlay.backing_chain(top) == [mid, base]


@needs_qemu_img
def test_overlay_is_backed_by_base_and_grown(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    before = base.read_bytes()
    disk = overlay.create_overlay(base, tmp_path / "inst" / "disk.qcow2", 5 * GIB)
    header = overlay.read_header(disk)
    assert header.virtual_size == 5 * GIB
    assert header.backing_file == str(base)
    assert base.read_bytes() == before
    info = run(["qemu-img", "info", "--output=json", str(disk)], check=True).stdout
    assert '"backing-filename-format": "qcow2"' in info
    overlay.resize(disk, 6 * GIB)
    assert overlay.read_header(disk).virtual_size == 6 * GIB


@needs_qemu_img
def test_overlay_refuses_to_shrink_and_leaves_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "2G"], check=True)
    target = tmp_path / "disk.qcow2"
    with pytest.raises(ConfigError) as info:
        overlay.create_overlay(base, target, GIB)
    assert info.value.message == (
        "field `disk` must be at least 2GiB: base.qcow2 is that big and disks can only grow (asked for 1GiB)"
    )
    assert not target.exists()


@needs_qemu_img
def test_resize_refuses_to_shrink(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "3G"], check=True)
    with pytest.raises(ConfigError, match="disks can only grow"):
        overlay.resize(disk, 2 * GIB)
    assert overlay.read_header(disk).virtual_size == 3 * GIB


@needs_qemu_img
def test_existing_overlay_is_not_overwritten(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    target = tmp_path / "disk.qcow2"
    target.write_bytes(b"instance data")
    with pytest.raises(StateError, match="already exists"):
        overlay.create_overlay(base, target)
    assert target.read_bytes() == b"instance data"
