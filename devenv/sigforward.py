"""Ctrl-C and SIGTERM passed on to a remote command instead of stopping this process.

Both ways `devenv exec` runs a command (the host agent's control socket, or
SSH directly) need the same thing; stdlib only, since the first is a hot path.
"""

from __future__ import annotations

import signal
import threading

TYPE_CHECKING = False  # collections.abc/types/typing only for the type checker: this is the exec hot path
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any


class forward_signals:  # lower case: used like a function, `with forward_signals(send):`
    """While the body runs, SIGINT/SIGTERM call send("INT"/"TERM"); handlers are restored after.

    Only the main thread can own signal handlers; elsewhere this does nothing.
    A class, not @contextlib.contextmanager: contextlib costs the exec hot path ~5 ms to import.
    """

    def __init__(self, send: Callable[[str], None]) -> None:
        self.send = send
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.send("INT" if signum == signal.SIGINT else "TERM")

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: object) -> None:
        for s, old in self.previous.items():
            signal.signal(s, old)
        self.previous = {}
