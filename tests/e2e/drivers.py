"""The VM drivers the e2e suite runs its checks through: one id each, so a new driver gets them all by adding a case.

Every test that takes the `vm` fixture (tests/e2e/conftest.py) runs once per
driver this host can run, against that driver's own shared instance. The
checks ask devenv itself for everything; a case holds only what a test cannot
ask: the words the driver shows, the process a crash test kills, the programs
the driver needs here. A check of one driver's own machinery (the QEMU
command line, say) says so with `if driver.backend == ...`. A module of
checks of the guest side alone runs on the primary driver (`guest_side_only`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class DriverCase:
    backend: str  # the backend name in devenv.toml
    instance: str  # the shared instance's name, which is also its guest's hostname
    boot_step: str  # the step `devenv start` shows while it boots the VM
    fast_via: str  # how status names a forward of a port on every guest address ("ssh" without a fast path)
    loopback_via: str  # and of a port on the guest's loopback alone (the fast path through the guest agent's bridge)
    vm_pid_file: str  # in the instance dir: the VM's process, which the crash tests kill
    needs: tuple[str, ...]  # programs this host must have to run the driver
    env: tuple[tuple[str, str], ...] = ()  # set for its instances unless the environment says otherwise

    def missing(self) -> str | None:
        """None when this host can run the driver, else what it lacks."""
        lacking = [p for p in self.needs if shutil.which(p) is None]
        return f"{', '.join(lacking)} missing (ci/setup-linux.sh installs it)" if lacking else None

    def environment(self) -> dict[str, str]:
        return {k: os.environ.get(k, v) for k, v in self.env}


# The libvirt driver on the test user's own daemon (qemu:///session), which runs QEMU as that user; TCG as
# for qemu. Its shared instance boots once the qemu case's tests are done (pytest groups a session
# fixture's tests by parameter), so the two guests never share the 2 cores of a CI machine.
LIBVIRT = DriverCase(
    "libvirt",
    "e2e-lv",
    "start the libvirt domain",
    "ssh",
    "ssh",
    "libvirt.pid",
    ("qemu-system-x86_64", "qemu-img", "virsh"),
    (("DEVENV_QEMU_ACCEL", "tcg"), ("LIBVIRT_DEFAULT_URI", "qemu:///session")),
)

CASES = {
    # nested KVM hangs on the CI machines: TCG unless DEVENV_QEMU_ACCEL says otherwise (kvm on a laptop)
    "qemu": DriverCase(
        "qemu",
        "e2e",
        "start QEMU",
        "qemu",
        "qemu+bridge",
        "qemu.pid",
        ("qemu-system-x86_64", "qemu-img"),
        (("DEVENV_QEMU_ACCEL", "tcg"),),
    ),
    "libvirt": LIBVIRT,
}

# The primary driver (the default VM driver on Linux and macOS) alone runs the checks of the guest side: the
# engine a runtime choice installs, the sshfs mount kind, the tools that talk to the engine (test_runtime_*.py,
# test_sshfs_mounts.py, test_tools.py). What they test is the same under every driver: the guest, and the host
# agent's socket and forwards, whose path under each driver the driver's own checks cover (test_hostagent_e2e.py,
# test_load.py). Under TCG a second run of them cost 6 minutes of CI's hour. The driver's own work (start, stop,
# crashes, exec, forwards, load, snapshots) runs on every driver; test_load.py moves a quarter of its bytes
# through the others.
PRIMARY = "qemu"

# A module's `pytestmark` entry: its tests take the `driver` fixture (and its VM) for the primary driver alone.
guest_side_only = pytest.mark.parametrize("driver", [PRIMARY], indirect=True)
