"""QMP against a real QEMU process (paused, no disk: starts in well under a second)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from devenv.backends.qmp import Qmp

pytestmark = pytest.mark.integration

QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (ci/setup-linux.sh installs it)")
def test_query_status_and_quit(tmp_path: Path) -> None:
    assert QEMU is not None
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [QEMU, "-nodefaults", "-machine", "q35", "-accel", "tcg", "-display", "none", "-S",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        with Qmp(sock) as q:
            assert q.command("query-status")["status"] == "prelaunch"
            q.command("quit")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
