"""The Debian offline builder: debootstrap a root, add engines, make a bootable qcow2.

Steps (each one reported through the step callback):
  1. debootstrap --variant=minbase SUITE ROOT MIRROR with the definition's
     --include list but its kernel (systemd, sshd, python3, ...).
  2. vmimages/builders/debian/configure.sh pre: the image's initramfs rules,
     among others (see the script).
  3. `chroot ROOT apt-get install --no-install-recommends` the kernel, so its
     one initrd follows those rules, and the engines; podman fails to
     configure inside debootstrap's --include, apt resolves it.
  4. Copy out the kernel and initrd for direct kernel boot, after checking the
     initrd carries virtio_blk, virtio_pci, virtio_mmio (microvm) and ext4
     (root=LABEL=devenv-root must mount). A gzip initrd is stored unpacked:
     under TCG the kernel took 1.5 s to gunzip it at every boot, and 0.4 s
     to read the plain cpio (three times the bytes, a few MiB more on disk).
  5. configure.sh post: boot-path hygiene (see the script).
  6. mkfs.ext4 -d ROOT on a sparse raw file (no loop mounts, no partition
     table), then qemu-img convert to qcow2.

Nothing is mounted by this module. debootstrap mounts /proc and /sys inside the
root while it runs and unmounts them when it exits (also on Ctrl-C); build.py
unmounts anything left under its work folder before deleting it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from devenv import paths
from devenv.errors import CommandFailed, ImageError
from devenv.images.definitions import DEB_ARCH, SERIAL_CONSOLE, BuildSpec, definitions_dir
from devenv.runner import run

StepFn = Callable[[str], None]

MIB = 1024**2
# The root filesystem's label: the kernel command line and the image's fstab
# name root by it (vmimages/debian-12.toml says why not /dev/vda).
ROOT_LABEL = "devenv-root"
# the root disk's driver, its bus on q35/virt (PCI) and on microvm (mmio), its filesystem
_REQUIRED_INITRD_MODULES = ("virtio_blk.ko", "virtio_pci.ko", "virtio_mmio.ko", "ext4.ko")


def configure_script() -> Path:
    return definitions_dir() / "builders" / "debian" / "configure.sh"


def image_assets() -> list[Path]:
    """Files configure.sh installs from /tmp/devenv-image: the seed unit that replaces
    cloud-init at first boot, and the engine scripts (docker.sh configures the
    default engine at build time; busybox.sh makes the busybox root filesystem)."""
    base = paths.packaged_dir("provisioning")
    if base is None:
        raise ImageError("devenv's provisioning files are missing from this installation", "reinstall devenv")
    return [*sorted((base / "image").iterdir()), *sorted((base / "engines").glob("*.sh"))]


def packages(spec: BuildSpec, arch: str) -> list[str]:
    return [p.format(deb_arch=DEB_ARCH[arch]) for p in spec.packages]


def split_kernel(names: list[str]) -> tuple[list[str], list[str]]:
    """(the rest, the kernel packages): the kernel is installed after configure.sh's pre phase.

    Its postinst makes the initrd; installed by debootstrap, that would be
    Debian's MODULES=most one, made before the image's own initramfs rules
    exist, and made again (emulated, minutes for a foreign arch) once they do.
    """
    kernel = [n for n in names if n.startswith("linux-image-")]
    return [n for n in names if n not in kernel], kernel


def cmdline(spec: BuildSpec, arch: str) -> str:
    return spec.cmdline.format(console=SERIAL_CONSOLE[arch])


def _apt_env() -> list[str]:
    return ["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8", "LANG=C.UTF-8"]


def debootstrap(root: Path, spec: BuildSpec, arch: str, mirror: str, include: list[str]) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--arch={DEB_ARCH[arch]}",
        "--components=main",
        f"--include={','.join(include)}",
        spec.suite,
        str(root),
        mirror,
    ]
    result = run(argv)
    if not result.ok:
        log = root / "debootstrap" / "debootstrap.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else result.tail()
        raise ImageError(
            f"debootstrap of {spec.suite} from {mirror} failed (exit {result.returncode}):\n{tail}",
            "check that the mirror is reachable (`apt-get update` on this host) or pass another with --mirror",
        )


def _use_host_resolver(root: Path) -> None:
    """apt inside the chroot resolves the mirror's name with the host's DNS settings."""
    target = root / "etc" / "resolv.conf"
    if target.is_symlink() or target.exists():
        target.unlink()
    host = Path("/etc/resolv.conf")
    target.write_text(host.read_text() if host.exists() else "")


def run_configure(root: Path, phase: str, env: dict[str, str]) -> None:
    script = root / "tmp" / "devenv-configure.sh"
    shutil.copyfile(configure_script(), script)
    staged = root / "tmp" / "devenv-image"
    staged.mkdir(exist_ok=True)
    for asset in image_assets():
        shutil.copyfile(asset, staged / asset.name)
    try:
        argv = ["chroot", str(root), *_apt_env(), *(f"{k}={v}" for k, v in env.items())]
        run([*argv, "/bin/sh", "-eu", "/tmp/devenv-configure.sh", phase]).check(
            hint=f"the image builder's configure.sh ({phase}) failed; see vmimages/builders/debian/configure.sh"
        )
    finally:
        script.unlink(missing_ok=True)
        shutil.rmtree(staged, ignore_errors=True)


def apt_install(root: Path, names: list[str]) -> None:
    if not names:
        return
    _use_host_resolver(root)
    argv = ["chroot", str(root), *_apt_env(), "apt-get", "install", "-y", "--no-install-recommends", *names]
    try:
        run(argv, check=True)
    except CommandFailed as exc:
        raise ImageError(
            f"installing {' '.join(names)} in the image failed: {exc.message}",
            "check the mirror with `apt-get update` on this host, then build again",
        ) from None


def _kernel_files(root: Path) -> tuple[Path, Path]:
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if not kernels:
        raise ImageError(f"no kernel in {boot}", "the kernel package is missing from [build].packages")
    kernel = kernels[-1]
    initrd = boot / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.is_file():
        raise ImageError(f"no initrd for {kernel.name} in {boot}", "initramfs-tools must be installed")
    return kernel, initrd


def extract_boot_files(root: Path, out: Path) -> tuple[Path, Path]:
    """Copy the kernel and initrd next to the disk, world-readable (Debian makes vmlinuz 0600)."""
    kernel, initrd = _kernel_files(root)
    listing = run(["chroot", str(root), "lsinitramfs", f"/boot/{initrd.name}"], check=True).stdout
    names = {line.rsplit("/", 1)[-1] for line in listing.splitlines()}
    missing = [m for m in _REQUIRED_INITRD_MODULES if m not in names]
    if missing:
        raise ImageError(
            f"the initrd {initrd.name} lacks {', '.join(missing)}; the root disk would not mount",
            "list them in /etc/initramfs-tools/modules of the image (vmimages/builders/debian/configure.sh, pre)",
        )
    out_kernel, out_initrd = out / "vmlinuz", out / "initrd.img"
    shutil.copyfile(kernel, out_kernel)
    unpack_initrd(initrd, out_initrd)
    for p in (out_kernel, out_initrd):
        os.chmod(p, 0o644)
    return out_kernel, out_initrd


GZIP_MAGIC = b"\x1f\x8b"


def unpack_initrd(initrd: Path, out: Path) -> None:
    """`initrd` to `out` as a plain cpio when it is gzip (the kernel reads either), else as it is."""
    import gzip

    with open(initrd, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    if not compressed:
        shutil.copyfile(initrd, out)
        return
    with gzip.open(initrd, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def tree_size(root: Path) -> int:
    """Bytes allocated by the files under root (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def disk_size_for(used: int) -> int:
    """Virtual size of the base disk: room for the files plus headroom, 256 MiB steps, >= 2 GiB.

    The base stays small; each instance's overlay is grown to the configured
    disk size and the first boot grows the filesystem (devenv/provision/earlyboot.py).
    """
    want = int(used * 1.25) + 512 * MIB
    step = 256 * MIB
    return max(2048 * MIB, (want + step - 1) // step * step)


def write_manifest(root: Path, dest: Path) -> int:
    """One line per path in the image: `mode uid:gid size /path` (symlinks: `-> target`)."""
    import stat

    count = 0
    with dest.open("w", encoding="utf-8", errors="surrogateescape") as out:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted((*dirnames, *filenames)):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                rel = "/" + os.path.relpath(full, root)
                extra = f" -> {os.readlink(full)}" if stat.S_ISLNK(st.st_mode) else ""
                out.write(f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid} {st.st_size} {rel}{extra}\n")
                count += 1
    return count


def make_disk(
    root: Path,
    work: Path,
    dest: Path,
    *,
    compress: bool = True,
    before_convert: Callable[[Path], None] | None = None,
) -> int:
    """ext4 from the folder (mkfs.ext4 -d, no mounts), converted to a sparse qcow2. Returns the virtual size.

    compress: zstd-compressed qcow2 clusters (QEMU >= 5.1 reads them). Measured
    here: 813 MiB -> 270 MiB for +4 s of build; zlib took 20 s for 279 MiB. The
    base is only read (instances write their overlays), so compressed clusters
    cost nothing on writes. `before_convert(raw)` runs on the raw ext4 disk
    before it becomes the qcow2 (the bake, devenv/images/bake.py).
    """
    raw = work / "disk.raw"
    size = disk_size_for(tree_size(root))
    with raw.open("wb") as f:
        f.truncate(size)
    try:
        run(
            ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-m", "1", "-d", str(root), str(raw)],
            check=True,
            hint="mkfs.ext4 -d needs e2fsprogs >= 1.43",
        )
        if before_convert is not None:
            before_convert(raw)
        argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
        if compress:
            argv += ["-c", "-o", "compression_type=zstd"]
        run([*argv, str(raw), str(dest)], check=True)
    finally:
        raw.unlink(missing_ok=True)
    return size


def build_rootfs(
    root: Path,
    out: Path,
    spec: BuildSpec,
    arch: str,
    mirror: str,
    env: dict[str, str],
    step: StepFn,
) -> tuple[Path, Path]:
    """Steps 1-5: a configured root folder in `root`; kernel and initrd copied to `out`."""
    step(f"debootstrap {spec.suite} ({DEB_ARCH[arch]}) from {mirror}")
    base_packages, kernel_packages = split_kernel(packages(spec, arch))
    debootstrap(root, spec, arch, mirror, base_packages)
    run_configure(root, "pre", env)
    after_pre = [*kernel_packages, *spec.engine_packages]
    step(f"install the kernel and engines: {' '.join(after_pre) or 'none'}")
    apt_install(root, after_pre)
    step("extract kernel and initrd")
    kernel, initrd = extract_boot_files(root, out)
    step("configure boot, network, first boot, sshd, docker (the other engines disabled); shrink")
    run_configure(root, "post", env)
    return kernel, initrd
