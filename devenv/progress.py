"""Progress for long transfers, drawn on stderr only when it is a terminal."""

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
