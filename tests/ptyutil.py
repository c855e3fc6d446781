"""Driving a program on a pseudo-terminal from a test: its window size, and reading until a pattern."""

from __future__ import annotations

import os
import select
import subprocess
import time


def set_winsize(fd: int, rows: int, cols: int) -> None:
    import fcntl  # POSIX only, and this module is imported by tests collected on every platform
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_until(fd: int, pattern: bytes, timeout: float, buf: bytearray) -> bool:
    """Read `fd` into `buf` until `pattern` is in it (True), the other side closes, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while pattern not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            buf += chunk
    return pattern in buf


def spawn_on_pty(
    argv: list[str], rows: int, cols: int, *, cwd: str | os.PathLike[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, int]:
    """`argv` with a new pty of rows x cols as its controlling terminal and all three stdio; (child, master, slave).

    As a terminal starts a program: its own session, the pty its controlling
    terminal (so SIGWINCH reaches it when the size changes). The caller closes
    both fds.
    """
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    set_winsize(master, rows, cols)

    def make_controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=make_controlling_tty,
    )
    return child, master, slave
