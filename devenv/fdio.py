"""Writing all of a buffer to an fd the caller handed us, which may be non-blocking.

Stdlib only and cheap to import: the `devenv exec` client, the host agent and
the SSH shell all write command output to fds that a shell may share with
other processes (and so may have set O_NONBLOCK on).
"""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd`, also when the caller's fd is non-blocking (shared with its shell); OSError when gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]
