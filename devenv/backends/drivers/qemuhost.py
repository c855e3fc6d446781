"""What this host has for QEMU: the emulator for a guest's arch, its firmware, and whether 9p can share folders.

Each miss is a BackendUnavailable with the exact install command for this
host's system (Homebrew, winget, apt with Fedora's name beside it).

Where QEMU lives on a Mac: Homebrew installs under /opt/homebrew on Apple
Silicon and /usr/local on Intel, MacPorts under /opt/local; each puts the
emulators in PREFIX/bin and QEMU's own firmware (edk2-aarch64-code.fd) in
PREFIX/share/qemu. Lima's getFirmware (pkg/driver/qemu/qemu.go) looks
beside the binary the same way (`<binary's dir>/../share/qemu/edk2-<arch>-code.fd`,
"macOS (homebrew)"), and `qemu-system-* -L help` prints the data folders
the binary itself searches (recorded from Debian's QEMU 7.2:
"/usr/bin/../share/qemu").
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.backends.drivers.qemuargs import qemu_binary_name as binary_name
from devenv.backends.drivers.qemuproc import has_9p
from devenv.errors import BackendUnavailable

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef

# How to install what a guest of another arch needs, by host system ("linux": Debian's names, then Fedora's).
_INSTALL_HINTS = {
    "qemu-system-aarch64": {
        "macos": "brew install qemu (MacPorts: sudo port install qemu)",
        "windows": "winget install SoftwareFreedomConservancy.QEMU",
        "linux": "sudo apt-get install qemu-system-arm qemu-efi-aarch64 (Fedora: dnf install qemu-system-aarch64)",
    },
    "qemu-system-x86_64": {
        "macos": "brew install qemu (MacPorts: sudo port install qemu)",
        "windows": "winget install SoftwareFreedomConservancy.QEMU",
        "linux": "sudo apt-get install qemu-system-x86 (Fedora: dnf install qemu-system-x86)",
    },
    "aarch64 firmware": {
        "macos": "brew install qemu (it ships edk2-aarch64-code.fd; MacPorts: sudo port install qemu)",
        "windows": "install QEMU from qemu.org or MSYS2 (both ship edk2-aarch64-code.fd)",
        "linux": "sudo apt-get install qemu-efi-aarch64 (Fedora: dnf install edk2-aarch64)",
    },
}


def _install_hint(what: str, system: str) -> str:
    hints = _INSTALL_HINTS[what]
    return hints.get(system, hints["linux"])


# Homebrew on Apple Silicon, Homebrew on an Intel Mac, MacPorts: where a Mac's QEMU is when it is not on PATH
PACKAGE_PREFIXES = ("/opt/homebrew", "/usr/local", "/opt/local")

# UEFI for an aarch64 guest by the name QEMU itself installs it under (PREFIX/share/qemu), then where
# Linux distributions and Windows installers put theirs (Debian, Debian/Fedora AAVMF, Fedora, MSYS2, qemu.org).
FIRMWARE_NAME = {"aarch64": "edk2-aarch64-code.fd"}
SYSTEM_FIRMWARE = {
    "aarch64": (
        "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/edk2/aarch64/QEMU_EFI.fd",
        "C:/msys64/ucrt64/share/qemu/edk2-aarch64-code.fd",
        "C:/Program Files/qemu/share/edk2-aarch64-code.fd",
    )
}


def off_path_qemu(name: str, root: str = "") -> str | None:
    """A Mac's QEMU installed by Homebrew or MacPorts where PATH does not reach (a GUI-started editor's PATH).

    `root`: where the prefixes are (tests give a fake tree; "" is the real one).
    """
    for prefix in PACKAGE_PREFIXES:
        candidate = f"{root}{prefix}/bin/{name}"
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def path_hint(binary: str) -> str:
    """The exact command that puts an off-PATH QEMU on PATH: Homebrew's own shellenv, or MacPorts' bin."""
    bindir = os.path.dirname(binary)
    prefix = os.path.dirname(bindir)
    if os.path.exists(os.path.join(bindir, "brew")):
        return f'eval "$({bindir}/brew shellenv)" (add it to your shell\'s profile), then run devenv again'
    if prefix.endswith("/opt/local"):
        return f'export PATH="{bindir}:$PATH" (MacPorts; add it to your shell\'s profile), then run devenv again'
    return f'export PATH="{bindir}:$PATH" (add it to your shell\'s profile), then run devenv again'


def check_qemu(arch: str) -> str:
    """The qemu-system binary for `arch`, or BackendUnavailable with the install command.

    On a Mac a QEMU that Homebrew or MacPorts installed off PATH is named with
    the command that puts it on PATH, rather than asked to be installed again:
    qemu-img and the firmware are found through the same PATH.
    """
    from devenv.hostos import current

    binary = shutil.which(binary_name(arch))
    has_img = shutil.which("qemu-img") is not None
    if binary is None or not has_img:
        from devenv.backends.availability import qemu

        host = current()
        if host.system == "macos":
            elsewhere = off_path_qemu(binary_name(arch) if binary is None else "qemu-img")
            if elsewhere is not None:
                raise BackendUnavailable(
                    f"{os.path.basename(elsewhere)} is installed in {os.path.dirname(elsewhere)}, which is not on PATH",
                    path_hint(elsewhere),
                )
        if arch != host.arch and has_img:
            raise BackendUnavailable(
                f"{binary_name(arch)} was not found on PATH: it runs {arch} guests",
                _install_hint(binary_name(arch), host.system),
            )
        probe = qemu(host)
        raise BackendUnavailable(probe.detail or "QEMU is not installed", probe.fix)
    return binary


def data_dirs(binary: str, run: Callable[[list[str]], str | None] | None = None) -> list[str]:
    """The folders QEMU itself looks for firmware in (`-L help`, one per line), [] when it will not say."""
    if run is None:
        from devenv.hostos import _quiet

        run = _quiet
    out = run([binary, "-L", "help"]) or ""
    return [line.strip() for line in out.splitlines() if line.strip().startswith(("/", "C:", "c:"))]


def firmware_candidates(
    arch: str, binary: str | None = None, qemu_dirs: Sequence[str] = (), root: str = ""
) -> list[str]:
    """Where an `arch` guest's UEFI may be, in the order tried.

    QEMU's own data folders first (`-L help`), then the share folder beside the
    binary (through its symlink too: Homebrew's /opt/homebrew/bin/qemu-* point
    into its Cellar), then Homebrew's and MacPorts' prefixes, then the
    distributions' files. `root`: where the fixed paths are (tests give a fake tree).
    """
    name = FIRMWARE_NAME.get(arch)
    if name is None:
        return []
    found = [os.path.join(d, name) for d in qemu_dirs]
    if binary is not None:
        for b in dict.fromkeys((binary, os.path.realpath(binary))):
            bindir = os.path.dirname(b)
            found.append(os.path.join(os.path.dirname(bindir), "share", "qemu", name))  # PREFIX/share/qemu
            found.append(os.path.join(bindir, "share", name))  # the Windows installer's layout
    found += [f"{root}{prefix}/share/qemu/{name}" for prefix in PACKAGE_PREFIXES]
    found += [f"{root}{path}" for path in SYSTEM_FIRMWARE.get(arch, ())]
    return list(dict.fromkeys(found))


def find_firmware(arch: str, binary: str | None = None, qemu_dirs: Sequence[str] = (), root: str = "") -> Path | None:
    for candidate in firmware_candidates(arch, binary, qemu_dirs, root):
        if os.path.isfile(candidate):
            return Path(candidate)
    return None


def firmware(arch: str, *, direct_kernel: bool, binary: str | None = None) -> Path | None:
    """UEFI for an aarch64 guest that boots from its disk (a pulled cloud image).

    A kernel QEMU starts itself needs none: QEMU's own boot code and device
    tree start it, seconds sooner under TCG than EDK2 would.
    """
    if arch != "aarch64" or direct_kernel:
        return None
    qemu_dirs = data_dirs(binary) if binary is not None else []
    firmware = find_firmware(arch, binary, qemu_dirs)
    if firmware is None:
        from devenv.hostos import current

        looked = firmware_candidates(arch, binary, qemu_dirs)
        raise BackendUnavailable(
            "no UEFI firmware for aarch64 guests was found (looked in " + ", ".join(looked) + ")",
            _install_hint("aarch64 firmware", current().system),
        )
    return firmware


# QEMU 7.0 is the first whose 9p server runs on a macOS host: qemu/qemu meson.build, have_virtfs, requires
# host_os linux or darwin (and pthread_fchdir_np on darwin) since the 9p darwin series merged for 7.0.
NINEP_ON_MACOS = (7, 0, 0)


def mount_kind(
    system: str,
    qemu_version: tuple[int, int, int] | None,
    lists_9p: bool,
    host_uid: int | None,
    guest_uid: int,
    forced: str = "",
) -> tuple[str, str]:
    """9p or reverse sshfs for the project mounts on this host, and why: a function of host facts alone.

    On a Mac the answer is 9p, as on Linux, wherever QEMU can serve it:
    - QEMU has a 9p server for macOS hosts since 7.0 (qemu/qemu meson.build,
      have_virtfs: "virtio-9p (virtfs) requires Linux or macOS").
    - Homebrew's QEMU is built with it: its formula passes --enable-virtfs on
      every system, macOS included, not only in its on_linux block
      (Homebrew/homebrew-core Formula/q/qemu.rb, QEMU 10.2.0). MacPorts' or a
      self-built QEMU may not be, which `-device help` shows (lists_9p).
    - Lima, on Macs for years, mounts with 9p by default under QEMU since
      v1.0 (lima-vm/lima pkg/limayaml/defaults.go FillDefault: MountType
      NINEP for QEMU, REVSSHFS only where 9p is unsupported), with
      security_model=none as devenv does.
    9p shows the guest the host's owners and modes as they are, so it also
    needs the guest user to have the host user's uid (a Mac's 501 is in
    userdata.guest_uid's range). `forced` is DEVENV_MOUNT_TYPE: sshfs always
    wins; 9p skips the uid rule but not QEMU's lack of 9p.
    """
    if forced == "sshfs":
        return "sshfs", "DEVENV_MOUNT_TYPE=sshfs"
    if not lists_9p:
        return "sshfs", "this QEMU has no virtio-9p-pci device (built without virtfs)"
    if system == "macos" and qemu_version is not None and qemu_version < NINEP_ON_MACOS:
        return "sshfs", f"QEMU {'.'.join(map(str, qemu_version))} has no 9p server on macOS (7.0 added it)"
    if forced == "9p":
        return "9p", "DEVENV_MOUNT_TYPE=9p"
    if host_uid is None or host_uid != guest_uid:
        return "sshfs", "the guest user's uid is not the host user's, so 9p would show it files it cannot use"
    return "9p", "QEMU serves 9p here and the guest user has the host user's uid"


def shares(inst: InstanceRef, binary: str) -> tuple[tuple[str, str, bool], ...]:
    """virtio-9p shares for the configured mounts when mount_kind says 9p (else the agent uses sshfs)."""
    forced = os.environ.get("DEVENV_MOUNT_TYPE", "").lower()
    if not inst.config.mounts or forced == "sshfs":
        return ()
    from devenv.hostagent.mounts import qemu_shares
    from devenv.hostos import current, parse_qemu_version
    from devenv.provision.userdata import guest_uid

    system = current().system
    version = None
    if system == "macos":  # only a Mac's answer depends on it
        from devenv.hostos import _quiet

        version = parse_qemu_version(_quiet([binary, "--version"]) or "")
    getuid = getattr(os, "getuid", None)
    kind, _ = mount_kind(system, version, has_9p(binary), getuid() if getuid else None, guest_uid(), forced)
    return qemu_shares(inst.config.mounts) if kind == "9p" else ()


def with_boot_mounts(
    cmdline: str, inst: InstanceRef, shares: tuple[tuple[str, str, bool], ...], *, direct_kernel: bool
) -> str:
    """The kernel command line, naming the 9p shares the guest mounts itself at boot (hostagent.mounts).

    Only a kernel QEMU boots directly gets a command line of ours; one booted through its firmware
    reads its own, and its shares are mounted by the host agent.
    """
    if not shares or not direct_kernel:
        return cmdline
    from devenv.hostagent.mounts import boot_mount_args

    return f"{cmdline} {boot_mount_args(inst.config.mounts)}".strip()
