"""Reaching a guest's sshd through a proxy command (a jump host: `ssh -W %h:%p box`), without paramiko.

The command gets one end of a socket pair as its stdin and stdout, so the
caller holds a real socket: when the command exits, the socket reads EOF
(paramiko's own ProxyCommand busy-waits on a dead pipe instead), and a thread
reaps the process, so no connection attempt leaves a zombie behind. POSIX
only: Windows cannot hand a socket to a child as its stdio.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import threading
from collections.abc import Sequence


def proxy_argv(proxy: Sequence[str], host: str, port: int) -> list[str]:
    """The command with `%h` and `%p` filled in (the only tokens; any other % is literal)."""
    return [a.replace("%h", host).replace("%p", str(port)) for a in proxy]


def openssh_proxy_command(proxy: Sequence[str]) -> str:
    """The same command as an OpenSSH ProxyCommand line, which expands every %-token: other %s are doubled."""
    return shlex.join(re.sub(r"%(?![hp])", "%%", a) for a in proxy)


def proxy_socket(proxy: Sequence[str], host: str, port: int) -> socket.socket:
    """A connected socket whose other end is the proxy command's stdin and stdout; OSError when it cannot start."""
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(
            proxy_argv(proxy, host, port),
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is the CLI's to handle, not the proxy's
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    threading.Thread(target=proc.wait, name="proxy-reaper", daemon=True).start()
    return ours
