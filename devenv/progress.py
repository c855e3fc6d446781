"""Progress for long transfers on stderr.

Downloads redraw one line on a terminal and print a line every few seconds
otherwise (CI logs); copies show progress only on a terminal.
"""

from __future__ import annotations

import sys
import time


class CopyProgress:
    """A one-line progress display for files big enough to be worth watching."""

    MIN_SIZE = 16 * 1024 * 1024

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.current = ""

    def __call__(self, path: str, done: int, total: int) -> None:
        if not self.tty or total < self.MIN_SIZE:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        pct = done * 100 // total if total else 100
        name = path if len(path) <= 40 else "…" + path[-39:]
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r  {name}  {pct:3d}%  {done / 1024**2:.0f}/{total / 1024**2:.0f} MiB{end}")
        sys.stderr.flush()


class DownloadProgress:
    """A download progress line on stderr (rich is not needed for one line)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else 5.0) and done != total:
            return
        self.last = now
        mib = done / 1024**2
        if total:
            pct = done * 100 // total
            bar = "#" * (pct // 4)
            text = f"{self.label} [{bar:<25}] {pct:3d}% {mib:.0f}/{total / 1024**2:.0f} MiB"
        else:
            text = f"{self.label} {mib:.0f} MiB"
        sys.stderr.write(("\r" if self.tty else "") + text + ("" if self.tty else "\n"))
        sys.stderr.flush()
