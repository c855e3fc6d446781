"""`devenv doctor` on a Mac: hvf, QEMU's version and accelerators, and what another arch's guest costs.

The checks are tested against recorded command outputs, not a Mac (none ran
these): `-accel help` and `--version` as Debian's QEMU 7.2 printed them on
these machines, and a Mac's QEMU in the form Lima's source records it
(lima-vm/lima pkg/driver/qemu/qemu.go: features.AccelHelp's comment
"Accelerators supported in QEMU binary:\\ntcg\\nhax\\nhvf\\n", parseQemuVersion's
"QEMU emulator version X.Y.Z"). `sysctl -n kern.hv_support` prints 1 or 0.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devenv.backends.availability import accelerators_listed, macos_checks
from devenv.hostos import Probe
from devenv.testing import FakeHost

DEBIAN_ACCEL_HELP = "Accelerators supported in QEMU binary:\ntcg\nkvm\n"  # recorded here (QEMU 7.2, x86_64)
DEBIAN_VERSION = (  # recorded here
    "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
    "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
)
MAC_ACCEL_HELP = "Accelerators supported in QEMU binary:\ntcg\nhax\nhvf\n"  # Lima's comment
MAC_VERSION = "QEMU emulator version 8.2.1\nCopyright (c) 2003-2023 Fabrice Bellard and the QEMU Project developers\n"

ROSETTA = "Rosetta is not used (QEMU cannot use it)"


def as_dicts(rows: list[tuple[str, Probe]]) -> list[tuple[str, bool, str, str]]:
    return [(name, p.ok, p.detail, p.fix) for name, p in rows]


def test_accelerators_are_read_below_the_heading() -> None:
    assert accelerators_listed(DEBIAN_ACCEL_HELP) == ["tcg", "kvm"]
    assert accelerators_listed(MAC_ACCEL_HELP) == ["tcg", "hax", "hvf"]


def test_an_apple_silicon_mac_ready_for_hvf() -> None:
    assert as_dicts(macos_checks("aarch64", "1\n", MAC_VERSION, MAC_ACCEL_HELP)) == [
        ("hvf", True, "kern.hv_support = 1: Hypervisor.framework runs guests of this Mac's arch", ""),
        ("qemu version", True, "QEMU 8.2.1", ""),
        ("qemu accelerators", True, "QEMU lists hvf (-accel help: tcg, hax, hvf)", ""),
        ("x86_64 guests", True, f"emulated (tcg): several times slower than aarch64 guests under hvf; {ROSETTA}", ""),
    ]


def test_a_mac_vm_without_hvf_and_a_qemu_without_it_say_so_with_the_fix() -> None:
    """A CI runner's macOS VM (kern.hv_support = 0) with a QEMU that lists no hvf (Debian's output stands in)."""
    rows = as_dicts(macos_checks("aarch64", "0\n", DEBIAN_VERSION, DEBIAN_ACCEL_HELP))
    assert rows == [
        (
            "hvf",
            False,
            "kern.hv_support = 0: no Hypervisor.framework here (a macOS VM without nested virtualisation, such as a"
            " CI runner); guests run under tcg, several times slower",
            "run devenv on the Mac itself, not in a VM on it",
        ),
        (
            "qemu version",
            False,
            "QEMU 7.2.22 is older than 8.2.1, the oldest that works here (hvf on Apple Silicon: qemu issue 1990)",
            "brew upgrade qemu",
        ),
        (
            "qemu accelerators",
            False,
            "QEMU does not list hvf (-accel help: tcg, kvm): it was built without it",
            "brew reinstall qemu (Homebrew's QEMU has hvf)",
        ),
        ("x86_64 guests", True, f"emulated (tcg): several times slower than aarch64 guests under hvf; {ROSETTA}", ""),
    ]


def test_an_intel_mac_takes_qemu_7_and_is_advised_8_2_1() -> None:
    rows = as_dicts(macos_checks("x86_64", "1\n", DEBIAN_VERSION, MAC_ACCEL_HELP))
    assert rows[1] == ("qemu version", True, "QEMU 7.2.22 (older than 8.2.1, which Lima advises)", "brew upgrade qemu")
    assert rows[3] == (
        "aarch64 guests",
        True,
        f"emulated (tcg): several times slower than x86_64 guests under hvf; {ROSETTA}",
        "",
    )


def test_commands_that_did_not_answer() -> None:
    rows = as_dicts(macos_checks("aarch64", None, None, None))
    assert rows[0][2].startswith("sysctl kern.hv_support did not answer: no Hypervisor.framework here")
    assert rows[1] == ("qemu version", False, "QEMU's version could not be read (`--version`)", "brew install qemu")
    assert rows[2] == ("qemu accelerators", False, "`-accel help` did not answer", "brew reinstall qemu")


def test_doctor_on_a_mac_prints_the_checks_and_puts_them_in_its_json(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {
        ("sysctl", "-n", "kern.hv_support"): "1\n",
        ("/opt/homebrew/bin/qemu-system-aarch64", "--version"): MAC_VERSION,
        ("/opt/homebrew/bin/qemu-system-aarch64", "-M", "none", "-accel", "help"): MAC_ACCEL_HELP,
    }
    host = FakeHost(
        "macos",
        "aarch64",
        hvf=Probe(True, "kern.hv_support = 1"),
        qemu=Probe(True, "QEMU emulator version 8.2.1"),
        qemu_binary="/opt/homebrew/bin/qemu-system-aarch64",
    )
    monkeypatch.setattr("devenv.hostos.current", lambda: host)
    monkeypatch.setattr("devenv.hostos._quiet", lambda argv, timeout=5: outputs[tuple(argv)])
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    info = json.loads(cli("doctor", "--json").out)
    assert info["qemu_accelerator"] == "hvf"
    assert [c["check"] for c in info["macos"]] == ["hvf", "qemu version", "qemu accelerators", "x86_64 guests"]
    assert all(c["ok"] for c in info["macos"])
    text = cli("doctor").out
    assert "  ok  qemu accelerators: QEMU lists hvf (-accel help: tcg, hax, hvf)\n" in text
    assert (
        f"  ok  x86_64 guests: emulated (tcg): several times slower than aarch64 guests under hvf; {ROSETTA}\n" in text
    )
