"""The QEMU command line on a Mac, for each host and guest pair, held in golden files.

No Mac has run these here: what stands in for one is Lima's QEMU driver, which
has run QEMU under hvf on both kinds of Mac for years. Each file in
tests/unit/golden/ holds the argv devenv's own builder makes for one fixed
instance on one pair, after a header that names the Lima source each choice
follows, or why devenv differs. The accelerator is the one devenv's own rule
(availability.accelerator_choice) picks for that pair, not one written in.

A change to the command line fails here until the golden file is changed with
it: `DEVENV_UPDATE_GOLDEN=1 pytest tests/unit/test_qemu_golden.py` rewrites the
argv below each header (never the header: say there why the argv changed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devenv.backends import availability
from devenv.backends.drivers.qemuargs import VmSpec, build_argv, memory_warning
from devenv.hostos import HostFacts, Probe
from devenv.testing import FakeHost

GOLDEN = Path(__file__).parent / "golden"
SEPARATOR = "---\n"
INST = Path("/Users/dev/Library/Application Support/devenv/instances/dev")  # the state root on a Mac, with its space
HOMEBREW_FIRMWARE = {
    "aarch64": Path("/opt/homebrew/share/qemu/edk2-aarch64-code.fd"),  # Homebrew on Apple Silicon
    "x86_64": Path("/usr/local/share/qemu/edk2-aarch64-code.fd"),  # Homebrew on an Intel Mac
}

# (golden file, host facts, guest arch)
PAIRS = [
    ("macos-arm64-aarch64-hvf.argv", HostFacts("macos", "aarch64", (14, 4, 1)), "aarch64"),
    ("macos-x86_64-x86_64-hvf.argv", HostFacts("macos", "x86_64", (13, 6, 7)), "x86_64"),
    ("macos-arm64-x86_64-tcg.argv", HostFacts("macos", "aarch64", (14, 4, 1)), "x86_64"),
    ("macos-x86_64-aarch64-tcg.argv", HostFacts("macos", "x86_64", (13, 6, 7)), "aarch64"),
]


def spec_for(host: HostFacts, guest: str, accel: str) -> VmSpec:
    """The fixed instance: a pulled cloud image (booted through firmware on aarch64), 4 CPUs, 4 GiB, one mount."""
    return VmSpec(
        name="dev",
        arch=guest,
        accel=accel,
        cpus=4,
        memory=4 * 1024**3,
        disk=INST / "disk.qcow2",
        cidata=INST / "cidata.iso",
        ssh_port=40022,
        serial_log=INST / "serial.log",
        qmp_socket=INST / "qmp.sock",
        pid_file=INST / "qemu.pid",
        firmware=HOMEBREW_FIRMWARE[host.arch] if guest == "aarch64" else None,
        shares=(("m0", "/Users/dev/src/app", True),),
        ram_file=INST / "memory.ram",
        relay_socket=INST / "relay.sock",
        tcg_cache_mb=64,
        host=host,
    )


def auto_accel(host: HostFacts, guest: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `accelerator = "auto"` gives this guest on this Mac (kern.hv_support = 1)."""
    monkeypatch.delenv(availability.ACCEL_ENV, raising=False)
    fake = FakeHost(host.system, host.arch, hvf=Probe(True, "kern.hv_support = 1"))
    return availability.accelerator_choice(fake, "auto", guest)[0]


def read_golden(path: Path) -> tuple[str, list[str]]:
    header, sep, body = path.read_text().partition(SEPARATOR)
    assert sep, f"{path.name}: no `---` line between the header and the argv"
    return header, body.splitlines()


