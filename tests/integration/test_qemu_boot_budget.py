"""start's wait for a guest: a first boot (provisioning) gets the longer budget, a later one the shorter.

Seen in CI on a 2-core host under TCG: an emulated aarch64 guest's first boot
answered on sshd after 136 s and was still in cloud-init's last stage when a
single 420 s budget ran out. Here the guest's sshd is a real OpenSSH server
(sshd_fixture) and its QEMU the stand-in (tests/qemu_stand_in.py: a live
process with a pid file, no console output); the budgets are cut to seconds.
The aarch64 e2e test boots the real guest under the real budget.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import paths
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import qemu
from devenv.backends.drivers.qemu import QemuDriver
from devenv.backends.vm import boot
from devenv.cli.ui import Steps
from devenv.config import Config
from devenv.errors import Timeout
from tests import qemu_stand_in
from tests.integration.sshd_fixture import SSHDInfo, SSHDServer, ssh_tools_available


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDInfo]:
    """The guest's sshd, up before the wait starts."""
    reason = ssh_tools_available()
    if reason:
        pytest.skip(reason)
    with SSHDServer(tmp_path_factory.mktemp("sshd")) as info:
        yield info


driver = QemuDriver()


def _boot(ref: InstanceRef) -> qemu._Boot:
    return qemu._Boot(ref, "qemu-system-x86_64", {"arch": "x86_64"}, "x86_64")


@pytest.fixture
def booting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstanceRef]:
    """An instance whose stand-in QEMU runs and whose console stays empty."""
    binary, _ = qemu_stand_in.install(tmp_path, monkeypatch)
    d = Path(os.path.realpath(tmp_path)) / "dev"
    d.mkdir()
    ref = InstanceRef("dev", d, Config(mounts=[]))
    QemuDriver()._launch(qemu._Boot(ref, str(binary), {"arch": "x86_64"}, "x86_64"), "tcg", "q35", "")
    (d / paths.SERIAL_LOG).write_text("")
    yield ref
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int((d / paths.QEMU_PID).read_text()), signal.SIGKILL)


def test_a_first_boot_waits_out_the_first_boot_budget_past_a_running_sshd(
    booting: InstanceRef, sshd: SSHDInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(boot.FIRST_BOOT_TIMEOUT, "emulated", 3.0)
    monkeypatch.setitem(boot.BOOT_TIMEOUT, "emulated", 1.0)
    (booting.dir / paths.SSH_PORT).write_text(f"{sshd.port}\n")
    began = time.monotonic()
    with Steps() as steps, pytest.raises(Timeout) as err:
        boot.wait_ready(driver, booting, steps, driver._watch(_boot(booting), "tcg", "auto"), announces=False)
    assert time.monotonic() - began >= 3.0
    assert (
        "the guest did not report DEVENV-READY within 3 s" in err.value.message
    )  # sshd answered, provisioning did not


def test_a_provisioned_guest_gets_the_later_boot_budget(
    booting: InstanceRef, sshd: SSHDInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(boot.FIRST_BOOT_TIMEOUT, "emulated", 30.0)
    monkeypatch.setitem(boot.BOOT_TIMEOUT, "emulated", 1.0)
    (booting.dir / paths.SSH_PORT).write_text(f"{sshd.port}\n")
    began = time.monotonic()
    with Steps() as steps, pytest.raises(Timeout) as err:
        boot.wait_ready(driver, booting, steps, driver._watch(_boot(booting), "tcg", "auto"), announces=True)
    assert time.monotonic() - began < 10.0
    # it announces on its console, so the port is not probed in that second: sshd is not seen either
    assert f"the guest's sshd did not answer on 127.0.0.1:{sshd.port} within 1 s" in err.value.message
