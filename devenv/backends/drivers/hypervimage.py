"""The base image as Hyper-V reads it: one dynamic VHDX per qcow2 base, converted once, named by its digest.

Hyper-V opens VHD and VHDX only. qemu-img converts (as Multipass does);
`subformat=dynamic` keeps the file as small as the data in it. The result is
named by the qcow2's sha256, so every instance of one image shares one
VHDX, a re-pulled image with other contents gets its own, and a conversion
cut short (a `.part` file) is never taken for a finished one.
"""

from __future__ import annotations

import os
from pathlib import Path

from devenv import hostdisk, paths
from devenv.runner import run

VHDX_DIR = "hyperv"  # under the cache dir
QEMU_IMG_HINT = (
    "qemu-img converts the image for Hyper-V: install QEMU (Windows: `winget install SoftwareFreedomConservancy.QEMU`"
    " and put its folder on PATH; Debian: apt-get install qemu-utils)"
)


def image_key(digest: str, base: Path) -> str:
    """What names a base's VHDX: its sha256, or for a user's own qcow2 (not hashed) its path, size and time.

    The second changes when the file does, so an edited local image is converted again.
    """
    if digest:
        return digest.removeprefix("sha256:")
    import hashlib

    st = base.stat()
    return "local-" + hashlib.sha256(f"{base.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def vhdx_path(digest: str) -> Path:
    """Where the VHDX of the base with this key (image_key; "sha256:HEX" also) lives."""
    return paths.cache_dir() / VHDX_DIR / f"base-{digest.removeprefix('sha256:')[:32]}.vhdx"


def convert_once(base: Path, digest: str) -> tuple[Path, bool]:
    """The VHDX of `base`, converted now if it is not there yet; and whether it was converted now."""
    out = vhdx_path(digest)
    if out.is_file():
        return out, False
    convert(base, out)
    return out, True


def convert(src: Path, dst: Path) -> None:
    """qemu-img convert to a dynamic VHDX, written aside and renamed into place when complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    argv = ["qemu-img", "convert", "-q", "-O", "vhdx", "-o", "subformat=dynamic", str(src), str(part)]
    try:
        done = run(argv, hint=QEMU_IMG_HINT)
        if not done.ok and hostdisk.said_full(done.stderr + done.stdout):
            raise hostdisk.full(dst, src.stat().st_size, "the image converted for Hyper-V")
        done.check(QEMU_IMG_HINT)
        os.replace(part, dst)
    finally:
        part.unlink(missing_ok=True)
