"""The instance's append-only JSON-lines event log (events.jsonl), shared with instance.py.

Same record shape as Instance.event ({"time": ..., "event": ..., **fields}), so
`devenv logs` shows lifecycle and agent events interleaved in one file. Each
record is one write() on an O_APPEND descriptor: concurrent writers (the CLI
and the agent) never interleave within a line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> None:
        """Append one event; a full disk or a removed instance dir is logged, never raised."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **fields}
        data = (json.dumps(record, default=str) + "\n").encode()
        log.info("event %s", data.decode().strip())
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as e:
                log.warning("cannot write %s: %s", self.path, e)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every parseable record (tests and `status` read it; a torn last line is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
