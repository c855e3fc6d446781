"""Machine types and CPU models: plain data that validation, doctor's probe and the QEMU driver share.

config.py checks `machine` against MACHINE_ARCH, hostos.py launches QEMU with
devenv's machine and CPU model for doctor's accelerator probe, and the QEMU
driver builds its command line from the same answers. It sits below all three
so that none of them imports the others for it.
"""

from __future__ import annotations

# the machine types devenv.toml accepts besides "auto", and the guest arch each runs
MACHINE_ARCH = {"q35": "x86_64", "microvm": "x86_64", "virt": "aarch64"}


class NeedsDirectKernel(ValueError):
    """The machine boots only an image QEMU starts directly (it has no firmware to boot a disk)."""


def resolve_machine(requested: str, arch: str, *, direct_kernel: bool) -> str:
    """The QEMU machine type for `machine = requested`; ValueError (the reason) when it cannot run here."""
    if requested in ("", "auto"):
        return "q35" if arch == "x86_64" else "virt"
    wanted = MACHINE_ARCH.get(requested)
    if wanted is None:
        raise ValueError(f"unknown machine type {requested!r}; one of auto, {', '.join(MACHINE_ARCH)}")
    if wanted != arch:
        raise ValueError(f"machine {requested!r} is for {wanted} guests; this image is {arch}")
    if requested == "microvm" and not direct_kernel:
        raise NeedsDirectKernel("microvm has no firmware to boot a disk: it needs an image with a kernel and initrd")
    return requested


def cpu_model(arch: str, accel: str) -> str:
    """The host's CPU where hardware runs the guest; else QEMU's `max`, every feature it emulates.

    For aarch64 under TCG, `max` signs pointers with the architected QARMA5
    cipher, which QEMU 7.2 emulates in software at every signed call and
    return; pauth-impdef keeps pointer authentication for the guest, with an
    IMPLEMENTATION DEFINED algorithm QEMU computes cheaply (QEMU's own advice
    for emulation speed). Measured on an x86_64 host (debian-12 arm64, a
    provisioned instance, two alternating starts each): `devenv start` 108.6
    and 106.5 s with plain `max` (84 s to sshd), 42.2 and 46.5 s with it.
    """
    if accel != "tcg":
        return "host"
    return "max,pauth-impdef=on" if arch == "aarch64" else "max"
