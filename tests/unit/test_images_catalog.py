"""The catalog: list, resolve (local file, cache, pull, offline), rm guarded by instances."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from devenv.errors import ImageError, StateError
from devenv.images import cache, catalog, definitions
from devenv.images.cache import ImageRecord
from devenv.images.download import NetworkUnreachable

GIB = 1024**3


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def qcow2(path: Path, size: int = GIB, backing: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">4sIQIIQ", b"QFI\xfb", 3, 512 if backing else 0, len(backing), 16, size)
    path.write_bytes(head.ljust(512, b"\0") + backing.encode())
    return path


def cached_image(name: str, source: str = "pulled", arch: str = "x86_64", blob: str = "1") -> ImageRecord:
    disk = qcow2(cache.blob_path(blob * 64, ".qcow2"))
    record = ImageRecord(name, arch, source, disk, disk.stat().st_size, "sha256:" + blob * 64)
    cache.write_record(record)
    return record


def offline_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "vmimages"
    folder.mkdir()
    base = f"http://127.0.0.1:{port}"
    (folder / "debian-12.toml").write_text(
        'builder = "debian"\n[build]\nsuite = "bookworm"\npackages = []\ncmdline = ""\n'
        f'[arch.x86_64]\nurl = "{base}/d.qcow2"\nchecksum_url = "{base}/SHA512SUMS"\n'
    )
    (folder / "fedora-45.toml").write_text(f'[arch.x86_64]\nurl = "{base}/f.qcow2"\nchecksum_url = "{base}/C"\n')
    monkeypatch.setattr(definitions, "definitions_dir", lambda: folder)


def test_list_shows_every_definition_and_what_is_cached() -> None:
    cached_image("debian-12", "built")
    rows = catalog.list_images("x86_64")
    assert [(r.name, r.arch, r.cached, r.source, r.buildable) for r in rows] == [
        ("debian-12", "x86_64", True, "built", True),
        ("fedora-45", "x86_64", False, "", False),
        ("ubuntu-24.04", "x86_64", False, "", False),
    ]
    assert rows[0].size == 512 and rows[1].size is None


def test_list_all_arches_and_undefined_cached_images() -> None:
    cached_image("old-image", arch="aarch64")
    rows = catalog.list_images(all_arches=True)
    assert len([r for r in rows if r.name != "old-image"]) == 6
    assert [(r.name, r.description, r.cached) for r in rows if r.name == "old-image"] == [
        ("old-image", "(no definition)", True)
    ]
    # the host's list shows a cached image of another arch too: it is on disk, and `devenv image rm` needs its name
    assert [(r.name, r.arch) for r in catalog.list_images("x86_64") if r.name == "old-image"] == [
        ("old-image", "aarch64")
    ]


def test_the_hosts_list_shows_a_cached_image_of_another_arch_with_its_definition() -> None:
    cached_image("debian-12", "built", arch="aarch64")
    rows = [(r.name, r.arch, r.cached, r.buildable) for r in catalog.list_images("x86_64")]
    assert rows == [
        ("debian-12", "x86_64", False, True),
        ("fedora-45", "x86_64", False, False),
        ("ubuntu-24.04", "x86_64", False, False),
        ("debian-12", "aarch64", True, True),
    ]


def test_resolve_prefers_the_cache() -> None:
    record = cached_image("debian-12", "built")
    assert catalog.resolve("debian-12", "x86_64") == record


def test_resolve_offline_names_the_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline_definitions(tmp_path, monkeypatch)
    with pytest.raises(NetworkUnreachable) as info:
        catalog.resolve("debian-12", "x86_64")
    assert info.value.message.startswith("cannot reach 127.0.0.1: ")
    assert "`devenv image build debian-12`" in info.value.hint
    assert info.value.exit_code == 73


def test_resolve_offline_without_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline_definitions(tmp_path, monkeypatch)
    with pytest.raises(ImageError) as info:
        catalog.resolve("fedora-45", "x86_64")
    assert "has no offline builder (try debian-12)" in info.value.hint


def test_resolve_unknown_name() -> None:
    with pytest.raises(ImageError, match="no image named `plan9`"):
        catalog.resolve("plan9")


def test_resolve_local_qcow2(tmp_path: Path) -> None:
    disk = qcow2(tmp_path / "my disk.qcow2")
    record = catalog.resolve(str(disk), "x86_64")
    assert (record.name, record.source, record.disk, record.kernel) == ("my disk", "local", disk, None)


@pytest.mark.parametrize(("text", "local"), [("debian-12", False), ("./x.qcow2", True), ("x.img", True)])
def test_local_path_detection(text: str, local: bool) -> None:
    assert catalog.is_local_path(text) is local


def test_resolve_local_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        catalog.resolve(str(tmp_path / "none.qcow2"))
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match=r"raw\.img is not a qcow2 image"):
        catalog.resolve(str(raw))


def test_rm_refuses_while_an_instance_is_layered_on_it(tmp_path: Path) -> None:
    record = cached_image("debian-12")
    qcow2(tmp_path / "home" / "instances" / "a" / "disk.qcow2", backing=str(record.disk))
    mid = qcow2(tmp_path / "elsewhere" / "mid.qcow2", backing=str(record.disk))
    qcow2(tmp_path / "home" / "instances" / "b" / "disk.qcow2", backing=str(mid))
    qcow2(tmp_path / "home" / "instances" / "c" / "disk.qcow2")
    assert catalog.users_of(record.disk) == ["a", "b"]
    with pytest.raises(StateError) as info:
        catalog.remove("debian-12", "x86_64")
    assert info.value.message == "image `debian-12` is in use by instances a, b"
    assert info.value.hint == "delete them first: `devenv delete -n a`"
    assert record.disk.exists()
    assert cache.read_record("debian-12", "x86_64") == record


def test_rm_deletes_the_blob_unless_shared() -> None:
    shared = cached_image("one", blob="2")
    cached_image("two", blob="2")
    alone = cached_image("three", blob="3")
    assert catalog.remove("one", "x86_64") == []
    assert shared.disk.exists()
    assert catalog.remove("three", "x86_64") == [alone.disk]
    assert not alone.disk.exists()
    assert cache.read_record("three", "x86_64") is None
    with pytest.raises(ImageError, match=r"image `three` \(x86_64\) is not cached"):
        catalog.remove("three", "x86_64")


def test_rm_of_a_build_deletes_its_folder() -> None:
    folder = cache.builds_dir() / "abc"
    disk = qcow2(folder / "disk.qcow2")
    (folder / "vmlinuz").write_bytes(b"k")
    (folder / "initrd.img").write_bytes(b"i")
    cache.write_record(
        ImageRecord(
            "debian-12", "x86_64", "built", disk, 512, "sha256:" + "0" * 64, folder / "vmlinuz", folder / "initrd.img"
        )
    )
    assert catalog.remove("debian-12", "x86_64") == [folder]
    assert not folder.exists()


def test_prune_removes_only_what_no_instance_uses_and_says_what_it_frees(tmp_path: Path, cli: Any) -> None:
    used = cached_image("used", blob="4")
    qcow2(tmp_path / "home" / "instances" / "a" / "disk.qcow2", backing=str(used.disk))
    cached_image("twin", blob="4")  # the same file as the used image's: in use too
    alone = cached_image("alone", blob="5")
    cached_image("alone-again", blob="5")  # unused, sharing alone's blob: freed once, not twice
    with open(alone.disk, "ab") as f:
        f.write(b"x" * 100_000)
    folder = cache.builds_dir() / "b1"
    built = qcow2(folder / "disk.qcow2")
    (folder / "vmlinuz").write_bytes(b"k" * 50_000)
    cache.write_record(ImageRecord("built", "x86_64", "built", built, 512, "sha256:" + "6" * 64, folder / "vmlinuz"))
    own = qcow2(tmp_path / "mine.qcow2")
    cache.write_record(ImageRecord("mine", "x86_64", "local", own, 512, ""))

    def blocks(*ps: Path) -> int:
        return sum(f.stat().st_blocks * 512 for p in ps for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())

    dry = json.loads(cli("prune", "--dry-run", "--json").out)
    freed = {i["name"]: i["freed"] for i in dry["images"]}
    assert freed == {"alone": blocks(alone.disk), "alone-again": 0, "built": blocks(folder)}
    assert dry["freed"] == sum(freed.values()) and dry["dry_run"] is True
    assert alone.disk.exists() and folder.exists()  # a dry run removes nothing

    ran = cli("prune")
    assert ran.code == 0 and "removed alone (x86_64, pulled)" in ran.out and "freed " in ran.out
    assert {r.name for r in cache.list_records()} == {"used", "twin", "mine"}
    assert used.disk.exists() and own.exists() and not alone.disk.exists() and not folder.exists()
    assert "nothing to remove" in cli("prune").out
