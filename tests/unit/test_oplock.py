"""The instance lock with real processes holding it: busy errors, a stop that interrupts a start, crashes.

Each holder is a real Python process that takes the lock the way `devenv
start` does and then waits, so the signals, exit codes and the kernel's
release of the flock are the real ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import oplock, paths
from devenv.errors import StateError
from tests.steprecorder import StepRecorder

pytestmark = pytest.mark.skipif(os.name == "nt", reason="a stop interrupts a start with POSIX signals")

HOLDER = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from devenv import oplock
    if sys.argv[3] == "deaf":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with oplock.hold(Path(sys.argv[1]), sys.argv[2], lambda name: None):
            print("held", flush=True)
            time.sleep(60)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    made: list[subprocess.Popen[str]] = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def hold_in_another_process(inst: Path, doing: str, made: list[subprocess.Popen[str]], how: str = "") -> int:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(inst), doing, how or "plain"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    made.append(p)
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p.pid


def test_a_second_command_is_told_who_holds_the_instance(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    pid = hold_in_another_process(tmp_path, "start", holders)
    with pytest.raises(StateError) as e, oplock.hold(tmp_path, "start", StepRecorder()):
        pass
    assert e.value.message == f"instance `{tmp_path.name}` is busy: `devenv start` (pid {pid}) is working on it"
    assert "Ctrl-C" in e.value.hint
    assert holders[0].poll() is None  # asked, not interrupted: only a stop interrupts


def test_a_stop_interrupts_a_start_and_goes_on(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    pid = hold_in_another_process(tmp_path, "start", holders)
    steps = StepRecorder()
    with oplock.hold(tmp_path, "stop", steps, interrupt_start=True):
        assert holders[0].wait(5) == 130  # its KeyboardInterrupt, as from a Ctrl-C
        assert (tmp_path / paths.OP_LOCK).read_text() == f"{os.getpid()} stop\n"
    assert steps.seen == [f"interrupt `devenv start` (pid {pid})"]


def test_a_start_deaf_to_sigint_gets_sigterm(
    tmp_path: Path, holders: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    hold_in_another_process(tmp_path, "start", holders, how="deaf")
    monkeypatch.setattr(oplock, "TERM_AFTER", 0.5)
    started = time.monotonic()
    with oplock.hold(tmp_path, "stop", StepRecorder(), interrupt_start=True):
        assert holders[0].wait(5) == -signal.SIGTERM
    assert time.monotonic() - started < 5


def test_a_stop_never_interrupts_another_stop(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    pid = hold_in_another_process(tmp_path, "stop", holders)
    with (
        pytest.raises(StateError, match=f"`devenv stop` \\(pid {pid}\\)"),
        oplock.hold(tmp_path, "stop", StepRecorder(), interrupt_start=True),
    ):
        pass
    assert holders[0].poll() is None


def test_a_holder_killed_outright_leaves_no_lock(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    hold_in_another_process(tmp_path, "start", holders)
    holders[0].kill()  # SIGKILL: no cleanup ran; the kernel drops the flock
    holders[0].wait(5)
    steps = StepRecorder()
    with oplock.hold(tmp_path, "start", steps):
        pass
    assert steps.seen == []  # nothing to interrupt, nothing to wait for
    assert (tmp_path / paths.OP_LOCK).stat().st_mode & 0o777 == 0o600


def test_running_names_the_holder_only_while_it_runs(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    assert oplock.running(tmp_path) is None  # no lock file yet
    pid = hold_in_another_process(tmp_path, "start", holders)
    assert oplock.running(tmp_path) == (pid, "start")
    assert oplock.running(tmp_path) == (pid, "start")  # asking took no lock: the holder still holds it
    holders[0].kill()
    holders[0].wait(5)
    assert (tmp_path / paths.OP_LOCK).read_text() == f"{pid} start\n"  # the file outlives its holder...
    assert oplock.running(tmp_path) is None  # ...and is not believed
    other = subprocess.Popen(["sleep", "30"])  # a live pid, not a devenv process: a recycled one
    holders.append(other)  # type: ignore[arg-type]
    (tmp_path / paths.OP_LOCK).write_text(f"{other.pid} start\n")
    assert oplock.running(tmp_path) is None
