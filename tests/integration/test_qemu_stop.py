"""A real QEMU at the edges of its life: stop's three stages, a paused VM, an SSH port taken meanwhile.

A paused QEMU (tests/integration/qemu_fixture.py) ignores ACPI power-down, as a
hung or busy guest would, so stop must give up waiting, quit through QMP, and,
when QEMU does not even answer QMP (stopped with SIGSTOP here), kill it. Each
stage is a step the user sees. STOP_TIMEOUT is shortened; the stages are the
backend's own. No guest OS boots in any of these: each takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import paths
from devenv.backends import vm as vm_backend
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import qemu, qemuproc
from devenv.backends.drivers.qemu import QemuDriver, _Boot
from devenv.backends.vm import VmBackend
from devenv.config import Config
from tests.integration.qemu_fixture import MISSING, QEMU, start_paused_qemu
from tests.steprecorder import StepRecorder

pytestmark = [pytest.mark.integration, pytest.mark.skipif(QEMU is None, reason=MISSING)]


def qemu_vm() -> VmBackend:  # what the registry makes of "qemu"
    return VmBackend(QemuDriver())


@pytest.fixture
def vm() -> Iterator[tuple[InstanceRef, subprocess.Popen[bytes]]]:
    d = Path(tempfile.mkdtemp(prefix="qs-", dir="/tmp"))  # short: the QMP socket path must fit sun_path
    proc = start_paused_qemu(d / paths.QMP_SOCK, "-pidfile", str(d / paths.QEMU_PID))
    deadline = time.monotonic() + 10
    while not (d / paths.QEMU_PID).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield InstanceRef("t", d, Config(mounts=[])), proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(10)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def _gone(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return proc.wait(5) is not None
    except ChildProcessError:  # reaped by stop itself (the CLI's own child)
        return True


def test_a_guest_that_ignores_the_power_button_is_quit_through_qmp(
    vm: tuple[InstanceRef, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    inst, proc = vm
    monkeypatch.setattr(vm_backend, "STOP_TIMEOUT", 1.0)
    steps = StepRecorder()
    started = time.monotonic()
    qemu_vm().stop(inst, False, steps)
    assert _gone(proc) and time.monotonic() - started < 10
    assert steps.seen == [
        "stop the host agent",
        "ACPI power-down; up to 1 s for the guest to shut down",
        "✗",
        "QEMU quit (QMP)",
    ]


def test_the_power_button_is_pressed_again_while_stop_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A press made before the guest listens for it (early boot) is lost: stop presses again every few seconds.

    QEMU reports each press as a POWERDOWN event; a second QMP monitor, which
    stop does not use, counts them.
    """
    d = Path(tempfile.mkdtemp(prefix="qs-", dir="/tmp"))
    watch = d / "watch.sock"
    proc = start_paused_qemu(
        d / paths.QMP_SOCK, "-pidfile", str(d / paths.QEMU_PID), "-qmp", f"unix:{watch},server=on,wait=off"
    )
    try:
        deadline = time.monotonic() + 10
        while not ((d / paths.QEMU_PID).exists() and watch.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as mon:
            mon.settimeout(10)
            mon.connect(str(watch))
            replies = mon.makefile("rb")
            replies.readline()  # the greeting
            mon.sendall(b'{"execute": "qmp_capabilities"}\n')
            assert b'"return"' in replies.readline()
            monkeypatch.setattr(vm_backend, "STOP_TIMEOUT", 3.0)
            monkeypatch.setattr(qemu, "POWER_BUTTON_EVERY", 1.0)
            steps = StepRecorder()
            qemu_vm().stop(InstanceRef("t", d, Config(mounts=[])), False, steps)
            assert _gone(proc)
            assert steps.seen[:3] == [
                "stop the host agent",
                "ACPI power-down; up to 3 s for the guest to shut down",
                "✗",
            ]
            events = [json.loads(line) for line in replies.readlines()]  # until QEMU quit and closed it
        presses = [e for e in events if e.get("event") == "POWERDOWN"]
        assert len(presses) >= 3, events
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def test_force_skips_the_wait_and_a_qemu_deaf_to_qmp_is_killed(
    vm: tuple[InstanceRef, subprocess.Popen[bytes]],
) -> None:
    inst, proc = vm
    os.kill(proc.pid, signal.SIGSTOP)  # alive, holding its sockets, answering nothing
    steps = StepRecorder()
    qemu_vm().stop(inst, True, steps)
    assert _gone(proc)
    assert steps.seen == ["stop the host agent", "QEMU quit (QMP)", "✗", f"kill QEMU (pid {proc.pid})"]


def test_a_stranger_with_the_recorded_pid_is_left_alone(tmp_path: Path) -> None:
    """qemu.pid names a live process that is not this instance's QEMU (a pid reused after a crash)."""
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / paths.QEMU_PID).write_text(f"{stranger.pid}\n")
        steps = StepRecorder()
        qemu_vm().stop(InstanceRef("t", tmp_path, Config(mounts=[])), True, steps)
        assert steps.seen == ["stop the host agent"]  # nothing of ours runs: nothing to stop
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_paused_vm_is_reported_from_qmp_and_start_resumes_it(
    vm: tuple[InstanceRef, subprocess.Popen[bytes]],
) -> None:
    """Status asks QEMU itself: a paused VM (here QMP `stop`; a full host disk gives io-error) is not "running"."""
    from devenv.backends.drivers.qmp import Qmp

    inst, _ = vm
    qmp = inst.dir / paths.QMP_SOCK
    with Qmp(qmp) as q:
        q.command("cont")  # out of -S's prelaunch
        q.command("stop")
    assert qemuproc.vm_run_state(qmp) == "paused"
    st = qemu_vm().status(inst)
    assert (st.state, st.details["qemu_status"]) == ("degraded", "paused")  # not running; delete wants --force
    assert st.reason == "the VM is paused (QEMU's `stop`, or a debugger); `devenv start` resumes it"
    steps = StepRecorder()
    QemuDriver()._resume_if_stopped(inst, steps)
    assert steps.seen == ["resume the VM (paused)"] and qemuproc.vm_run_state(qmp) == "running"
    QemuDriver()._resume_if_stopped(inst, steps)  # running: nothing to do
    assert steps.seen == ["resume the VM (paused)"]
    assert qemuproc.vm_run_state(inst.dir / "no-such.sock") is None


