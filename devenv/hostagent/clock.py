"""Notice when the host's wall clock jumped (resume from sleep, manual change) so the guest can follow.

While the host sleeps the VM is frozen too; on resume its clock is behind by
the whole sleep and TLS, make and cron then misbehave. The monotonic clock
does not advance across suspend but the wall clock does, so the difference
between the two moving by more than a threshold between two ticks is a jump.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
