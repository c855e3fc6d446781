"""Showing long work as a list of steps with their durations, on stderr."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Steps:
    """Use as a context manager; call it with each step's name as the step begins.

    On a terminal a step is one line, `… name` redrawn as `✓ name  1.2s`; elsewhere
    the start and the end are a line each.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.current: str | None = None
        self.began = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, name: str) -> None:
        self._finish("✓")
        self.current = name
        self.began = time.monotonic()
        if not self.quiet:
            # Without a terminal (CI, a pipe, a log) the line cannot be redrawn, so the start gets a line
            # of its own: what a long wait is waiting on shows while it waits, not only after.
            sys.stderr.write(f"  … {name}" + ("" if self.tty else "\n"))
            sys.stderr.flush()

    def fail(self) -> None:
        """The current step failed, yet the work goes on (a fallback): shown ✗, the next step begins after it."""
        self._finish("✗")

    def _finish(self, mark: str) -> None:
        if self.current is None or self.quiet:
            self.current = None
            return
        took = time.monotonic() - self.began
        prefix = "\r" if self.tty else ""
        sys.stderr.write(f"{prefix}  {mark} {self.current}  {took:.1f}s\n")
        sys.stderr.flush()
        self.current = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish("✗" if exc_type else "✓")
