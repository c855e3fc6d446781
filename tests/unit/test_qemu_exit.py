"""What `devenv start` says when QEMU goes away during the boot wait (no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.backends.base import InstanceRef
from devenv.backends.drivers.qemu import QEMU_LOG, QemuDriver
from devenv.backends.vm import VmBackend
from devenv.config import Config
from devenv.errors import StateError


def _exit_message(inst_dir: Path) -> str:
    inst = InstanceRef("dev", inst_dir, Config())  # no pid file: the QEMU process is gone
    with pytest.raises(StateError) as err:
        QemuDriver()._alive_check(inst)()
    return str(err.value)


def test_a_qemu_that_left_no_message_is_said_to_be_killed_or_crashed(tmp_path: Path) -> None:
    (tmp_path / QEMU_LOG).write_text("")
    message = _exit_message(tmp_path)
    assert message.startswith("the QEMU process exited while the guest was booting, and ")
    assert f"{tmp_path / QEMU_LOG} is empty: it was killed or crashed" in message
    assert "dmesg" in message


def test_a_qemu_that_said_why_is_quoted_instead(tmp_path: Path) -> None:
    (tmp_path / QEMU_LOG).write_text("qemu-system-x86_64: -fsdev local,id=devenv0: cannot open /gone\n")
    message = _exit_message(tmp_path)
    assert message.startswith("the QEMU process exited while the guest was booting\nQEMU said:\n")
    assert "cannot open /gone" in message and "killed or crashed" not in message


def test_a_wait_that_timed_out_with_qemu_running_does_not_call_it_a_crash(tmp_path: Path) -> None:
    (tmp_path / QEMU_LOG).write_text("")
    inst = InstanceRef("dev", tmp_path, Config())
    err = QemuDriver().failure(inst, "the guest's sshd did not answer within 600 s", "hint")
    assert str(err) == "the guest's sshd did not answer within 600 s"


def test_a_console_silent_for_a_minute_under_kvm_is_a_guest_that_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen here: with QEMU's default CPU model this host's KVM hangs its guest with nothing on the console."""
    from devenv.backends.drivers import qemuaccel
    from devenv.errors import Timeout

    inst = InstanceRef("dev", tmp_path, Config())
    serial = tmp_path / "serial.log"
    serial.write_text("")
    calls: list[int] = []
    monkeypatch.setattr(qemuaccel, "SILENT_BOOT_LIMIT", 0.0)
    check = qemuaccel.silence_check(inst, lambda: calls.append(1), "kvm", QemuDriver().failure, None)
    with pytest.raises(Timeout) as err:
        check()
    assert calls == [1]  # QEMU's liveness is still checked first
    assert str(err.value).startswith("the guest printed nothing on its console in 0 s under kvm")
    assert "DEVENV_QEMU_ACCEL=tcg devenv start -n dev" in err.value.hint
    serial.write_text("SELinux:  Could not open policy file\n")  # the first line of a booting devenv guest
    check()  # a guest that printed is left to the boot budget


def test_the_silence_limit_waits_its_time_first(tmp_path: Path) -> None:
    inst = InstanceRef("dev", tmp_path, Config())
    (tmp_path / "serial.log").write_text("")
    from devenv.backends.drivers import qemuaccel

    qemuaccel.silence_check(inst, lambda: None, "hvf", QemuDriver().failure, None)()  # just begun: no verdict yet


@pytest.mark.parametrize(
    ("console", "powered_off"),
    [
        ("[  OK  ] Reached target poweroff.target - System Power Off.\n[   41.2] reboot: Power down\n", True),
        ("Debian GNU/Linux 12 devenv ttyS0\n\nreboot: System halted\n\n", True),
        ("[   12.0] Kernel panic - not syncing: Fatal exception\n", False),
        ("[   3.1] reboot: Power down\n[   3.5] random: crng init done\nlogin:\n", False),  # an older line
        ("", False),
    ],
    ids=["poweroff", "halt", "panic", "not-last", "empty"],
)
def test_a_guest_that_powered_itself_off_is_told_from_a_crash(tmp_path: Path, console: str, powered_off: bool) -> None:
    from devenv.backends.vm import powered_off_by_guest

    serial = tmp_path / "serial.log"
    serial.write_text(console)
    assert powered_off_by_guest(serial) is powered_off


def test_status_after_a_poweroff_inside_the_guest_is_stopped_not_broken(tmp_path: Path) -> None:
    from devenv import paths

    (tmp_path / paths.STARTED_MARKER).touch()  # the user wanted it running
    inst = InstanceRef("t", tmp_path, Config(mounts=[]))
    (tmp_path / paths.SERIAL_LOG).write_text("[   41.2] reboot: Power down\n")
    assert VmBackend(QemuDriver()).status(inst).state == "stopped"
    (tmp_path / paths.SERIAL_LOG).write_text("[   41.2] Out of memory: Killed process 1 (systemd)\n")
    st = VmBackend(QemuDriver()).status(inst)
    assert st.state == "broken" and "killed or crashed" in st.reason


def test_once_sshd_answered_only_qemus_liveness_is_watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A console still empty under kvm is a silent guest only until sshd answers; after that the guest runs."""
    from devenv.backends.drivers import qemu, qemuaccel
    from devenv.backends.drivers.qemuaccel import GuestSilent

    inst = InstanceRef("dev", tmp_path, Config())
    (tmp_path / "serial.log").write_text("")
    monkeypatch.setattr(qemuaccel, "SILENT_BOOT_LIMIT", 0.0)
    monkeypatch.setattr(qemu, "running_pid", lambda inst_dir: 4242)  # QEMU runs
    boot = QemuDriver()._watch(qemu._Boot(inst, "qemu-system-x86_64", {}, "x86_64"), "kvm", "auto")
    with pytest.raises(GuestSilent) as err:
        boot.watch()
    assert err.value.retry is not None  # auto picked kvm: the retry boots it under tcg
    boot.after_sshd()  # provisioning may keep the console quiet: no verdict of silence any more
    monkeypatch.setattr(qemu, "running_pid", lambda inst_dir: None)
    with pytest.raises(StateError):
        boot.after_sshd()  # but QEMU's exit still ends the wait


@pytest.mark.parametrize(
    ("console", "rebooting"),
    [
        ("DEVENV-READY\n[  131.0] reboot: Restarting system\n", True),
        ("DEVENV-READY\n[  131.0] reboot: Restarting system\n[    0.0] Linux version 6.1\nsystemd[1]: ...\n", True),
        ("DEVENV-READY\n[  131.0] reboot: Restarting system\n[    0.0] Linux\nrb login: DEVENV-READY\n", False),
        ("DEVENV-READY\n[   41.2] reboot: Power down\n", False),
        ("", False),
    ],
    ids=["restarting", "booting-again", "ready-again", "poweroff", "empty"],
)
def test_a_reboot_from_inside_is_told_until_the_guest_is_ready_again(
    tmp_path: Path, console: str, rebooting: bool
) -> None:
    from devenv.backends.vm import rebooting_by_guest

    serial = tmp_path / "serial.log"
    serial.write_text(console)
    assert rebooting_by_guest(serial) is rebooting
