"""An accelerator auto picked that crashes QEMU at once: `devenv start` boots under TCG and says so.

The QEMU here is a stand-in script (tests/qemu_stand_in.py): it prints what
QEMU 7.2 printed on these CI machines under `-accel kvm` (recorded: /dev/kvm
opens, nested KVM fails at the first vCPU), and under tcg it does what a
started QEMU does for devenv (pid file, QMP socket). tests/integration/test_qemu_accel_fallback.py runs the
real QEMU where its KVM crashes like this.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import paths
from devenv.backends.base import InstanceRef
from devenv.backends.drivers.qemu import QEMU_LOG, QemuDriver, _Boot
from devenv.backends.drivers.qemuaccel import AcceleratorFailed
from devenv.backends.drivers.qemuaccel import accelerator_error as _accelerator_error
from devenv.cli.ui import Steps
from devenv.config import Config
from devenv.errors import CommandFailed
from tests import qemu_stand_in
from tests.qemu_stand_in import RECORDED_KVM_CRASH


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """The stand-in QEMU (crashing under kvm) and the file where it records the accelerator of each launch."""
    yield qemu_stand_in.install(tmp_path, monkeypatch, crash="kvm")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[InstanceRef]:
    d = tmp_path / "dev"
    d.mkdir()
    ref = InstanceRef("dev", d, Config(mounts=[]))
    yield ref
    pid_file = d / paths.QEMU_PID
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _launch(inst: InstanceRef, binary: Path, choice: tuple[str, str], steps: Steps) -> str:
    boot = _Boot(inst, str(binary), {"arch": "x86_64"}, "x86_64")
    return QemuDriver()._launch_or_fall_back(boot, steps, choice, "q35", "")


def test_a_kvm_auto_picked_that_crashes_qemu_is_replaced_by_tcg(
    inst: InstanceRef, stand_in: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    binary, calls = stand_in
    with Steps() as steps:
        used = _launch(inst, binary, ("kvm", "auto"), steps)
    assert used == "tcg"
    assert calls.read_text().split() == ["kvm", "tcg"]
    argv = json.loads((inst.dir / "qemu.argv").read_text())
    assert argv[argv.index("-accel") + 1].startswith("tcg")
    assert QemuDriver._running_accel(inst) == "tcg"  # what a later `devenv start` of the running VM reads
    assert (inst.dir / paths.QEMU_PID).exists()
    err = capsys.readouterr().err
    assert "✗ start QEMU (kvm)" in err and "✓ start QEMU (tcg)" in err
    assert "QEMU stopped at once under kvm, which devenv picked: qemu-system-x86_64: error: failed to set MSR" in err
    assert 'accelerator = "kvm"' in err and "DEVENV_QEMU_ACCEL=kvm" in err
    kept = inst.dir / (QEMU_LOG + ".accel")
    assert f"QEMU's whole output is in {kept}" in err
    assert "kvm_buf_set_msrs" in kept.read_text()  # the crash's own output is kept for the user


@pytest.mark.parametrize("source", ["config", "DEVENV_QEMU_ACCEL"])
def test_an_accelerator_the_user_named_is_never_replaced(
    inst: InstanceRef, stand_in: tuple[Path, Path], source: str
) -> None:
    binary, calls = stand_in
    with pytest.raises(AcceleratorFailed) as e, Steps(quiet=True) as steps:
        _launch(inst, binary, ("kvm", source), steps)
    assert calls.read_text().split() == ["kvm"]
    assert "QEMU exited with code -6 right after it started" in str(e.value)
    assert "failed to set MSR" in str(e.value) and "DEVENV_QEMU_ACCEL=tcg" in e.value.hint
    assert not (inst.dir / paths.QEMU_PID).exists()


def test_a_crash_that_does_not_name_the_accelerator_is_not_retried(
    inst: InstanceRef, stand_in: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad disk or option fails under TCG just the same: one clear error, not two launches."""
    binary, calls = stand_in
    monkeypatch.setenv("STAND_IN_TEXT", "qemu-system-x86_64: -drive if=virtio,file=/x/disk.qcow2: Permission denied\n")
    with pytest.raises(CommandFailed) as e, Steps(quiet=True) as steps:
        _launch(inst, binary, ("kvm", "auto"), steps)
    assert not isinstance(e.value, AcceleratorFailed)
    assert calls.read_text().split() == ["kvm"]
    assert "Permission denied" in str(e.value)


def test_the_reason_is_read_from_qemus_log(tmp_path: Path) -> None:
    """The line picking itself: tests/unit/test_hostos.py (qemu_error_line)."""
    log = tmp_path / QEMU_LOG
    log.write_text(RECORDED_KVM_CRASH)
    assert _accelerator_error(log, "kvm") == "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"
    assert _accelerator_error(tmp_path / "missing.log", "kvm") is None