def test_an_ssh_port_taken_between_choosing_and_binding_is_chosen_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real QEMU refuses the hostfwd of a port someone else listens on; start picks another and goes on."""
    import socket

    d = Path(tempfile.mkdtemp(prefix="qp-", dir="/tmp"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / paths.DISK), "64M"], check=True)
    (d / paths.CIDATA).write_bytes(b"\0" * 2048)
    inst = InstanceRef("t", d, Config(mounts=[]))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    real = qemu.ssh_port_for
    picks: list[int] = []

    def first_the_taken_port(inst_dir: Path) -> int:
        picks.append(real(inst_dir) if picks else port)  # as if someone took it after the check
        return picks[-1]

    monkeypatch.setattr(qemu, "ssh_port_for", first_the_taken_port)
    monkeypatch.setenv("DEVENV_MOUNT_TYPE", "sshfs")
    assert QEMU is not None
    try:
        QemuDriver()._launch(_Boot(inst, QEMU, {"arch": "x86_64"}, "x86_64"), "tcg", "q35", "")
        assert picks[0] == port and picks[1] != port and len(picks) == 2
        assert (d / paths.SSH_PORT).read_text().strip() == str(picks[1])
        assert f"Port {picks[1]}" in qemu_vm().ssh_config(inst)
        assert qemuproc.vm_run_state(d / paths.QMP_SOCK) == "running"
    finally:
        taken.close()
        qemu_vm().stop(inst, True, StepRecorder())
        for f in sorted(d.rglob("*"), reverse=True):
            f.unlink() if not f.is_dir() else f.rmdir()
        d.rmdir()


def test_stop_lets_a_paused_vm_run_so_it_can_shut_down_cleanly(
    vm: tuple[InstanceRef, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from devenv.backends.drivers.qmp import Qmp

    inst, proc = vm
    with Qmp(inst.dir / paths.QMP_SOCK) as q:
        q.command("cont")
        q.command("stop")
    monkeypatch.setattr(vm_backend, "STOP_TIMEOUT", 1.0)
    steps = StepRecorder()
    qemu_vm().stop(inst, False, steps)
    assert _gone(proc)
    assert steps.seen == [
        "stop the host agent",
        "resume the VM (paused) to shut it down",
        "ACPI power-down; up to 1 s for the guest to shut down",  # no guest OS here to act on it
        "✗",
        "QEMU quit (QMP)",
    ]
