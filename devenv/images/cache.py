"""The image cache: content-addressed files plus one small JSON record per name/arch.

Layout under paths.cache_dir()/images:

    blobs/sha256-<hex>.qcow2       a pulled disk (also .vmlinuz/.initrd), named by its content
    builds/<inputs-hash>/          one finished offline build: disk.qcow2, vmlinuz, initrd.img,
                                   manifest.txt, build.json (renamed into place in one step)
    index/<name>/<arch>.json       which file `start --image <name>` uses, and where it came from
    tmp/                           downloads in progress (*.part) and builds in progress

A record is written last and atomically (write a temp file, then os.replace), so
a crash or Ctrl-C never leaves a record pointing at a half-made file; a record
whose files are gone is treated as absent. Records keep paths relative to the
images folder and resolve them when read.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv import paths
from devenv.atomicfile import write_atomic

RECORD_VERSION = 1


def images_dir() -> Path:
    return paths.cache_dir() / "images"


def blobs_dir() -> Path:
    return images_dir() / "blobs"


def builds_dir() -> Path:
    return images_dir() / "builds"


def index_dir() -> Path:
    return images_dir() / "index"


def tmp_dir() -> Path:
    """Work in progress; on the same filesystem as the cache so os.replace is atomic."""
    return images_dir() / "tmp"


def blob_path(sha256_hex: str, suffix: str) -> Path:
    return blobs_dir() / f"sha256-{sha256_hex}{suffix}"


@dataclass(frozen=True)
class ImageRecord:
    """A usable image in the cache (or a local file): what the backend boots."""

    name: str
    arch: str
    source: str  # pulled | built | local
    disk: Path
    size: int  # bytes the disk file takes on the host
    digest: str  # sha256:<hex> of the disk file
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    origin: str = ""  # the URL pulled, or the build's inputs hash
    created: str = ""

    def files(self) -> list[Path]:
        return [p for p in (self.disk, self.kernel, self.initrd) if p is not None]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.files())

    def to_json(self, base: Path) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return str(p.relative_to(base))
            except ValueError:
                return str(p)

        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "arch": self.arch,
            "source": self.source,
            "disk": rel(self.disk),
            "size": self.size,
            "digest": self.digest,
            "kernel": rel(self.kernel),
            "initrd": rel(self.initrd),
            "cmdline": self.cmdline,
            "origin": self.origin,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path) -> ImageRecord:
        def path(key: str) -> Path | None:
            value = data.get(key)
            return None if not value else base / str(value)

        disk = path("disk")
        if disk is None:
            raise ValueError("record has no disk")
        return cls(
            name=str(data["name"]),
            arch=str(data["arch"]),
            source=str(data["source"]),
            disk=disk,
            size=int(data["size"]),
            digest=str(data["digest"]),
            kernel=path("kernel"),
            initrd=path("initrd"),
            cmdline=str(data.get("cmdline", "")),
            origin=str(data.get("origin", "")),
            created=str(data.get("created", "")),
        )


def record_path(name: str, arch: str) -> Path:
    return index_dir() / name / f"{arch}.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode(), 0o644)  # records hold nothing secret


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(record: ImageRecord) -> Path:
    path = record_path(record.name, record.arch)
    write_json_atomic(path, record.to_json(images_dir()))
    return path


def read_record(name: str, arch: str) -> ImageRecord | None:
    """The cached image for name/arch, or None if absent, unreadable or incomplete."""
    data = read_json(record_path(name, arch))
    if data is None:
        return None
    try:
        record = ImageRecord.from_json(data, images_dir())
    except (KeyError, ValueError, TypeError):
        return None
    return record if record.complete() else None


def remove_record(name: str, arch: str) -> bool:
    path = record_path(name, arch)
    existed = path.exists()
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when it was the last arch of this name
    return existed


def list_records() -> list[ImageRecord]:
    """Every complete record in the index, sorted by name then arch."""
    records = []
    for path in sorted(index_dir().glob("*/*.json")):
        record = read_record(path.parent.name, path.stem)
        if record is not None:
            records.append(record)
    return records


def now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
