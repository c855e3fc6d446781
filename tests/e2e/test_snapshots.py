"""`devenv snapshot` on a real guest, through each VM driver that has snapshots (qemu, libvirt).

It uses the driver's shared instance (conftest.py's `vm`) rather than one of
its own: another guest beside it would share the machine's two cores, and a
first boot of its own costs more than the two boots this needs. It leaves the
instance running, as it found it, with its disk as it was when the module
began plus the snapshot `kept`: test_vm_lifecycle.py's last test then
deletes an instance that has a snapshot (for libvirt, a domain that can only
be undefined with its snapshots' metadata).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase

pytestmark = pytest.mark.e2e

VM = tuple[Devenv, str, subprocess.CompletedProcess[bytes]]


def _sh(d: Devenv, name: str, script: str) -> subprocess.CompletedProcess[bytes]:
    return d.run("exec", "-n", name, "--", "sh", "-c", script, timeout=300)


def _names(d: Devenv, name: str) -> list[str]:
    return [row["name"] for row in json.loads(d.ok("snapshot", "list", "-n", name, "--json").stdout)]


def test_a_restore_puts_the_disk_back_as_it_was_at_the_snapshot(vm: VM) -> None:
    d, name, _ = vm
    assert _sh(d, name, "echo one > ~/snap-first.txt && rm -f ~/snap-second.txt && sync").returncode == 0
    d.ok("stop", "--shutdown", "-n", name, timeout=300)
    made = d.ok("snapshot", "create", "before", "-n", name)
    assert f"instance `{name}`: snapshot `before` created".encode() in made.stdout
    d.ok("snapshot", "create", "spare", "-n", name)
    d.ok("snapshot", "create", "kept", "-n", name)

    d.ok("start", "-n", name)
    assert _sh(d, name, "echo two > ~/snap-first.txt && echo new > ~/snap-second.txt && sync").returncode == 0
    d.ok("stop", "--shutdown", "-n", name, timeout=300)

    restored = d.ok("snapshot", "restore", "before", "-n", name)
    assert f"instance `{name}`: disk restored to snapshot `before`".encode() in restored.stdout
    d.ok("snapshot", "delete", "spare", "-n", name)
    assert _names(d, name) == ["before", "kept"]
    table = d.ok("snapshot", "list", "-n", name).stdout.decode().splitlines()
    assert table[0].split() == ["NAME", "CREATED"] and [row.split()[0] for row in table[1:]] == ["before", "kept"]

    d.ok("start", "-n", name)
    assert _sh(d, name, "cat ~/snap-first.txt").stdout == b"one\n"
    gone = _sh(d, name, "test -e ~/snap-second.txt")
    assert gone.returncode == 1, "a file written after the snapshot is gone after the restore"


def test_a_running_instance_is_listed_but_neither_snapshotted_nor_restored(vm: VM, driver: DriverCase) -> None:
    d, name, _ = vm
    assert _names(d, name) == ["before", "kept"]
    for argv in (["create", "later"], ["restore", "before"]):
        r = d.run("snapshot", *argv, "-n", name)
        assert r.returncode == 67, r.stderr
        assert f"instance `{name}` is running: devenv can".encode() in r.stderr
        assert f"`devenv stop --shutdown -n {name}`".encode() in r.stderr
    r = d.run("snapshot", "delete", "before", "-n", name)
    if driver.backend == "libvirt":  # libvirt deletes an internal snapshot of a running domain through QEMU
        assert r.returncode == 0, r.stderr
        assert _names(d, name) == ["kept"]
    else:  # QEMU holds the overlay's lock while it runs
        assert r.returncode == 67 and b"only while it is shut down" in r.stderr, r.stderr
        assert _names(d, name) == ["before", "kept"]
    assert _sh(d, name, "cat ~/snap-first.txt").stdout == b"one\n"  # the guest ran on untouched
