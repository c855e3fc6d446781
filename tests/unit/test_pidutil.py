"""pid_alive and the pid-file lock on this (POSIX) host; the Windows branches cannot run here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devenv.pidutil import pid_alive, process_start, try_lock, unlock


def test_pid_alive_for_a_live_a_dead_and_an_impossible_pid() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(0) and not pid_alive(-1)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombies are told apart through /proc")
def test_an_unreaped_child_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{child.pid}/stat")
    while time.monotonic() < deadline and stat.read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.02)
    assert not pid_alive(child.pid)  # exited, not yet waited for
    child.wait()


def test_pid_alive_does_not_disturb_the_process() -> None:
    """The reason this module exists: probing must never signal or end the process."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(5):
            assert pid_alive(child.pid)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert try_lock(fd)
        probe = (
            "import os,sys; from devenv.pidutil import try_lock, unlock\n"
            f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
            "ok = try_lock(fd, exclusive=False)\n"
            "print('free' if ok else 'held')"
        )
        held = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        assert held.stdout.strip() == "held"
        unlock(fd)
        free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        assert free.stdout.strip() == "free"
    finally:
        os.close(fd)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_process_start_tells_processes_apart_and_is_none_once_gone() -> None:
    ours = process_start(os.getpid())
    assert ours and ours == process_start(os.getpid())  # stable for one process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = process_start(child.pid)
        assert theirs  # set for a live process
        assert theirs == Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19]
        assert theirs != ours  # the child started later: a field shared by both processes is not the start time
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) is None
    assert process_start(0) is None


@pytest.mark.parametrize("source", ["command_line", "ps_command_line"])
def test_a_command_line_tells_our_process_from_a_recycled_pid(source: str, tmp_path: Path) -> None:
    """What qemu.pid_is_ours compares: /proc on Linux, ps (the macOS path) run here too."""
    from devenv import pidutil
    from devenv.backends.drivers.qemuproc import pid_is_ours

    read = getattr(pidutil, source)
    marker = str(tmp_path / "inst dir" / "qmp.sock")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "someone else"])
    try:
        deadline = time.monotonic() + 10  # until both have exec'd: before that /proc shows this test's own line
        while not all(b"time.sleep(30)" in read(p.pid) for p in (child, stranger)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.encode() in read(child.pid)
        assert marker.encode() not in read(stranger.pid)
        assert pid_is_ours(child.pid, tmp_path / "inst dir")
        assert not pid_is_ours(stranger.pid, tmp_path / "inst dir")  # alive, but not our VM: never stopped or killed
    finally:
        for p in (child, stranger):
            p.kill()
            p.wait()
    assert read(child.pid) == b""  # gone
