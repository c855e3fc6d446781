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


# Windows console mode bits (SetConsoleMode): input, then output
_PROCESSED_INPUT, _LINE_INPUT, _ECHO_INPUT, _VIRTUAL_TERMINAL_INPUT = 0x1, 0x2, 0x4, 0x200
_VIRTUAL_TERMINAL_PROCESSING = 0x4


def windows_raw_modes(in_mode: int, out_mode: int) -> tuple[int, int]:
    """A Windows console's modes in raw mode: keys unprocessed (Ctrl-C is the byte 0x03, which the
    guest's PTY turns into SIGINT), no line editing or echo, keys as VT sequences; output read for VT
    sequences (the guest's colours and cursor moves)."""
    raw_in = (in_mode & ~(_PROCESSED_INPUT | _LINE_INPUT | _ECHO_INPUT)) | _VIRTUAL_TERMINAL_INPUT
    return raw_in, out_mode | _VIRTUAL_TERMINAL_PROCESSING


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on a tty, restored however the block ends; a no-op when `fd` is not a tty."""
    if not os.isatty(fd):
        yield
        return
    if sys.platform == "win32":
        with _windows_raw(fd):
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
def _windows_raw(fd: int) -> Iterator[None]:
    """The console behind `fd` (and the one stdout writes to) in raw mode, restored after; as is when not a console.

    Written from the documented Win32 calls (GetConsoleMode, SetConsoleMode);
    no Windows host has run it yet.
    """
    if sys.platform != "win32":
        yield
        return
    import ctypes
    import msvcrt

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handles = [msvcrt.get_osfhandle(fd), kernel32.GetStdHandle(-11)]  # STD_OUTPUT_HANDLE
    modes = [ctypes.c_ulong(), ctypes.c_ulong()]
    if not all(kernel32.GetConsoleMode(h, ctypes.byref(m)) for h, m in zip(handles, modes, strict=True)):
        yield
        return
    saved = [m.value for m in modes]
    for handle, raw in zip(handles, windows_raw_modes(saved[0], saved[1]), strict=True):
        kernel32.SetConsoleMode(handle, raw)
    try:
        yield
    finally:
        for handle, before in zip(handles, saved, strict=True):
            kernel32.SetConsoleMode(handle, before)


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
    if sys.platform == "win32":  # select() takes no console handles on Windows: a reader thread instead
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
