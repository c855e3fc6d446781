"""The libvirt driver's snapshots against libvirt's test:///default driver (in-process, no daemon).

The test driver keeps snapshot records as a daemon does (names, times, the
domain's XML, the disks each names) and refuses what a daemon refuses (a
duplicate name, undefining a domain that has snapshots without the flag),
but writes no disk: that a restore puts the bytes back is the e2e suite's
check (tests/e2e/test_snapshots.py) and, for qemu-img's part, test_snapshots.py's.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import libvirt
except ImportError:
    if os.environ.get("CI"):
        raise  # ci/setup-linux.sh installs the `libvirt` extra
    pytest.skip("libvirt-python is not installed (pip install 'devenv[libvirt]')", allow_module_level=True)

from devenv import config, paths
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import libvirturi
from devenv.backends.drivers.libvirtdrv import LibvirtDriver
from devenv.backends.drivers.libvirtxml import Owner, domain_name, domain_xml
from devenv.backends.drivers.qemuargs import VmSpec
from devenv.backends.vm import VmBackend
from devenv.errors import CommandFailed, SnapshotNotFound, StateError
from tests.steprecorder import StepRecorder

TEST_URI = "test:///default"


@pytest.fixture
def conn() -> Iterator[Any]:
    libvirturi.quiet()
    c = libvirt.open(TEST_URI)
    yield c
    for dom in c.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    c.close()


@pytest.fixture
def inst(tmp_path: Path) -> InstanceRef:
    folder = tmp_path / "instances" / "web"
    folder.mkdir(parents=True)
    cfg = config.Config(name="web", backend="libvirt", libvirt_uri=TEST_URI)
    (folder / paths.INSTANCE_CONFIG).write_text(cfg.to_toml())
    (folder / paths.PROVISIONED).touch()
    return InstanceRef("web", folder, cfg)


def xml_of(inst: InstanceRef, uuid: str = "") -> str:
    """The domain XML devenv defines for the instance: its overlay disk (vda) and the read-only seed."""
    d = inst.dir
    spec = VmSpec(
        name=inst.name,
        arch="x86_64",
        accel="tcg",
        cpus=1,
        memory=1024**3,
        disk=d / paths.DISK,
        cidata=d / paths.CIDATA,
        ssh_port=0,
        serial_log=d / "serial.log",
        qmp_socket=d / "unused.sock",
        pid_file=d / "unused.pid",
        kernel=d / "vmlinuz",
        initrd=d / "initrd.img",
        cmdline="console=ttyS0",
        machine="q35",
    )
    owner = Owner(inst.name, str(inst.dir.absolute()))
    return domain_xml(spec, domain_name(inst.name, inst.dir), owner, "/usr/bin/qemu", uuid=uuid)


@pytest.fixture
def dom(conn: Any, inst: InstanceRef) -> Any:
    return conn.defineXML(xml_of(inst))


@pytest.fixture
def vm() -> VmBackend:
    return VmBackend(LibvirtDriver())


def names(vm: VmBackend, inst: InstanceRef) -> list[str]:
    return [s.name for s in vm.snapshot_list(inst)]


def test_the_driver_says_it_has_snapshots(vm: VmBackend) -> None:
    assert vm.features.snapshots


def test_create_list_restore_delete(vm: VmBackend, inst: InstanceRef, dom: Any) -> None:
    step = StepRecorder()
    vm.snapshot_create(inst, "one", step)
    vm.snapshot_create(inst, "two", step)
    listed = vm.snapshot_list(inst)
    assert [s.name for s in listed] == ["one", "two"]
    assert listed[0].created <= listed[1].created and listed[0].created > 1.6e9
    assert sorted(dom.snapshotListNames()) == ["one", "two"]

    vm.snapshot_restore(inst, "one", step)
    assert not dom.isActive(), "a restore leaves the domain off"
    assert dom.snapshotCurrent().getName() == "one"

    vm.snapshot_delete(inst, "one", step)
    assert names(vm, inst) == ["two"]
    assert any("take the internal snapshot one of the libvirt domain" in s for s in step.seen)


def test_the_snapshot_is_of_the_writable_disk_alone(vm: VmBackend, inst: InstanceRef, dom: Any) -> None:
    """The seed is a raw read-only disk that devenv rewrites at each start: it is never in a snapshot."""
    vm.snapshot_create(inst, "one", StepRecorder())
    snap = ET.fromstring(dom.snapshotLookupByName("one").getXMLDesc())
    kinds = {d.get("name"): d.get("snapshot") for d in snap.findall("disks/disk")}
    devices = ET.fromstring(dom.XMLDesc())
    seed = next(d for d in devices.findall("devices/disk") if d.find("readonly") is not None)
    disk = next(d for d in devices.findall("devices/disk") if d.find("readonly") is None)
    assert kinds[disk.find("target").get("dev")] == "internal"  # type: ignore[union-attr]
    assert kinds.get(seed.find("target").get("dev"), "no") == "no"  # type: ignore[union-attr]
    assert snap.find("memory").get("snapshot") == "no"  # type: ignore[union-attr]
    assert snap.findtext("description") == "devenv snapshot"


def test_snapshots_survive_the_redefine_of_every_start(vm: VmBackend, inst: InstanceRef, dom: Any, conn: Any) -> None:
    vm.snapshot_create(inst, "one", StepRecorder())
    again = conn.defineXML(xml_of(inst, uuid=dom.UUIDString()))  # what launch() does at every start
    assert again.UUIDString() == dom.UUIDString()
    assert names(vm, inst) == ["one"]


def test_create_and_restore_of_a_running_domain_are_refused(vm: VmBackend, inst: InstanceRef, dom: Any) -> None:
    vm.snapshot_create(inst, "one", StepRecorder())
    dom.create()
    for do in (vm.snapshot_create, vm.snapshot_restore):
        with pytest.raises(StateError) as e:
            do(inst, "one" if do == vm.snapshot_restore else "two", StepRecorder())
        assert (
            e.value.message
            == "instance `web` is running: devenv can "
            + ("restore a snapshot" if do == vm.snapshot_restore else "take a snapshot")
            + " only while it is shut down"
        )
        assert e.value.hint == "shut it down first: `devenv stop --shutdown -n web`"
    assert names(vm, inst) == ["one"]
    dom.suspend()  # paused: the same
    with pytest.raises(StateError, match="is paused"):
        vm.snapshot_restore(inst, "one", StepRecorder())


def test_list_and_delete_work_while_the_domain_runs(vm: VmBackend, inst: InstanceRef, dom: Any) -> None:
    vm.snapshot_create(inst, "one", StepRecorder())
    dom.create()
    assert names(vm, inst) == ["one"]
    vm.snapshot_delete(inst, "one", StepRecorder())
    assert names(vm, inst) == []


def test_an_unknown_name_is_not_found(vm: VmBackend, inst: InstanceRef, dom: Any) -> None:
    for do in (vm.snapshot_restore, vm.snapshot_delete):
        with pytest.raises(SnapshotNotFound) as e:
            do(inst, "nope", StepRecorder())
        assert e.value.message == "instance `web` has no snapshot `nope`"
        assert e.value.hint == "`devenv snapshot list -n web` lists its snapshots"


def test_an_instance_whose_domain_was_never_defined(vm: VmBackend, inst: InstanceRef, conn: Any) -> None:
    assert vm.snapshot_list(inst) == []
    with pytest.raises(SnapshotNotFound):
        vm.snapshot_restore(inst, "one", StepRecorder())
    with pytest.raises(StateError, match="has no libvirt domain yet"):
        vm.snapshot_create(inst, "one", StepRecorder())


def test_a_libvirt_error_names_the_uri_and_the_operation(vm: VmBackend, inst: InstanceRef, dom: Any) -> None:
    driver = vm.driver
    assert isinstance(driver, LibvirtDriver)
    driver.snapshot_create(inst, "one", StepRecorder())
    with pytest.raises(CommandFailed) as e:  # past the VM backend's own check: libvirt's refusal
        driver.snapshot_create(inst, "one", StepRecorder())
    assert e.value.message.startswith(
        f"libvirt (test:///default) could not create the snapshot one of the domain {dom.name()}: "
    )
    assert "already exists" in e.value.message


def test_deleting_the_instance_undefines_a_domain_with_snapshots(
    vm: VmBackend, inst: InstanceRef, dom: Any, conn: Any
) -> None:
    vm.snapshot_create(inst, "one", StepRecorder())
    name = dom.name()
    vm.driver.delete(inst)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)
    again = conn.defineXML(xml_of(inst))  # a new domain of that name starts with none
    assert again.snapshotListNames() == []


def test_a_domain_not_devenvs_is_never_touched(vm: VmBackend, inst: InstanceRef, conn: Any) -> None:
    """A domain of the instance's name without this instance's metadata: its snapshots are not the instance's."""
    root = ET.fromstring(xml_of(inst))
    root.remove(root.find("metadata"))  # type: ignore[arg-type]
    foreign = conn.defineXML(ET.tostring(root, encoding="unicode"))
    foreign.snapshotCreateXML("<domainsnapshot><name>theirs</name></domainsnapshot>", 0)
    assert vm.snapshot_list(inst) == []
    with pytest.raises(SnapshotNotFound):
        vm.snapshot_delete(inst, "theirs", StepRecorder())
    assert foreign.snapshotListNames() == ["theirs"]
