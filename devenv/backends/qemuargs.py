"""The QEMU command line for one instance, built from plain values.

Kept free of I/O so each choice (machine, accelerator, devices) is unit-tested
as data. The choices, and why:
- q35 on x86_64 (no floppy for cloud-init to probe; PCIe), virt on aarch64.
- `-nodefaults -no-user-config`: only the devices listed here exist.
- TCG gets a bounded translation cache (tb-size) so QEMU's RSS stays near the
  guest's size; CPU `max` under TCG, `host` under hardware acceleration.
- virtio everywhere (disk, net, rng, balloon with free-page reporting so
  memory the guest frees goes back to the host).
- user networking with the SSH port forwarded on 127.0.0.1 only.
- serial console to a file (read for readiness and for error reports), QMP on
  a unix socket in the 0700 instance directory, a pid file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Where the aarch64 UEFI firmware lives: Homebrew (Apple Silicon and Intel), Debian/Ubuntu, Fedora, MSYS2.
AARCH64_FIRMWARE = (
    "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
    "/usr/local/share/qemu/edk2-aarch64-code.fd",
    "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/edk2/aarch64/QEMU_EFI.fd",
    "C:/msys64/ucrt64/share/qemu/edk2-aarch64-code.fd",
    "C:/Program Files/qemu/share/edk2-aarch64-code.fd",
)
TCG_TB_SIZE_MB = 256


@dataclass(frozen=True)
class VmSpec:
    name: str
    arch: str
    accel: str
    cpus: int
    memory: int  # bytes
    disk: Path
    cidata: Path | None
    ssh_port: int
    serial_log: Path
    qmp_socket: Path
    pid_file: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    firmware: Path | None = None
    extra_hostfwd: tuple[tuple[int, int], ...] = field(default=())  # (host port, guest port)
    shares: tuple[tuple[str, str, bool], ...] = field(default=())  # (tag, host path, writable) via virtio-9p


def find_firmware(arch: str) -> Path | None:
    if arch != "aarch64":
        return None
    for candidate in AARCH64_FIRMWARE:
        if os.path.exists(candidate):
            return Path(candidate)
    return None


def kernel_cmdline(image_cmdline: str, console: str, *, aslr: bool) -> str:
    """The image's kernel command line for this boot; `norandmaps` when the instance opted out of ASLR."""
    cmdline = image_cmdline.replace("{console}", console)
    return cmdline if aslr else f"{cmdline} norandmaps".strip()


def qemu_binary_name(arch: str) -> str:
    return f"qemu-system-{arch}"


def build_argv(spec: VmSpec, binary: str | None = None) -> list[str]:
    accel = spec.accel
    argv = [binary or qemu_binary_name(spec.arch), "-name", f"devenv-{spec.name},process=devenv-{spec.name}"]
    argv += ["-nodefaults", "-no-user-config", "-display", "none"]
    if spec.arch == "x86_64":
        argv += ["-machine", "q35"]
    else:
        argv += ["-machine", "virt" + (",highmem=on" if accel != "tcg" else "")]
    argv += ["-accel", f"tcg,tb-size={TCG_TB_SIZE_MB}" if accel == "tcg" else accel]
    argv += ["-cpu", "max" if accel == "tcg" else "host"]
    argv += ["-smp", str(spec.cpus), "-m", f"{spec.memory // (1024 * 1024)}M"]
    if spec.firmware is not None:
        argv += ["-bios", str(spec.firmware)]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    argv += ["-drive", f"if=virtio,file={spec.disk},format=qcow2,discard=unmap,cache=writeback"]
    if spec.cidata is not None:
        argv += ["-drive", f"if=virtio,file={spec.cidata},format=raw,readonly=on"]
    fwd = [f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"]
    fwd += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in spec.extra_hostfwd]
    argv += ["-netdev", ",".join(["user,id=net0", *fwd]), "-device", "virtio-net-pci,netdev=net0"]
    argv += ["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci,free-page-reporting=on"]
    for tag, path, writable in spec.shares:
        ro = "" if writable else ",readonly=on"
        argv += ["-fsdev", f"local,id={tag},path={path},security_model=none{ro}"]
        argv += ["-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    argv += ["-chardev", f"file,id=serial0,path={spec.serial_log}", "-serial", "chardev:serial0"]
    argv += ["-qmp", f"unix:{spec.qmp_socket},server=on,wait=off"]
    argv += ["-pidfile", str(spec.pid_file)]
    return argv
