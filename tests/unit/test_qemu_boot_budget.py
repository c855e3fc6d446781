"""A first boot provisions (cloud-init), so start waits longer for it than for later boots.

Seen in CI on a 2-core host under TCG: an emulated aarch64 guest's first boot
reached sshd after 136 s and was still in cloud-init's final stage when the
single 420 s budget ran out. The e2e aarch64 test boots that guest for real.
"""

from __future__ import annotations

from devenv.backends.vm.boot import boot_budget


def _accel_timeout(accel: str, *, first_boot: bool = False) -> float:
    """The budget the QEMU driver's boots get: emulated under tcg, the hardware's otherwise."""
    return boot_budget(accel == "tcg", first_boot=first_boot)


def test_a_first_boot_under_tcg_gets_fifteen_minutes_and_later_boots_seven() -> None:
    assert _accel_timeout("tcg", first_boot=True) == 900.0
    assert _accel_timeout("tcg") == 420.0


def test_hardware_accelerators_get_less_than_tcg_and_the_first_boot_still_more() -> None:
    for accel in ("kvm", "hvf", "whpx"):
        assert _accel_timeout(accel) == 180.0
        assert _accel_timeout(accel, first_boot=True) == 300.0
