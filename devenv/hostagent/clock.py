"""Notice when the host's wall clock jumped (resume from sleep, manual change) so the guest can follow.

While the host sleeps the VM is frozen too; on resume its clock is behind by
the whole sleep and TLS, make and cron then misbehave. The monotonic clock
does not advance across suspend but the wall clock does, so the difference
between the two moving by more than a threshold between two ticks is a jump.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

JUMP_THRESHOLD = 2.0  # seconds; NTP slews far less than this between two ticks


class JumpDetector:
    def __init__(
        self,
        threshold: float = JUMP_THRESHOLD,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._wall = wall
        self._mono = mono
        self._offset = wall() - mono()

    def check(self) -> float | None:
        """The jump in seconds (signed) since the last check when above the threshold, else None."""
        offset = self._wall() - self._mono()
        delta = offset - self._offset
        self._offset = offset
        return delta if abs(delta) > self.threshold else None


def resync_command(epoch: float) -> list[str]:
    """Set the guest clock to the host's; the devenv user has passwordless sudo."""
    return ["sudo", "-n", "date", "-u", "-s", f"@{epoch:.3f}"]


SHIFT_ENV = "DEVENV_TEST_CLOCK_SHIFT"  # "1": the detector's wall clock is shifted by SHIFT_FILE's seconds
SHIFT_FILE = "test-clock-shift"  # in the instance folder


def detector_wall(inst_dir: Path) -> Callable[[], float]:
    """The wall clock the jump detector reads: the host's, or for the e2e suite one it can move.

    A host's sleep cannot be had on a CI machine, nor may a test move the
    machine's clock; shifting only what the detector sees drives the whole
    path a wake takes (detect, set the real guest's clock from the host's).
    """
    if os.environ.get(SHIFT_ENV) != "1":
        return time.time
    shift = inst_dir / SHIFT_FILE

    def shifted() -> float:
        try:
            return time.time() + float(shift.read_text().strip() or 0)
        except (OSError, ValueError):
            return time.time()

    return shifted
