"""Ctrl-C and SIGTERM passed on to a remote command instead of stopping this process.

Both ways `devenv exec` runs a command (the host agent's control socket, or
SSH directly) need the same thing; stdlib only, since the first is a hot path.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


@contextlib.contextmanager
def forward_signals(send: Callable[[str], None]) -> Iterator[None]:
    """While the body runs, SIGINT/SIGTERM call send("INT"/"TERM"); handlers are restored after.

    Only the main thread can own signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        send("INT" if signum == signal.SIGINT else "TERM")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
