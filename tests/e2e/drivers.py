"""The VM drivers the e2e suite runs its checks through: one id each, so a new driver gets them all by adding a case.

Every test that takes the `vm` fixture (tests/e2e/conftest.py) runs once per
driver this host can run, against that driver's own shared instance. The
checks ask devenv itself for everything; a case holds only what a test cannot
ask: the words the driver shows, the process a crash test kills, the programs
the driver needs here. A check of one driver's own machinery (the QEMU
command line, say) says so with `if driver.backend == ...`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


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