@pytest.mark.parametrize(("name", "host", "guest"), PAIRS, ids=[p[0] for p in PAIRS])
def test_the_argv_on_a_mac_is_the_golden_one(
    name: str, host: HostFacts, guest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    accel = auto_accel(host, guest, monkeypatch)
    assert accel == ("hvf" if guest == host.arch else "tcg")
    argv = build_argv(spec_for(host, guest, accel))
    path = GOLDEN / name
    header, golden = read_golden(path)
    if os.environ.get("DEVENV_UPDATE_GOLDEN") == "1":
        path.write_text(header + SEPARATOR + "".join(a + "\n" for a in argv))
        golden = argv
    assert argv == golden
    # every file names the Lima code it follows, with the commit it was read at
    assert "lima-vm/lima" in header and "pkg/driver/qemu/qemu.go" in header
    assert "457ddea106b212c9f86cb7547a03735481818188" in header


def test_every_golden_file_is_a_pair_tested_here() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.argv")) == sorted(p[0] for p in PAIRS)


@pytest.mark.parametrize(
    ("version", "accel", "expected_mb"),
    [
        ((12, 3, 1), "hvf", 3072),  # before the fix: Lima's 3 GiB
        ((12, 4), "hvf", 4096),
        ((15, 0), "hvf", 4096),
        (None, "hvf", 4096),  # macOS would not say: taken as fixed, as Lima does
        ((12, 3, 1), "tcg", 4096),  # only hvf panicked the host
    ],
)
def test_apple_silicon_before_macos_12_4_gets_at_most_3_gib_under_hvf(
    version: tuple[int, ...] | None, accel: str, expected_mb: int
) -> None:
    host = HostFacts("macos", "aarch64", version)
    argv = build_argv(spec_for(host, "aarch64", accel))
    assert argv[argv.index("-m") + 1] == f"{expected_mb}M"
    ram = next(a for a in argv if a.startswith("memory-backend-file"))
    assert f"size={expected_mb}M," in ram  # the RAM object and -m agree, or QEMU refuses them
    warning = memory_warning(4 * 1024**3, accel, host)
    if expected_mb == 4096:
        assert warning is None
    else:
        assert warning == (
            "the guest gets 3072 MiB instead of 4096 MiB: macOS 12.3.1 panics under hvf with more than 3 GiB"
            " of guest memory on Apple Silicon (fixed in macOS 12.4; lima-vm/lima#795)"
        )


def test_an_intel_mac_keeps_its_3_gib_limit_to_itself() -> None:
    """Lima's cap is for Apple Silicon only; an Intel Mac on macOS 12.3 gets what it asked for."""
    argv = build_argv(spec_for(HostFacts("macos", "x86_64", (12, 3)), "x86_64", "hvf"))
    assert argv[argv.index("-m") + 1] == "4096M"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (HostFacts("linux", "x86_64"), "devenv-dev,process=devenv-dev"),
        (HostFacts("macos", "aarch64", (14, 0)), "devenv-dev"),  # QEMU on macOS exits at process=
        (HostFacts("windows", "x86_64"), "devenv-dev"),
    ],
)
def test_the_process_name_is_asked_for_only_where_qemu_can_set_it(host: HostFacts, expected: str) -> None:
    argv = build_argv(spec_for(host, host.arch, "tcg"))
    assert argv[argv.index("-name") + 1] == expected


def test_one_thread_per_vcpu_is_spelled_out_only_where_qemu_would_not_choose_it() -> None:
    def accel_of(host: HostFacts, guest: str) -> str:
        argv = build_argv(spec_for(host, guest, "tcg"))
        return argv[argv.index("-accel") + 1]

    assert accel_of(HostFacts("macos", "aarch64", (14, 0)), "x86_64") == "tcg,thread=multi,tb-size=64"
    assert accel_of(HostFacts("linux", "aarch64"), "x86_64") == "tcg,thread=multi,tb-size=64"
    assert accel_of(HostFacts("linux", "x86_64"), "x86_64") == "tcg,tb-size=64"  # already QEMU's default
    assert accel_of(HostFacts("macos", "x86_64", (14, 0)), "aarch64") == "tcg,tb-size=64"
