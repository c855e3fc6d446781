"""Suspend's bookkeeping as data: the RAM file on the command line, and when a saved guest may be loaded.

QEMU's part (saving and loading a real guest) is in tests/e2e; here each
reason a saved guest no longer fits is made to happen and must be named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devenv.backends.drivers import qemusave
from devenv.backends.drivers.qemuargs import VmSpec, build_argv
from tests.unit.test_qemuargs import spec as base_spec


def spec(tmp: Path, **kw: object) -> VmSpec:
    """test_qemuargs' spec, its files in `tmp` (some must exist) and the RAM in a file."""
    files = {f: tmp / getattr(base_spec(), f).name for f in ("disk", "cidata", "serial_log", "qmp_socket", "pid_file")}
    return base_spec(**{**files, "ram_file": tmp / qemusave.GUEST_RAM, **kw})


def test_the_guests_ram_is_a_shared_file_the_machine_uses(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path))
    obj = argv[argv.index("-object") + 1]
    assert obj == f"memory-backend-file,id=ram0,size=2048M,mem-path={tmp_path / 'memory.ram'},share=on"
    assert argv[argv.index("-machine") + 1] == "q35,memory-backend=ram0"
    assert argv[argv.index("-m") + 1] == "2048M"  # the same size: QEMU refuses a mismatch
    assert qemusave.uses_ram_file(argv)
    assert not qemusave.uses_ram_file(build_argv(spec(tmp_path, ram_file=None)))
    microvm = build_argv(spec(tmp_path, machine="microvm", kernel=tmp_path / "vmlinuz"))
    assert microvm[microvm.index("-machine") + 1] == "microvm,acpi=on,memory-backend=ram0"


def test_the_console_is_appended_to_so_a_restored_guest_keeps_its_boot_lines(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path))
    assert argv[argv.index("-chardev") + 1] == f"file,id=serial0,path={tmp_path / 'serial.log'},append=on"


def test_the_machine_type_is_pinned_to_its_version_and_its_options_kept() -> None:
    argv = ["qemu", "-machine", "q35,memory-backend=ram0", "-m", "1M"]
    assert qemusave.pin_machine(argv, "pc-q35-7.2") == [
        "qemu",
        "-machine",
        "pc-q35-7.2,memory-backend=ram0",
        "-m",
        "1M",
    ]
    assert qemusave.pin_machine(["qemu", "-machine", "virt"], "virt-7.2")[2] == "virt-7.2"


class FakeQmp:
    def __init__(self, machines: list[dict[str, object]]) -> None:
        self.machines = machines

    def command(self, name: str, **_: object) -> object:
        assert name == "query-machines"
        return self.machines


def test_the_versioned_machine_is_the_one_the_alias_names() -> None:
    q = FakeQmp([{"name": "pc-q35-7.1"}, {"name": "pc-q35-7.2", "alias": "q35"}, {"name": "microvm"}])
    assert qemusave.versioned_machine(q, "q35") == "pc-q35-7.2"
    assert qemusave.versioned_machine(q, "microvm") == "microvm"


def saved(tmp_path: Path) -> tuple[list[str], Path]:
    """An instance dir as a suspend leaves it: disk, RAM file, device state, record."""
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"disk")
    fw = tmp_path / "bios.fd"
    fw.write_bytes(b"fw")
    (tmp_path / qemusave.GUEST_RAM).write_bytes(b"ram")
    (tmp_path / qemusave.SAVED_STATE).write_bytes(b"state")
    argv = build_argv(spec(tmp_path, firmware=fw), "/bin/sh")  # a file that exists, standing in for QEMU
    qemusave.write_record(tmp_path, [*argv, "-incoming", "defer"], "pc-q35-7.2", disk)
    return argv, disk


def test_a_saved_guest_fits_the_same_vm_even_on_another_ssh_port(tmp_path: Path) -> None:
    argv, disk = saved(tmp_path)
    record = qemusave.read_record(tmp_path)
    assert record is not None and "-incoming" not in record["argv"]
    assert qemusave.misfit(record, argv, disk) is None
    moved = build_argv(spec(tmp_path, firmware=tmp_path / "bios.fd", ssh_port=40999), "/bin/sh")
    assert qemusave.misfit(record, moved, disk) is None
    bigger_cache = build_argv(spec(tmp_path, firmware=tmp_path / "bios.fd", tcg_cache_mb=256), "/bin/sh")
    assert bigger_cache != argv and qemusave.misfit(record, bigger_cache, disk) is None


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"memory": 4 * 1024**3}, "-m was `2048M`, is now `4096M`"),
        ({"cpus": 4}, "-smp was `2`, is now `4`"),
        ({"accel": "kvm"}, "-accel was `tcg`, is now `kvm`"),
        ({"shares": (("m0", "/src", True),)}, "the VM differs from the saved one"),
    ],
)
def test_a_vm_configured_otherwise_is_named_as_the_reason(tmp_path: Path, change: dict[str, object], said: str) -> None:
    _, disk = saved(tmp_path)
    record = qemusave.read_record(tmp_path)
    assert record is not None
    now = build_argv(spec(tmp_path, firmware=tmp_path / "bios.fd", **change), "/bin/sh")
    why = qemusave.misfit(record, now, disk)
    assert why is not None and said in why, why


def test_a_changed_file_disk_or_missing_part_is_named(tmp_path: Path) -> None:
    argv, disk = saved(tmp_path)
    record = qemusave.read_record(tmp_path)
    assert record is not None
    (tmp_path / "bios.fd").write_bytes(b"a newer firmware")
    assert f"{tmp_path / 'bios.fd'} changed since the save" in str(qemusave.misfit(record, argv, disk))
    argv, disk = saved(tmp_path)
    record = qemusave.read_record(tmp_path)
    assert record is not None
    disk.write_bytes(b"written by someone else")
    assert "the disk" in str(qemusave.misfit(record, argv, disk))
    argv, disk = saved(tmp_path)
    record = qemusave.read_record(tmp_path)
    assert record is not None
    (tmp_path / qemusave.GUEST_RAM).unlink()
    assert "memory file" in str(qemusave.misfit(record, argv, disk))


def test_no_record_no_saved_guest_and_discard_removes_all(tmp_path: Path) -> None:
    saved(tmp_path)
    (tmp_path / qemusave.SAVED_RECORD).write_text(json.dumps({"version": 999}))
    assert qemusave.read_record(tmp_path) is None  # another format: never loaded
    (tmp_path / qemusave.SAVED_RECORD).write_text("{half a rec")
    assert qemusave.read_record(tmp_path) is None
    qemusave.discard(tmp_path)
    for name in (qemusave.SAVED_RECORD, qemusave.SAVED_STATE, qemusave.GUEST_RAM):
        assert not (tmp_path / name).exists()
    assert (tmp_path / "disk.qcow2").read_bytes() == b"disk"  # the disk is never touched
