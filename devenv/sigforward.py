"""Ctrl-C and SIGTERM passed on to a remote command instead of stopping this process.

Both ways `devenv exec` runs a command (the host agent's control socket, or
SSH directly) need the same thing; stdlib only, since the first is a hot path.
"""

from __future__ import annotations

# signal.py's C half: signal.py wraps its numbers in enums, and enum costs the exec hot path ~9 ms
import _signal  # type: ignore[import-not-found,unused-ignore]

TYPE_CHECKING = False  # collections.abc/types/typing only for the type checker: this is the exec hot path
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

SIGINT: int = _signal.SIGINT
SIGTERM: int = _signal.SIGTERM


class forward_signals:  # lower case: used like a function, `with forward_signals(send):`
    """While the body runs, SIGINT/SIGTERM call send("INT"/"TERM"); handlers are restored after.

    Only the main thread can own signal handlers; elsewhere this does nothing.
    A class, not @contextlib.contextmanager: contextlib costs the exec hot path ~5 ms to import.
    """

    def __init__(self, send: Callable[[str], None]) -> None:
        self.send = send
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.send("INT" if signum == SIGINT else "TERM")

    def __enter__(self) -> None:
        for s in (SIGINT, SIGTERM):
            try:
                self.previous[s] = _signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals stay where they are
                break

    def __exit__(self, *exc: object) -> None:
        for s, old in self.previous.items():
            _signal.signal(s, old)
        self.previous = {}
