"""One start, stop or delete of an instance at a time; a stop wins over a start still running.

Two commands on one instance used to race: a `devenv stop` while a `devenv
start` still waited for the boot stopped the host agent, the start launched it
again into a guest that was shutting down, and then failed with the agent's log.

The lock is an flock on `op.lock` in the instance directory, held for the whole
operation. The kernel drops it when its holder exits, so a crash, a kill or a
Ctrl-C leaves no stale lock behind. The holder writes its pid and what it does
into the file, so a second command can say who holds it.

- stop (and delete --force) interrupt a start that holds the instance, as a
  Ctrl-C in its terminal would (SIGINT, then SIGTERM for a start that ignores
  it, e.g. one run in the background by a shell without job control), wait
  for it to let go, and go on: the user asked for the instance to stop. The
  start exits 130 and leaves the state a Ctrl-C leaves, which stop handles.
  Windows has no signal for another console's process, so there the busy
  instance is an error as below.
- Any other command that finds the instance busy gets a StateError naming the
  holder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from devenv import paths
from devenv.errors import StateError
from devenv.pidutil import claim, unlock

if TYPE_CHECKING:
    from devenv.backends.base import StepReporter

LET_GO_WAIT = 30.0  # s for an interrupted start to exit
TERM_AFTER = 5.0  # s after SIGINT before SIGTERM


@contextlib.contextmanager
def hold(inst_dir: Path, doing: str, step: StepReporter, *, interrupt_start: bool = False) -> Iterator[None]:
    """Hold the instance for `doing` (start, stop, delete) until the block ends."""
    path = inst_dir / paths.OP_LOCK
    mine = f"{os.getpid()} {doing}\n"
    fd = claim(path, mine)
    if fd is None:
        holder = _holder(path)
        if interrupt_start and holder is not None and holder[1] == "start":
            fd = _interrupt(path, mine, holder[0], step)
        if fd is None:
            who = f"`devenv {holder[1]}` (pid {holder[0]})" if holder else "another devenv command"
            raise StateError(
                f"instance `{inst_dir.name}` is busy: {who} is working on it",
                "wait for it to finish (or stop it with Ctrl-C), then run this again",
            )
    try:
        yield
    finally:
        unlock(fd)
        os.close(fd)


def running(inst_dir: Path) -> tuple[int, str] | None:
    """(pid, what it does) of the devenv command working on the instance now; None when none is.

    Read from what the holder wrote, never by taking the lock: a status asked
    at the moment a start claims it must not make that start fail as busy.
    The file outlives its holder, so its pid must still be a devenv process.
    """
    from devenv.pidutil import runs_as

    holder = _holder(inst_dir / paths.OP_LOCK)
    if holder is None or not runs_as(holder[0], b"devenv"):
        return None
    return holder


def _holder(path: Path) -> tuple[int, str] | None:
    """(pid, what it does) as the holder wrote it; None when unreadable (it may not have written yet)."""
    try:
        pid, doing = path.read_text().split()
        return int(pid), doing
    except (OSError, ValueError):
        return None


def _interrupt(path: Path, mine: str, pid: int, step: StepReporter) -> int | None:
    """Interrupt the start (pid) holding the lock; the lock's fd once this process holds it instead."""
    if os.name == "nt":
        return None
    step(f"interrupt `devenv start` (pid {pid})")
    began = time.monotonic()
    sent: list[signal.Signals] = []
    while time.monotonic() - began < LET_GO_WAIT:
        if (fd := claim(path, mine)) is not None:  # first: a start that just finished is not signalled for nothing
            return fd
        want = signal.SIGINT if time.monotonic() - began < TERM_AFTER else signal.SIGTERM
        if want not in sent:
            sent.append(want)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, want)
        time.sleep(0.1)
    step.fail()
    return None
