"""Image definitions: the TOML files in vmimages/, one per image name.

A definition says where the official cloud image of each architecture lives and
how to know it is the right file (a checksum file published next to it, fetched
at download time, or a digest pinned in the definition). An image that can be
made offline names its builder (`builder = "debian"`) and the builder's inputs
in a [build] table. Keeping this as data means adding an image is a file, not
code, and the cache key of a build changes exactly when its inputs change.

The folder is found in a repo checkout (vmimages/ next to devenv/) and in an
installed wheel (devenv/_data/vmimages, force-included by pyproject).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv import paths
from devenv.errors import ExitCode, ImageError, UsageError
from devenv.images.checksums import Digest

ARCHES = ("x86_64", "aarch64")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
SERIAL_CONSOLE = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def normalize_arch(arch: str | None = None) -> str:
    """`x86_64` or `aarch64` for `arch` (any common spelling, by hostos's table), default the host's."""
    from devenv import hostos

    raw = arch or platform.machine()
    norm = hostos.normalize_arch(raw)
    if norm not in ARCHES:
        raise UsageError(f"unsupported architecture `{raw}`", f"use one of: {', '.join(ARCHES)}")
    return norm


@dataclass(frozen=True)
class Artifact:
    """One downloadable file and how to verify it: exactly one of the two is set."""

    url: str
    checksum_url: str = ""
    digest: Digest | None = None

    @property
    def filename(self) -> str:
        """The name the checksum file lists it under: the last URL segment."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ArchSource:
    arch: str
    disk: Artifact
    kernel: Artifact | None = None
    initrd: Artifact | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class BuildSpec:
    """Inputs of an offline builder; opaque to the catalog, read by the builder."""

    suite: str
    packages: tuple[str, ...]
    engine_packages: tuple[str, ...]
    cmdline: str


@dataclass(frozen=True)
class ImageDefinition:
    name: str
    description: str
    path: Path
    arches: dict[str, ArchSource] = field(default_factory=dict)
    builder: str = ""
    build: BuildSpec | None = None

    def source(self, arch: str) -> ArchSource:
        try:
            return self.arches[arch]
        except KeyError:
            have = ", ".join(sorted(self.arches)) or "none"
            raise ImageError(
                f"image `{self.name}` has no {arch} variant (has: {have})",
                f"add an [arch.{arch}] table to {self.path}",
            ) from None


def definitions_dir() -> Path:
    """vmimages/ of a checkout, else the copy packaged in the wheel."""
    found = paths.packaged_dir("vmimages")
    if found is not None:
        return found
    raise ImageError(
        "the image definitions (vmimages/) are missing from this installation",
        "reinstall devenv; the wheel carries them in devenv/_data/vmimages",
    )


def available_names(directory: Path | None = None) -> list[str]:
    folder = directory or definitions_dir()
    return sorted(p.stem for p in folder.glob("*.toml"))


def load(name: str, directory: Path | None = None) -> ImageDefinition:
    """The definition named `name` (as the user types it: `debian-12`)."""
    folder = directory or definitions_dir()
    if not _NAME_RE.match(name):
        raise UsageError(f"`{name}` is not an image name", "see `devenv image list`")
    path = folder / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(available_names(folder)) or "none"
        raise ImageError(
            f"no image named `{name}`",
            f"known images: {names}; or pass a path to a .qcow2 file",
            exit_code=ExitCode.NOT_FOUND,
        )
    return parse(path.read_text(encoding="utf-8"), path)


def load_all(directory: Path | None = None) -> list[ImageDefinition]:
    folder = directory or definitions_dir()
    return [load(n, folder) for n in available_names(folder)]


def parse(text: str, path: Path) -> ImageDefinition:
    """Parse one definition, collecting every problem before raising."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"{path}: not valid TOML: {exc}", "fix the file") from None
    problems: list[str] = []
    name = data.get("name", path.stem)
    if name != path.stem:
        problems.append(f"`name` is {name!r} but the file is named {path.name!r}; they must match")
    for key in data:
        if key not in ("name", "description", "builder", "arch", "build"):
            problems.append(f"unknown key `{key}`")
    arches: dict[str, ArchSource] = {}
    raw_arches = data.get("arch", {})
    if not isinstance(raw_arches, dict) or not raw_arches:
        problems.append("needs at least one [arch.x86_64] or [arch.aarch64] table")
        raw_arches = {}
    for arch, entry in raw_arches.items():
        where = f"arch.{arch}"
        if arch not in ARCHES:
            problems.append(f"`{where}`: architecture must be one of {', '.join(ARCHES)}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"`{where}` must be a table")
            continue
        disk = _artifact(entry, where, problems)
        kernel = _artifact(entry["kernel"], f"{where}.kernel", problems) if "kernel" in entry else None
        initrd = _artifact(entry["initrd"], f"{where}.initrd", problems) if "initrd" in entry else None
        if (kernel is None) != (initrd is None):
            problems.append(f"`{where}`: set both `kernel` and `initrd`, or neither")
        for key in entry:
            if key not in ("url", "checksum_url", "digest", "kernel", "initrd", "cmdline"):
                problems.append(f"`{where}`: unknown key `{key}`")
        if disk is not None:
            arches[arch] = ArchSource(arch, disk, kernel, initrd, str(entry.get("cmdline", "")))
    builder = str(data.get("builder", ""))
    build = _build_spec(data.get("build"), problems) if "build" in data else None
    if builder and build is None:
        problems.append(f"`builder = {builder!r}` needs a [build] table")
    if problems:
        detail = "\n  ".join(problems)
        raise ImageError(f"{path}: invalid image definition:\n  {detail}", "fix the file")
    return ImageDefinition(name, str(data.get("description", name)), path, arches, builder, build)


def _artifact(entry: Any, where: str, problems: list[str]) -> Artifact | None:
    if not isinstance(entry, dict):
        problems.append(f"`{where}` must be a table with `url`")
        return None
    url = entry.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://", "file://")):
        problems.append(f"`{where}.url` must be an http(s):// or file:// URL")
        return None
    checksum_url = entry.get("checksum_url", "")
    pinned = entry.get("digest", "")
    if bool(checksum_url) == bool(pinned):
        problems.append(f"`{where}`: set exactly one of `checksum_url` (fetched at download time) or `digest`")
        return None
    digest = None
    if pinned:
        try:
            digest = Digest.parse(str(pinned))
        except ValueError as exc:
            problems.append(f"`{where}.digest`: {exc}")
            return None
    return Artifact(url, str(checksum_url), digest)


def _build_spec(raw: Any, problems: list[str]) -> BuildSpec | None:
    if not isinstance(raw, dict):
        problems.append("`build` must be a table")
        return None
    missing = [k for k in ("suite", "packages", "cmdline") if k not in raw]
    if missing:
        problems.append(f"`build` is missing {', '.join(missing)}")
        return None
    lists = {}
    for key in ("packages", "engine_packages"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"`build.{key}` must be a list of package names")
            return None
        lists[key] = tuple(value)
    return BuildSpec(str(raw["suite"]), lists["packages"], lists["engine_packages"], str(raw["cmdline"]))
