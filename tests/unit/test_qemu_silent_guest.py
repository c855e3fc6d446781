"""A guest that stays silent under the accelerator auto picked: start boots it under TCG from then on.

Seen on these CI machines: /dev/kvm opens and QEMU runs under `-accel kvm`, but
the guest never prints a line (a vCPU spinning at 100 %). The QEMU here is a
stand-in (tests/qemu_stand_in.py) that does what that QEMU did for devenv (pid
file, a QMP socket that answers and quits, no console output); the whole start, kvm silent then tcg
booted, was run by hand against the real QEMU on such a machine (the README's
accelerator paragraph has the figures).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import paths
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import qemu, qemuproc
from devenv.backends.drivers.qemu import QEMU_LOG, QemuDriver
from devenv.backends.drivers.qemuaccel import ACCEL_HUNG, accel_choice
from devenv.cli.ui import Steps
from devenv.config import Config
from devenv.hostos import Probe
from devenv.testing import FakeHost
from tests import qemu_stand_in


@pytest.fixture
def inst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[InstanceRef, Path, Path]]:
    binary, calls = qemu_stand_in.install(tmp_path, monkeypatch)
    monkeypatch.delenv("DEVENV_QEMU_ACCEL", raising=False)
    d = Path(os.path.realpath(tmp_path)) / "dev"
    d.mkdir()
    yield InstanceRef("dev", d, Config(mounts=[])), binary, calls
    pid_file = d / paths.QEMU_PID
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_silent_guest_is_stopped_remembered_and_booted_under_tcg(
    inst: tuple[InstanceRef, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ref, binary, calls = inst
    boot = qemu._Boot(ref, str(binary), {"arch": "x86_64"}, "x86_64")
    backend = QemuDriver()
    with Steps() as steps:
        backend._launch(boot, "kvm", "q35", "")
        first = qemuproc.read_pid(ref.dir)
        (ref.dir / paths.SERIAL_LOG).write_text("")  # not one line: the guest never ran
        steps("boot: waiting for the guest's sshd")
        steps.fail()  # the VM backend marks its wait failed before it takes the driver's retry
        backend._silent_to_tcg(boot, steps, "kvm")
    assert calls.read_text().split() == ["kvm", "tcg"]
    second = qemuproc.read_pid(ref.dir)
    assert first is not None and second is not None and second != first
    assert not qemuproc.pid_is_ours(first, ref.dir)  # the silent one was quit, not left spinning
    assert qemuproc.pid_is_ours(second, ref.dir)
    assert (ref.dir / ACCEL_HUNG).read_text() == "kvm\n"
    assert (ref.dir / (paths.SERIAL_LOG + ".accel")).exists() and (ref.dir / (QEMU_LOG + ".accel")).exists()
    err = capsys.readouterr().err
    assert "✗ boot: waiting for the guest's sshd" in err and "✓ start QEMU (tcg)" in err
    assert "the guest printed nothing in 60 s under kvm, which devenv picked" in err
    assert f"to try kvm again remove {ref.dir / ACCEL_HUNG}, or set DEVENV_QEMU_ACCEL=kvm" in err


def test_the_remembered_hang_picks_tcg_only_for_auto(
    inst: tuple[InstanceRef, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, _, _ = inst
    monkeypatch.setattr("devenv.hostos.current", lambda: FakeHost("linux", kvm=Probe(True, "usable")))
    assert accel_choice(ref, "x86_64") == ("kvm", "auto")
    (ref.dir / ACCEL_HUNG).write_text("kvm\n")
    assert accel_choice(ref, "x86_64") == ("tcg", "auto")  # no minute of silence per start
    monkeypatch.setenv("DEVENV_QEMU_ACCEL", "kvm")  # named: tried, and its error would stand
    assert accel_choice(ref, "x86_64") == ("kvm", "DEVENV_QEMU_ACCEL")
    monkeypatch.delenv("DEVENV_QEMU_ACCEL")
    (ref.dir / ACCEL_HUNG).unlink()
    assert accel_choice(ref, "x86_64") == ("kvm", "auto")  # removed: kvm is tried again
