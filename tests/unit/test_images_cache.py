"""The image cache index: records round-trip, are atomic, and vanish with their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devenv.images import cache
from devenv.images.cache import ImageRecord


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _blob(name: str, data: bytes = b"qcow") -> Path:
    path = cache.blobs_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _record(name: str = "debian-12", arch: str = "x86_64", **kw: object) -> ImageRecord:
    disk = _blob(f"sha256-{'1' * 64}.qcow2")
    fields: dict[str, object] = {
        "name": name,
        "arch": arch,
        "source": "pulled",
        "disk": disk,
        "size": 4,
        "digest": "sha256:" + "1" * 64,
        "origin": "https://example.org/x.qcow2",
        "created": "2026-01-01T00:00:00Z",
    }
    fields.update(kw)
    return ImageRecord(**fields)  # type: ignore[arg-type]


def test_layout_is_under_the_cache_dir(cache_root: Path) -> None:
    assert cache.images_dir() == cache_root / "images"
    assert cache.blob_path("ab" * 32, ".qcow2") == cache_root / "images" / "blobs" / f"sha256-{'ab' * 32}.qcow2"
    assert cache.record_path("debian-12", "x86_64") == cache_root / "images" / "index" / "debian-12" / "x86_64.json"


def test_record_round_trip_stores_relative_paths(cache_root: Path) -> None:
    kernel = _blob("k.vmlinuz")
    initrd = _blob("k.initrd")
    record = _record(source="built", kernel=kernel, initrd=initrd, cmdline="root=/dev/vda")
    path = cache.write_record(record)
    data = json.loads(path.read_text())
    assert data["disk"] == f"blobs/sha256-{'1' * 64}.qcow2"
    assert data["source"] == "built"
    assert data["kernel"] == "blobs/k.vmlinuz"
    assert cache.read_record("debian-12", "x86_64") == record


def test_record_whose_file_is_gone_is_absent() -> None:
    record = _record()
    cache.write_record(record)
    record.disk.unlink()
    assert cache.read_record("debian-12", "x86_64") is None
    assert cache.list_records() == []


def test_corrupt_record_is_absent() -> None:
    path = cache.record_path("debian-12", "x86_64")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert cache.read_record("debian-12", "x86_64") is None
    path.write_text('{"name": "debian-12"}')
    assert cache.read_record("debian-12", "x86_64") is None


def test_list_and_remove() -> None:
    cache.write_record(_record("b-image", "x86_64"))
    cache.write_record(_record("a-image", "aarch64"))
    assert [(r.name, r.arch) for r in cache.list_records()] == [("a-image", "aarch64"), ("b-image", "x86_64")]
    assert cache.remove_record("a-image", "aarch64") is True
    assert cache.remove_record("a-image", "aarch64") is False
    assert not (cache.index_dir() / "a-image").exists()
    assert [r.name for r in cache.list_records()] == ["b-image"]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "x" / "r.json"
    cache.write_json_atomic(target, {"a": 1})
    cache.write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    cache.write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        cache.write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
