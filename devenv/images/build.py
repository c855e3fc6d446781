"""`devenv image build NAME`: make an image offline, cached by a hash of its inputs.

Why a builder at all: official cloud images need the internet, and build or CI
machines often reach only a package mirror. From that mirror alone the Debian
builder (devenv/images/debian.py) makes an image equivalent to the cloud one.

Caching: the inputs (builder version, suite, arch, package lists, mirror,
kernel command line, the bytes of the configure script and of the files it
installs) are hashed; the hash
names the folder builds/<hash>/. A second build with the same inputs finds that
folder and returns in milliseconds (no hashing of the disk). `force=True`
rebuilds, e.g. to pick up security updates from the mirror.

Atomicity: all work happens in tmp/build-<hash>-<pid>/ under the cache folder
(same filesystem), and only the finished outputs are renamed to builds/<hash>/
in one os.rename. Ctrl-C or a crash leaves at most a tmp/ folder, which never
looks valid and is deleted by the next build. A lock file serialises two
concurrent builds of the same inputs.

Privileges: debootstrap and chroot need root, so a normal user gets a
PermissionProblem whose hint says to run with sudo or to `devenv image pull`.
Rootless building (mmdebstrap --mode=unshare) was not adopted: it needs
mmdebstrap, subordinate uid ranges and unprivileged user namespaces, and the
chroot steps would then need an unshare wrapper too; the pull path covers
normal users.

Another architecture than the host's (an arm64 image on an x86_64 host, the
image an Apple Silicon Mac boots) builds the same way once the kernel runs
that architecture's programs through qemu-user: a binfmt_misc handler with
the F flag (Debian's qemu-user-static registers `qemu-aarch64` so), which
keeps working inside the chroot. Without one the build is refused before
anything starts, with the package to install.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from devenv.errors import BackendUnavailable, ImageError, PermissionProblem
from devenv.images import cache, definitions
from devenv.images.cache import ImageRecord
from devenv.images.debian import StepFn
from devenv.pidutil import pid_alive

# 2: the local busybox image imported at build time (devenv/images/bake.py)
# 3: the initrd stored unpacked (devenv/images/debian.py: unpack_initrd)
BUILDER_VERSION = 3
BUILDERS = ("debian",)
REQUIRED_TOOLS = ("debootstrap", "chroot", "mkfs.ext4", "qemu-img")


def _noop(step: str) -> None:
    pass


def inputs(name: str, arch: str, mirror: str, compress: bool = True) -> dict[str, object]:
    """Everything that determines the built image; its hash is the cache key."""
    definition = definitions.load(name)
    spec = _spec(definition)
    from devenv.images import debian

    return {
        "builder": definition.builder,
        "builder_version": BUILDER_VERSION,
        "name": name,
        "arch": arch,
        "suite": spec.suite,
        "packages": debian.packages(spec, arch),
        "engine_packages": list(spec.engine_packages),
        "mirror": mirror.rstrip("/"),
        "cmdline": debian.cmdline(spec, arch),
        "configure_sha256": hashlib.sha256(debian.configure_script().read_bytes()).hexdigest(),
        "assets_sha256": {a.name: hashlib.sha256(a.read_bytes()).hexdigest() for a in debian.image_assets()},
        "compress": compress,
    }


def inputs_hash(data: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


def _spec(definition: definitions.ImageDefinition) -> definitions.BuildSpec:
    if definition.builder not in BUILDERS or definition.build is None:
        raise ImageError(
            f"image `{definition.name}` has no offline builder",
            f"download it with `devenv image pull {definition.name}`, or build debian-12",
        )
    return definition.build


def cached(name: str, arch: str | None = None, mirror: str | None = None, compress: bool = True) -> ImageRecord | None:
    """The finished build for these inputs, or None. Cheap: reads one JSON file."""
    arch = definitions.normalize_arch(arch)
    definition = definitions.load(name)
    spec = _spec(definition)
    from devenv.images import aptsources

    key = inputs_hash(inputs(name, arch, mirror or aptsources.host_mirror(spec.suite), compress))
    return _read_build(cache.builds_dir() / key)


def _read_build(folder: Path) -> ImageRecord | None:
    data = cache.read_json(folder / "build.json")
    if data is None or not isinstance(data.get("record"), dict):
        return None
    try:
        record = ImageRecord.from_json(data["record"], folder)
    except (KeyError, ValueError, TypeError):
        return None
    return record if record.complete() else None


BINFMT_DIR = "/proc/sys/fs/binfmt_misc"


def foreign_arch_runs(arch: str, binfmt_dir: str = BINFMT_DIR) -> bool:
    """Whether the kernel runs `arch` programs inside a chroot: an enabled qemu-user handler with the F flag.

    F ("fix binary") makes the kernel open the interpreter when it is
    registered, so it need not exist inside the chroot being built.
    """
    try:
        with open(os.path.join(binfmt_dir, f"qemu-{arch}"), encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    flags = next((line.partition(":")[2].strip() for line in lines if line.startswith("flags:")), "")
    return bool(lines) and lines[0] == "enabled" and "F" in flags


def _check_host(arch: str) -> None:
    if not sys.platform.startswith("linux"):
        raise ImageError(
            "building an image needs a Linux host (debootstrap and chroot)",
            "download the official image instead: `devenv image pull debian-12`",
        )
    host = definitions.normalize_arch(None)
    if arch != host and not foreign_arch_runs(arch):
        raise ImageError(
            f"building a {arch} image on a {host} host needs {arch} programs to run here through qemu-user"
            f" (no enabled binfmt_misc handler {BINFMT_DIR}/qemu-{arch} with the F flag)",
            f"install it: `apt-get install qemu-user-static binfmt-support`, or pull the image instead:"
            f" `devenv image pull debian-12 --arch {arch}`",
        )
    if os.geteuid() != 0:
        raise PermissionProblem(
            "building an image needs root: debootstrap and chroot do",
            "run `sudo devenv image build debian-12` (keep your cache with `sudo -E` or DEVENV_CACHE), "
            "or download the official image: `devenv image pull debian-12`",
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise BackendUnavailable(
            f"building an image needs {', '.join(missing)}",
            "install them: `apt-get install debootstrap e2fsprogs qemu-utils`",
        )


def build(
    name: str = "debian-12",
    arch: str | None = None,
    *,
    mirror: str | None = None,
    progress: StepFn | None = None,
    force: bool = False,
    compress: bool = True,
) -> ImageRecord:
    """Build image `name` offline (or return the cached build) and make it the cached image for name/arch.

    `mirror` defaults to the Debian mirror of the host's apt configuration.
    `progress(step)` is called with a short description before each step.
    Raises PermissionProblem when not root, ImageError when a step fails.
    """
    step = progress or _noop
    arch = definitions.normalize_arch(arch)
    definition = definitions.load(name)
    spec = _spec(definition)
    if mirror is None:
        from devenv.images import aptsources

        mirror = aptsources.host_mirror(spec.suite)
    data = inputs(name, arch, mirror, compress)
    key = inputs_hash(data)
    final = cache.builds_dir() / key
    if not force:
        hit = _read_build(final)
        if hit is not None:
            step(f"cached build {key}")
            _select(hit)
            return hit
    _check_host(arch)
    cache.tmp_dir().mkdir(parents=True, exist_ok=True)
    with _lock(cache.tmp_dir() / f"build-{key}.lock"):
        if not force:
            hit = _read_build(final)
            if hit is not None:  # a concurrent build finished while we waited
                _select(hit)
                return hit
        _remove_stale_work()
        work = cache.tmp_dir() / f"build-{key}-{os.getpid()}"
        try:
            record = _build_into(work, final, definition, spec, arch, mirror, data, key, step, compress)
        finally:
            remove_tree(work)
    cache.write_record(record)
    step(f"done: {record.disk} ({record.size // (1024 * 1024)} MiB)")
    return record


def _select(record: ImageRecord) -> None:
    """Make `record` the cached image for its name/arch, writing only when that changes.

    A cache built by root and shared read-only with ordinary users (CI does
    this) must serve a cache hit without any write.
    """
    current = cache.read_record(record.name, record.arch)
    if current is not None and current.disk == record.disk and current.digest == record.digest:
        return
    cache.write_record(record)


def _build_into(
    work: Path,
    final: Path,
    definition: definitions.ImageDefinition,
    spec: definitions.BuildSpec,
    arch: str,
    mirror: str,
    data: dict[str, object],
    key: str,
    step: StepFn,
    compress: bool,
) -> ImageRecord:
    from devenv.images import bake, checksums, debian

    root, out = work / "root", work / "out"
    root.mkdir(parents=True)
    out.mkdir()
    env = {
        "DEVENV_IMAGE": definition.name,
        "DEVENV_BUILDER_VERSION": str(BUILDER_VERSION),
        "DEVENV_ENGINES": " ".join(_engine_names(spec.engine_packages)),
    }
    timings: dict[str, float] = {}
    started = time.monotonic()
    kernel, initrd = debian.build_rootfs(root, out, spec, arch, mirror, env, step)
    timings["rootfs"] = time.monotonic() - started
    step("write manifest")
    files = debian.write_manifest(root, out / "manifest.txt")
    skip = bake.skip_reason(arch, (root / bake.BAKE_INIT.lstrip("/")).is_file())

    def bake_local_image(raw: Path) -> None:
        if skip is not None:
            step(f"import the local devenv/busybox image: skipped ({skip})")
        else:
            step("import the local devenv/busybox image into the disk's dockerd (boots it once)")
            t = time.monotonic()
            accel = bake.bake(arch, raw, kernel, initrd, debian.cmdline(spec, arch), work)
            bake.run_check(raw)
            timings["bake"] = time.monotonic() - t
            meta_extra["bake"] = {"accelerator": accel}
        step("convert to qcow2")

    meta_extra: dict[str, object] = {}
    step("make ext4 filesystem")
    t = time.monotonic()
    virtual = debian.make_disk(root, work, out / "disk.qcow2", compress=compress, before_convert=bake_local_image)
    timings["disk"] = time.monotonic() - t - timings.get("bake", 0.0)
    remove_tree(root)
    step("hash disk")
    digest = checksums.hash_file(out / "disk.qcow2")["sha256"]
    timings["total"] = time.monotonic() - started
    record = ImageRecord(
        name=definition.name,
        arch=arch,
        source="built",
        disk=final / "disk.qcow2",
        size=(out / "disk.qcow2").stat().st_size,
        digest=f"sha256:{digest}",
        kernel=final / "vmlinuz",
        initrd=final / "initrd.img",
        cmdline=debian.cmdline(spec, arch),
        origin=f"build:{key}",
        created=cache.now(),
    )
    meta = {
        "inputs": data,
        "key": key,
        "record": record.to_json(final),
        "virtual_size": virtual,
        "files": files,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        **meta_extra,
    }
    cache.write_json_atomic(out / "build.json", meta)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # force=True over an old build, or a racing builder without our lock
        remove_tree(final)
    os.rename(out, final)
    return record


def _engine_names(engine_packages: tuple[str, ...]) -> list[str]:
    known = {"docker.io": "docker", "podman": "podman", "containerd": "containerd"}
    return [known.get(p, p) for p in engine_packages]


class _lock:
    """An exclusive flock on a file for the duration of a with-block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _remove_stale_work() -> None:
    """Delete tmp/build-*-<pid> folders whose process is gone (a killed build)."""
    for folder in cache.tmp_dir().glob("build-*-*"):
        if not folder.is_dir():
            continue
        pid_text = folder.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit():
            continue
        if not pid_alive(int(pid_text)):
            remove_tree(folder)


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first, from /proc/self/mountinfo."""
    prefix = str(folder.resolve())
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(folder: Path) -> None:
    """rm -rf that first unmounts anything a killed debootstrap left mounted inside."""
    if not folder.exists():
        return
    from devenv.runner import run

    for point in mounts_under(folder):
        run(["umount", "-l", point])
    if mounts_under(folder):
        raise ImageError(
            f"cannot clean up {folder}: something is still mounted inside it",
            f"unmount it by hand (`grep {folder} /proc/mounts`), then delete the folder",
        )
    shutil.rmtree(folder, ignore_errors=True)
