"""An image's root filesystem as the tarball `wsl.exe --import` takes (`devenv image export NAME --format wsl`).

The distro comes from the same image as the VMs, so a WSL2 instance runs
what a QEMU one does. An image devenv built is one ext4 filesystem without a
partition table (vmimages/builders/debian/configure.sh); its files come out
of the qcow2 without a mount or a loop device: `qemu-img convert` to a
sparse raw file, `debugfs -R "rdump / DIR"` (e2fsprogs) to copy the tree
out, then a tar with numeric owners. debugfs gives the files their owners
only when run as root, so the export needs root; device nodes, extended
attributes (file capabilities) and hard links do not survive rdump: WSL
makes /dev itself, and no file devenv's provisioning needs carries them.

The tarball is kept in devenv's image cache (reused while the image is the
same), so a second instance imports at once. It is made on a Linux host (or inside
WSL): Windows has no debugfs.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from devenv.errors import BackendUnavailable, ImageError, NotSupported
from devenv.runner import run

ROOTFS_NAME = "wsl-rootfs.tar"
EXT_MAGIC_OFFSET = 1024 + 56  # the ext2/3/4 superblock's s_magic
EXT_MAGIC = b"\x53\xef"


def rootfs_path(disk: Path) -> Path:
    """Where the tarball of this image's disk is kept: in devenv's cache, named by the disk's path.

    Not beside the disk: a local image is the user's file, in a folder that is theirs.
    """
    import hashlib

    from devenv.images import cache

    key = hashlib.sha256(str(disk.resolve()).encode()).hexdigest()[:24]
    return cache.images_dir() / "wsl" / f"{key}.{ROOTFS_NAME}"


def is_current(tarball: Path, disk: Path) -> bool:
    """Made from this very disk: newer than it (a rebuilt image gets a new disk, and so a new tarball)."""
    try:
        return tarball.stat().st_mtime >= disk.stat().st_mtime
    except OSError:
        return False


def export(
    disk: Path,
    out: Path | None = None,
    *,
    step: Callable[[str], None] = lambda _: None,
) -> Path:
    """The rootfs tarball of a qcow2 (or raw) image of one ext4 filesystem; made once, then reused."""
    target = out or rootfs_path(disk)
    if out is None and is_current(target, disk):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.name == "nt":
        raise NotSupported(
            "wsl2",
            "making a rootfs tarball on Windows (it needs e2fsprogs' debugfs)",
            "on Linux or inside a WSL distro run `devenv image export IMAGE --format wsl -o rootfs.tar`,"
            f" then copy rootfs.tar to {target}",
        )
    for tool, package in (("qemu-img", "qemu-utils"), ("debugfs", "e2fsprogs")):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise BackendUnavailable(
                f"`{tool}` is needed to export an image for WSL", f"sudo apt-get install {package}"
            )
    debugfs = shutil.which("debugfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "debugfs"
    with tempfile.TemporaryDirectory(prefix="devenv-wsl-export-", dir=target.parent) as work:
        raw = Path(work) / "disk.raw"
        step(f"convert {disk.name} to a raw filesystem")
        run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True, timeout=1800)
        check_bare_ext(raw, disk)
        tree = Path(work) / "root"
        tree.mkdir()
        step("copy the files out of the filesystem (debugfs rdump)")
        result = run([debugfs, "-R", f"rdump / {tree}", str(raw)], check=True, timeout=1800)
        bad = [ln for ln in result.stderr.splitlines() if "rdump" in ln and "error" in ln.lower()]
        if bad:
            raise ImageError(f"debugfs could not copy every file out of {disk}:\n" + "\n".join(bad[:10]))
        step("read the files' owners and modes (debugfs ls -p)")
        owners = read_owners(debugfs, raw, tree, Path(work) / "ls.cmds")
        raw.unlink()
        step(f"write {target.name}")
        partial = target.with_name(target.name + ".part")
        write_tar(tree, partial, owners)
        os.replace(partial, target)
    return target


def check_bare_ext(raw: Path, disk: Path) -> None:
    """The disk is one ext filesystem from its first byte (what devenv builds); a partitioned one is refused."""
    with open(raw, "rb") as f:
        f.seek(EXT_MAGIC_OFFSET)
        magic = f.read(2)
    if magic != EXT_MAGIC:
        raise NotSupported(
            "wsl2",
            f"exporting {disk.name}: it is not one ext4 filesystem without partitions",
            "export an image devenv built (`devenv image build debian-12`); pulled cloud images are partitioned",
        )


Owner = tuple[int, int, int]  # mode (permission bits with set-uid, set-gid, sticky), uid, gid


def read_owners(debugfs: str, raw: Path, tree: Path, cmds: Path) -> dict[str, Owner]:
    """Every entry's mode, uid and gid as the filesystem holds them, by its path relative to the root.

    One debugfs run lists every directory rdump made (`ls -p` prints
    `/inode/mode/uid/gid/name/size/` a line, the mode in octal).
    """
    dirs = [""]
    for here, subdirs, _ in os.walk(tree):
        rel = os.path.relpath(here, tree)
        dirs += [os.path.normpath(os.path.join(rel, d)) for d in subdirs if not os.path.islink(os.path.join(here, d))]
    cmds.write_text("".join(f'ls -p "/{d}"\n' for d in dirs))
    out = run([debugfs, "-f", str(cmds), str(raw)], check=True, timeout=1800).stdout
    return parse_ls_p(out)


def parse_ls_p(out: str) -> dict[str, Owner]:
    """debugfs `-f` output of `ls -p "/DIR"` commands (each echoed as `debugfs: ls -p "/DIR"`) -> path -> owner."""
    owners: dict[str, Owner] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("debugfs: ls -p "):
            current = line[len("debugfs: ls -p ") :].strip().strip('"').strip("/")
            continue
        fields = line.split("/")
        if len(fields) < 7 or fields[0] != "" or fields[5] in (".", ".."):
            continue
        try:
            mode, uid, gid = int(fields[2], 8), int(fields[3]), int(fields[4])
        except ValueError:
            continue
        name = "/".join(fields[5:-2])  # a name cannot hold "/", but be exact about the fields around it
        owners[f"{current}/{name}" if current else name] = (mode & 0o7777, uid, gid)
    return owners


def write_tar(tree: Path, out: Path, owners: dict[str, Owner]) -> None:
    """A tar of `tree` as `./...`: the filesystem's owners and modes, numeric (the host's names mean nothing)."""

    def numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
        known = owners.get(info.name.removeprefix("./"))
        if known is not None:
            info.mode, info.uid, info.gid = known
        info.uname = info.gname = ""
        return info

    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for entry in sorted(os.listdir(tree)):
            tar.add(tree / entry, arcname=f"./{entry}", recursive=True, filter=numeric)
