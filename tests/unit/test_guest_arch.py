"""`arch` in devenv.toml: a guest of another architecture than the host's runs emulated, in QEMU only."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv import hostos, paths
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import qemuhost as qemu_backend
from devenv.backends.drivers.qemu import QemuDriver
from devenv.backends.drivers.qemuaccel import accel_choice
from devenv.config import Config
from devenv.errors import BackendUnavailable, ConfigError
from devenv.instance import resolve_config
from devenv.testing import FakeHost

YES = hostos.Probe(True, "yes")


@pytest.fixture
def x86_kvm_host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    host = FakeHost("linux", "x86_64", kvm=YES, native_engine=YES)
    monkeypatch.setattr(hostos, "current", lambda: host)
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    return host


def _project(tmp_path: Path, text: str) -> Path:
    project = tmp_path / "devenv.toml"
    project.write_text(text)
    return project


def test_auto_backend_is_qemu_for_another_arch_even_beside_a_native_engine(
    tmp_path: Path, x86_kvm_host: FakeHost
) -> None:
    cfg = resolve_config("p", {}, _project(tmp_path, 'arch = "arm64"\n'))
    assert (cfg.backend, cfg.arch) == ("qemu", "aarch64")
    assert resolve_config("p", {}, _project(tmp_path, 'arch = "x86_64"\n')).backend == "native"


def test_another_arch_on_a_backend_that_cannot_emulate_names_the_line(tmp_path: Path, x86_kvm_host: FakeHost) -> None:
    project = _project(tmp_path, 'backend = "native"\narch = "aarch64"\n')
    with pytest.raises(ConfigError) as info:
        resolve_config("p", {}, project)
    assert info.value.problems == [f"{project}:2: field `arch` = 'aarch64' needs the qemu backend, not 'native'"]
    assert 'backend = "qemu"' in info.value.hint


def _inst(tmp_path: Path, text: str = "") -> InstanceRef:
    (tmp_path / paths.INSTANCE_CONFIG).write_text(text)
    accel = next((line.split('"')[1] for line in text.splitlines() if line.startswith("accelerator")), "auto")
    return InstanceRef("p", tmp_path, Config(name="p", arch="aarch64", accelerator=accel))


def test_another_arch_is_emulated_and_a_forced_hardware_accelerator_is_refused(
    tmp_path: Path, x86_kvm_host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = QemuDriver()
    assert backend._arch(_inst(tmp_path)) == "aarch64"
    assert accel_choice(_inst(tmp_path), "aarch64")[0] == "tcg"  # the host has KVM: for x86_64 guests only
    assert accel_choice(_inst(tmp_path), "x86_64")[0] == "kvm"

    with pytest.raises(ConfigError) as info:
        accel_choice(_inst(tmp_path, 'name = "p"\naccelerator = "kvm"\n'), "aarch64")[0]
    assert info.value.problems == [
        f"{tmp_path / paths.INSTANCE_CONFIG}:2: accelerator 'kvm' cannot run this aarch64 guest on a x86_64 host"
    ]
    assert "remove `accelerator` from devenv.toml" in info.value.hint

    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "kvm")
    with pytest.raises(ConfigError) as info:
        accel_choice(_inst(tmp_path), "aarch64")[0]
    assert info.value.problems[0].startswith("DEVENV_QEMU_ACCEL: accelerator 'kvm' cannot run this aarch64 guest")
    assert "unset DEVENV_QEMU_ACCEL" in info.value.hint
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "tcg")
    assert accel_choice(_inst(tmp_path), "aarch64")[0] == "tcg"


def test_firmware_only_for_an_aarch64_guest_booted_from_its_disk(
    tmp_path: Path, x86_kvm_host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "QEMU_EFI.fd"
    monkeypatch.setattr(qemu_backend, "find_firmware", lambda arch, *rest: code)
    assert qemu_backend.firmware("aarch64", direct_kernel=False) == code
    assert qemu_backend.firmware("aarch64", direct_kernel=True) is None  # QEMU starts the kernel itself
    assert qemu_backend.firmware("x86_64", direct_kernel=False) is None  # q35 has its BIOS built in

    monkeypatch.setattr(qemu_backend, "find_firmware", lambda arch, *rest: None)
    with pytest.raises(BackendUnavailable) as info:
        qemu_backend.firmware("aarch64", direct_kernel=False)
    assert info.value.message.startswith("no UEFI firmware for aarch64 guests was found (looked in ")
    assert "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd" in info.value.message
    assert info.value.hint == "sudo apt-get install qemu-efi-aarch64 (Fedora: dnf install edk2-aarch64)"


def test_a_missing_emulator_for_the_guests_arch_names_its_package(
    x86_kvm_host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu_backend.shutil, "which", lambda name: None if "aarch64" in name else f"/usr/bin/{name}")
    assert qemu_backend.check_qemu("x86_64") == "/usr/bin/qemu-system-x86_64"
    with pytest.raises(BackendUnavailable) as info:
        qemu_backend.check_qemu("aarch64")
    assert info.value.message == "qemu-system-aarch64 was not found on PATH: it runs aarch64 guests"
    assert info.value.hint.startswith("sudo apt-get install qemu-system-arm qemu-efi-aarch64")


@pytest.mark.parametrize("value", ["kvmm", "hax", "tcg,kvm"])
def test_a_mistyped_accel_variable_is_a_usage_error_before_qemu_runs(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from devenv.backends.availability import accelerator_choice
    from devenv.errors import ExitCode, UsageError
    from devenv.hostos import Host

    monkeypatch.setenv("DEVENV_QEMU_ACCEL", value)
    with pytest.raises(UsageError) as info:
        accelerator_choice(Host())
    assert info.value.exit_code == ExitCode.USAGE
    assert str(info.value) == f"DEVENV_QEMU_ACCEL={value} is not an accelerator"
    assert "auto, kvm, hvf, whpx, tcg" in info.value.hint
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", " TCG ")
    assert accelerator_choice(Host()) == ("tcg", "DEVENV_QEMU_ACCEL")
