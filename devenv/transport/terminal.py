"""An interactive session on the user's terminal: raw mode, window size, keys in and output out.

`devenv shell` and `devenv exec -t` (transport/ssh.py SSHConnection.shell) run
the guest's program on a PTY of its own, as `ssh -t` does.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import paramiko

from devenv.fdio import write_all
from devenv.transport.pumps import CHUNK, pump_out, pump_stdin


def terminal_size(*fds: int) -> tuple[int, int]:
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns and size.lines:
                return size.columns, size.lines
    return 80, 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on a tty, restored however the block ends; a no-op when `fd` is not a tty."""
    if sys.platform == "win32" or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # DRAIN like OpenSSH: keep keys typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def resize_on_sigwinch(channel: paramiko.Channel, *fds: int) -> Iterator[None]:
    sigwinch = getattr(signal, "SIGWINCH", None)
    if sigwinch is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_winch(_signum: int, _frame: FrameType | None) -> None:
        cols, rows = terminal_size(*fds)
        with contextlib.suppress(Exception):
            channel.resize_pty(width=cols, height=rows)

    previous = signal.signal(sigwinch, on_winch)
    try:
        yield
    finally:
        signal.signal(sigwinch, previous)


def interact(channel: paramiko.Channel, in_fd: int, out_fd: int) -> None:
    """Copy keys to the channel and output to the terminal until the remote side closes."""
    if os.name == "nt":  # select() takes no console handles on Windows: a reader thread instead
        stop = threading.Event()
        stdin = os.fdopen(in_fd, "rb", buffering=0, closefd=False)
        feeder = threading.Thread(target=pump_stdin, args=(channel, stdin, stop), daemon=True)
        feeder.start()
        try:
            pump_out(channel.recv, lambda data: write_all(out_fd, data))
        finally:
            stop.set()
        return
    stdin_open = True
    while True:
        watch: list[Any] = [channel, in_fd] if stdin_open else [channel]
        ready, _, _ = select.select(watch, [], [])
        if channel in ready:
            data = channel.recv(CHUNK)
            if not data:
                return
            write_all(out_fd, data)
        if stdin_open and in_fd in ready:
            try:
                keys = os.read(in_fd, 4096)
            except OSError:  # EIO: the local terminal went away
                keys = b""
            if keys:
                channel.sendall(keys)
            else:
                stdin_open = False
                channel.shutdown_write()
