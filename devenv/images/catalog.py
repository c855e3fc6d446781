"""What `devenv image list|rm` and `devenv start --image NAME` ask about images.

list_images(): every defined image (and anything else in the cache) with
whether it is cached, from where, and how big. remove(): delete a cached image
unless an instance's disk is layered on it. resolve(): turn what the user typed
into a bootable ImageRecord: a path to a local .qcow2, else the cached image
(built or pulled), else a download; offline, the error names
`devenv image build NAME`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devenv import paths
from devenv.errors import ExitCode, ImageError, StateError
from devenv.hostdisk import allocated
from devenv.images import cache, definitions
from devenv.images.cache import ImageRecord

if TYPE_CHECKING:  # download pulls in urllib; list and rm never need it
    from devenv.images.download import ProgressFn


@dataclass(frozen=True)
class ImageInfo:
    """One row of `devenv image list`."""

    name: str
    arch: str
    description: str
    cached: bool
    source: str  # pulled | built | "" when not cached
    size: int | None  # bytes on the host when cached
    buildable: bool  # has an offline builder
    disk: Path | None


def list_images(arch: str | None = None, *, all_arches: bool = False) -> list[ImageInfo]:
    """Defined images for `arch` (default the host's; every arch with all_arches), plus every cached one.

    A cached image of another arch (built or pulled for an `arch = ...` guest) is listed too.
    """
    wanted = definitions.ARCHES if all_arches else (definitions.normalize_arch(arch),)
    rows: list[ImageInfo] = []
    seen: set[tuple[str, str]] = set()
    described: dict[str, tuple[str, bool]] = {}
    for definition in definitions.load_all():
        described[definition.name] = (definition.description, bool(definition.builder))
        for a in wanted:
            if a not in definition.arches:
                continue
            record = cache.read_record(definition.name, a)
            rows.append(_row(definition.name, a, definition.description, bool(definition.builder), record))
            seen.add((definition.name, a))
    for record in cache.list_records():
        if (record.name, record.arch) not in seen:
            description, buildable = described.get(record.name, ("(no definition)", False))
            rows.append(_row(record.name, record.arch, description, buildable, record))
    return rows


def _row(name: str, arch: str, description: str, buildable: bool, record: ImageRecord | None) -> ImageInfo:
    if record is None:
        return ImageInfo(name, arch, description, False, "", None, buildable, None)
    return ImageInfo(name, arch, description, True, record.source, record.size, buildable, record.disk)


def users_of(disk: Path) -> list[str]:
    """Names of instances whose disk is layered (directly or not) on `disk`."""
    from devenv.images import overlay

    target = disk.resolve()
    users = []
    root = paths.instances_root()
    if not root.is_dir():
        return []
    for folder in sorted(root.iterdir()):
        instance_disk = folder / paths.DISK
        if not instance_disk.is_file():
            continue
        try:
            chain = overlay.backing_chain(instance_disk)
        except ImageError:
            continue
        if any(p.resolve() == target for p in chain):
            users.append(folder.name)
    return users


def remove(name: str, arch: str | None = None) -> list[Path]:
    """Delete the cached image name/arch and its files; refuse while an instance uses it.

    Returns the paths deleted. Files another record still points at are kept.
    """
    arch = definitions.normalize_arch(arch)
    record = cache.read_record(name, arch)
    if record is None:
        raise ImageError(
            f"image `{name}` ({arch}) is not cached", "see `devenv image list`", exit_code=ExitCode.NOT_FOUND
        )
    users = users_of(record.disk)
    if users:
        names = ", ".join(users)
        raise StateError(
            f"image `{name}` is in use by instance{'s' if len(users) > 1 else ''} {names}",
            f"delete {'them' if len(users) > 1 else 'it'} first: `devenv delete -n {users[0]}`",
        )
    others = {p.resolve() for r in cache.list_records() if (r.name, r.arch) != (name, arch) for p in r.files()}
    cache.remove_record(name, arch)
    removed = _owned_files(record, others)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def _owned_files(record: cache.ImageRecord, others: set[Path]) -> list[Path]:
    """What removing `record` deletes: its build folder, or its blobs; never what another record (`others`) uses."""
    build_folder = record.disk.parent
    if record.source == "built" and build_folder.parent.resolve() == cache.builds_dir().resolve():
        return [] if any(p.is_relative_to(build_folder.resolve()) for p in others) else [build_folder]
    blobs = cache.blobs_dir().resolve()
    return [p for p in record.files() if p.resolve() not in others and p.resolve().is_relative_to(blobs)]


def _bytes_on_disk(paths_: list[Path]) -> int:
    """What deleting these files and folders gives back (allocated blocks, so sparse images count true)."""
    total = 0
    for p in paths_:
        for f in [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]:  # a missing path: none
            st = f.lstat()
            total += allocated(st)
    return total


def prunable() -> list[tuple[cache.ImageRecord, int]]:
    """Cached images no instance is layered on, each with the bytes removing it frees.

    A user's own disk file (source "local") is never the cache's to delete;
    files another kept image shares are not counted.
    """
    records = cache.list_records()
    unused = [r for r in records if r.source != "local" and not users_of(r.disk)]
    kept = {p.resolve() for r in records if r not in unused for p in r.files()}
    counted: set[Path] = set()  # two unused records sharing a blob free it once
    out = []
    for r in unused:
        freed = [p for p in _owned_files(r, kept) if p.resolve() not in counted]
        counted.update(p.resolve() for p in freed)
        out.append((r, _bytes_on_disk(freed)))
    return out


def prune(dry_run: bool = False) -> list[tuple[cache.ImageRecord, int]]:
    """Remove every cached image no instance uses (prunable()); what it removed, or would with dry_run."""
    found = prunable()
    if not dry_run:
        for record, _ in found:
            remove(record.name, record.arch)
    return found


def is_local_path(image: str) -> bool:
    """A path to a disk file rather than a catalog name: has a slash or ends in .qcow2/.img."""
    return "/" in image or "\\" in image or image.endswith((".qcow2", ".img")) or image.startswith("~")


def local_image(path_text: str, arch: str | None = None) -> ImageRecord:
    """A user's own .qcow2 used as the base as is (not copied, not hashed)."""
    from devenv.images import overlay

    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist", "pass an existing .qcow2 file or an image name")
    if not overlay.is_qcow2(path):
        raise ImageError(f"{path} is not a qcow2 image", f"convert it: `qemu-img convert -O qcow2 {path} OUT.qcow2`")
    return ImageRecord(
        name=path.stem,
        arch=definitions.normalize_arch(arch),
        source="local",
        disk=path,
        size=path.stat().st_size,
        digest="",
        origin=str(path),
    )


def resolve(image: str, arch: str | None = None, *, progress: ProgressFn | None = None) -> ImageRecord:
    """The base image for `start --image IMAGE`: local file, cached (built or pulled), or pulled now.

    Offline, NetworkUnreachable (an ImageError) says to run `devenv image build IMAGE`.
    """
    if is_local_path(image):
        return local_image(image, arch)
    arch = definitions.normalize_arch(arch)
    definition = definitions.load(image)
    definition.source(arch)
    record = cache.read_record(image, arch)
    if record is not None:
        return record
    from devenv.images import download

    return download.pull(image, arch, progress=progress)
