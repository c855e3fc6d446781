"""What this host has for QEMU: the emulator for a guest's arch, its firmware, and whether 9p can share folders.

Each miss is a BackendUnavailable with the exact install command for this
host's system (Homebrew, winget, apt with Fedora's name beside it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.backends.drivers.qemuargs import AARCH64_FIRMWARE, find_firmware
from devenv.backends.drivers.qemuargs import qemu_binary_name as binary_name
from devenv.backends.drivers.qemuproc import has_9p
from devenv.errors import BackendUnavailable

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef

# How to install what a guest of another arch needs, by host system ("linux": Debian's names, then Fedora's).
_INSTALL_HINTS = {
    "qemu-system-aarch64": {
        "macos": "brew install qemu",
        "windows": "winget install SoftwareFreedomConservancy.QEMU",
        "linux": "sudo apt-get install qemu-system-arm qemu-efi-aarch64 (Fedora: dnf install qemu-system-aarch64)",
    },
    "qemu-system-x86_64": {
        "macos": "brew install qemu",
        "windows": "winget install SoftwareFreedomConservancy.QEMU",
        "linux": "sudo apt-get install qemu-system-x86 (Fedora: dnf install qemu-system-x86)",
    },
    "aarch64 firmware": {
        "macos": "brew install qemu (it ships edk2-aarch64-code.fd)",
        "windows": "install QEMU from qemu.org or MSYS2 (both ship edk2-aarch64-code.fd)",
        "linux": "sudo apt-get install qemu-efi-aarch64 (Fedora: dnf install edk2-aarch64)",
    },
}


def _install_hint(what: str, system: str) -> str:
    hints = _INSTALL_HINTS[what]
    return hints.get(system, hints["linux"])


def check_qemu(arch: str) -> str:
    """The qemu-system binary for `arch`, or BackendUnavailable with the install command."""
    from devenv.hostos import current

    binary = shutil.which(binary_name(arch))
    has_img = shutil.which("qemu-img") is not None
    if binary is None or not has_img:
        from devenv.backends.availability import qemu

        host = current()
        if arch != host.arch and has_img:
            raise BackendUnavailable(
                f"{binary_name(arch)} was not found on PATH: it runs {arch} guests",
                _install_hint(binary_name(arch), host.system),
            )
        probe = qemu(host)
        raise BackendUnavailable(probe.detail or "QEMU is not installed", probe.fix)
    return binary


def firmware(arch: str, *, direct_kernel: bool) -> Path | None:
    """UEFI for an aarch64 guest that boots from its disk (a pulled cloud image).

    A kernel QEMU starts itself needs none: QEMU's own boot code and device
    tree start it, seconds sooner under TCG than EDK2 would.
    """
    if arch != "aarch64" or direct_kernel:
        return None
    firmware = find_firmware(arch)
    if firmware is None:
        from devenv.hostos import current

        raise BackendUnavailable(
            "no UEFI firmware for aarch64 guests was found (looked in " + ", ".join(AARCH64_FIRMWARE) + ")",
            _install_hint("aarch64 firmware", current().system),
        )
    return firmware


def shares(inst: InstanceRef, binary: str) -> tuple[tuple[str, str, bool], ...]:
    """virtio-9p shares for the configured mounts, when 9p can serve them (else the agent uses sshfs).

    9p shows the guest the host's owners and modes as they are, so it is only
    used when the guest user has the host user's uid (see userdata.guest_uid):
    not for root on the host, whose files the guest user could not read.
    DEVENV_MOUNT_TYPE=sshfs forces reverse sshfs, DEVENV_MOUNT_TYPE=9p forces 9p.
    """
    forced = os.environ.get("DEVENV_MOUNT_TYPE", "").lower()
    if not inst.config.mounts or forced == "sshfs":
        return ()
    from devenv.hostagent.mounts import qemu_shares
    from devenv.provision.userdata import guest_uid

    getuid = getattr(os, "getuid", None)
    if forced != "9p" and (getuid is None or getuid() != guest_uid()):
        return ()
    return qemu_shares(inst.config.mounts) if has_9p(binary) else ()
