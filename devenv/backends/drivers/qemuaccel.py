"""Which accelerator and machine a QEMU guest gets, and what happens when the accelerator lets it down.

auto picks hvf, kvm or whpx where the host offers one, else tcg (software
emulation); a guest of another architecture is always emulated. Two ways an
accelerator auto picked fails, each seen on cloud VMs with broken nested
virtualisation, and each answered by booting under tcg instead with a
warning: QEMU exits at once naming the accelerator (AcceleratorFailed), or
QEMU runs but the guest never prints a line (GuestSilent; remembered in
ACCEL_HUNG so later starts skip the minute). An accelerator the user named
is never replaced: its error stands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from devenv import paths
from devenv.backends.drivers.qemuargs import NeedsDirectKernel, microvm_tcg_cmdline, resolve_machine
from devenv.backends.drivers.qemuproc import host_tsc_khz
from devenv.backends.vm.driver import Boot, BootStalled
from devenv.errors import CommandFailed, ConfigError, DevenvError

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, StepReporter

ACCEL_HUNG = "accel-hung"  # in the instance dir: the accelerator auto picked hung this guest; tcg from then on
SILENT_BOOT_LIMIT = 60.0  # s: a console still empty this long under kvm/hvf/whpx is a guest that does not run


class AcceleratorFailed(CommandFailed):
    """QEMU exited right after launch and its log names the accelerator: nothing booted, TCG may."""

    def __init__(self, message: str, hint: str, reason: str) -> None:
        super().__init__(message, hint)
        self.reason = reason  # QEMU's first error line


class GuestSilent(BootStalled):
    """The console stayed empty under a hardware accelerator: the guest does not run there, TCG may."""


def accelerator_error(log: Path, accel: str) -> str | None:
    """QEMU's first error line in its log when that names `accel` (see hostos.qemu_error_line)."""
    from devenv.hostos import qemu_error_line

    try:
        return qemu_error_line(log.read_text(errors="replace"), accel)
    except OSError:
        return None


def hung_before(inst_dir: Path) -> str | None:
    """The accelerator auto picked that once left this instance's guest silent (see ACCEL_HUNG)."""
    try:
        return (inst_dir / ACCEL_HUNG).read_text().strip() or None
    except OSError:
        return None


def accel_choice(inst: InstanceRef, arch: str) -> tuple[str, str]:
    """The accelerator for a guest of `arch` and who chose it (see availability.accelerator_choice).

    hvf, kvm and whpx run only the host's own architecture.
    """
    from devenv import config
    from devenv.backends.availability import ACCEL_ENV, accelerator_choice
    from devenv.hostos import current

    host = current()
    accel, source = accelerator_choice(host, inst.config.accelerator, arch)
    if source == "auto" and accel != "tcg" and hung_before(inst.dir) == accel:
        return "tcg", "auto"  # it hung this guest before: not another minute of silence per start
    if arch != host.arch and accel != "tcg":  # only a setting can have named another (auto gives tcg)
        by_env = source == ACCEL_ENV
        where = ACCEL_ENV if by_env else config.line_of(inst.dir / paths.INSTANCE_CONFIG, "accelerator")
        raise ConfigError(
            [f"{where}: accelerator {accel!r} cannot run this {arch} guest on a {host.arch} host"],
            f"{f'unset {ACCEL_ENV}' if by_env else 'remove `accelerator` from devenv.toml'}:"
            f" another architecture is emulated (tcg), which auto picks",
        )
    return accel, source


def machine(inst: InstanceRef, arch: str, direct_kernel: bool, accel: str, *, creating: bool) -> tuple[str, str]:
    """The QEMU machine type and the kernel arguments it needs, or a ConfigError naming the config line.

    While creating, the instance directory is a temporary one that goes with the
    error, so the message names the project's devenv.toml instead of a line in it.
    """
    from devenv import config

    where = "devenv.toml" if creating else config.line_of(inst.dir / paths.INSTANCE_CONFIG, "machine")
    setting = f"{where}: field `machine` = {json.dumps(inst.config.machine)}"
    change = (
        "remove `machine` from devenv.toml" if creating else "delete the instance, remove `machine` from devenv.toml"
    )
    change += ' (the default, "auto", picks q35 on x86_64 and virt on aarch64)'
    try:
        chosen = resolve_machine(inst.config.machine, arch, direct_kernel=direct_kernel)
    except ValueError as e:
        hint = change
        if isinstance(e, NeedsDirectKernel):
            hint += ", or use an image QEMU boots directly (debian-12 built by `devenv image build`, ubuntu-24.04)"
        raise ConfigError([f"{setting}: {e}"], hint + " and start again") from None
    if chosen != "microvm" or accel != "tcg":
        return chosen, ""
    khz = host_tsc_khz()
    if khz is None:
        raise ConfigError(
            [
                f"{setting} under TCG needs the host's TSC rate, which this host does not tell"
                " (microvm has no timer the guest kernel can measure it against under TCG)"
            ],
            f"use a hardware accelerator, or {change} and start again",
        )
    return chosen, microvm_tcg_cmdline(khz)


def crashed_warning(accel: str, reason: str, kept: Path) -> str:
    from devenv.backends.availability import ACCEL_ENV

    return (
        f"QEMU stopped at once under {accel}, which devenv picked: {reason}\n"
        f"  booting under tcg (software emulation, slower) instead; QEMU's whole output is in {kept}.\n"
        f'  To have this fail instead, set `accelerator = "{accel}"` in devenv.toml or {ACCEL_ENV}={accel}.'
    )


def silent_warning(accel: str, inst: InstanceRef) -> str:
    from devenv.backends.availability import ACCEL_ENV

    return (
        f"the guest printed nothing in {SILENT_BOOT_LIMIT:.0f} s under {accel}, which devenv picked:"
        " it does not run there\n"
        f"  booting under tcg (software emulation, slower) instead, now and at every start of `{inst.name}`;\n"
        f"  to try {accel} again remove {inst.dir / ACCEL_HUNG}, or set {ACCEL_ENV}={accel}."
    )


def silence_check(
    inst: InstanceRef,
    alive: Callable[[], None],
    accel: str,
    fail: Callable[..., DevenvError],
    retry: Callable[[StepReporter], Boot] | None,
) -> Callable[[], None]:
    """`alive`, and GuestSilent once the console has stayed empty for SILENT_BOOT_LIMIT s under `accel`.

    Under a hardware accelerator the guest's first console line (systemd's,
    or the firmware's) comes within seconds. A console still empty after a
    minute is a guest that does not run: a KVM that opens but hangs its
    guests (nested virtualisation; seen on these CI machines with QEMU's
    default CPU model). Saying so then beats the 180 s boot budget. `retry`
    (auto's pick only) boots it under tcg instead.
    """
    from devenv.backends.availability import ACCEL_ENV

    serial = inst.dir / paths.SERIAL_LOG
    began = time.monotonic()

    def check() -> None:
        alive()
        if time.monotonic() - began < SILENT_BOOT_LIMIT:
            return
        try:
            if serial.stat().st_size > 0:
                return
        except OSError:
            pass
        err = fail(
            inst,
            f"the guest printed nothing on its console in {SILENT_BOOT_LIMIT:.0f} s under {accel},"
            " where a guest's first line comes within seconds: it is not running",
            f"{accel} may not run guests on this host (nested virtualisation often cannot):"
            f" `devenv stop --force -n {inst.name}`, then `{ACCEL_ENV}=tcg devenv start -n {inst.name}`"
            ' (or accelerator = "tcg" in devenv.toml)',
        )
        raise GuestSilent(err.message, err.hint, retry)

    return check
