"""QMP against a real QEMU process (paused, no disk: starts in well under a second)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.backends.drivers.qmp import Qmp
from tests.integration.qemu_fixture import MISSING, QEMU, start_paused_qemu

pytestmark = pytest.mark.integration


@pytest.mark.skipif(QEMU is None, reason=MISSING)
def test_query_status_and_quit(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    proc = start_paused_qemu(sock)
    try:
        with Qmp(sock) as q:
            assert q.command("query-status")["status"] == "prelaunch"
            q.command("quit")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
