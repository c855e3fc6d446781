"""A real QEMU, paused before the guest runs (-S) and with no disk: a QMP peer that starts in well under a second."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

QEMU = shutil.which("qemu-system-x86_64")
MISSING = "qemu-system-x86_64 is not installed (ci/setup-linux.sh installs it)"


def start_paused_qemu(qmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    """QEMU with its QMP socket at `qmp` (and `extra` arguments), once that socket exists."""
    assert QEMU is not None, MISSING
    proc = subprocess.Popen(
        [QEMU, "-nodefaults", "-machine", "q35", "-accel", "tcg", "-display", "none", "-S", *extra,
         "-qmp", f"unix:{qmp},server=on,wait=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not qmp.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    return proc
