"""The libvirt driver's XML, URI choice, ownership rule and error paths, against libvirt's test:///default driver.

test:///default is libvirt's in-process fake hypervisor: it parses and keeps
domains as a daemon would (so the XML is checked by libvirt itself), runs,
pauses and destroys them, and needs no daemon. It starts with one domain of
its own, named "test", that devenv did not make.
"""

from __future__ import annotations

import os
import uuid
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
from devenv.backends.drivers import libvirtpool, libvirturi
from devenv.backends.drivers.libvirtdrv import DISK_VOLUME, LibvirtDriver, own_disk_volume, owner_of, state_from_libvirt
from devenv.backends.drivers.libvirtxml import Owner, domain_name, domain_xml, metadata_xml, parse_metadata
from devenv.backends.drivers.qemuargs import VmSpec
from devenv.errors import BackendUnavailable, CommandFailed, ConfigError, NotSupported, PermissionProblem, StateError
from tests.steprecorder import StepRecorder

TEST_URI = "test:///default"


def spec(tmp: Path, accel: str = "tcg", **kw: Any) -> VmSpec:
    values: dict[str, Any] = {
        "name": "web",
        "arch": "x86_64",
        "accel": accel,
        "cpus": 2,
        "memory": 1024**3,
        "disk": tmp / "disk.qcow2",
        "cidata": tmp / "cidata.iso",
        "ssh_port": 0,
        "serial_log": tmp / "serial.log",
        "qmp_socket": tmp / "unused.sock",
        "pid_file": tmp / "unused.pid",
        "kernel": tmp / "vmlinuz",
        "initrd": tmp / "initrd.img",
        "cmdline": "root=LABEL=root console=ttyS0",
        "machine": "q35",
        **kw,
    }
    return VmSpec(**values)


@pytest.fixture
def conn() -> Iterator[Any]:
    libvirturi.quiet()
    c = libvirt.open(TEST_URI)
    yield c
    for dom in c.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    c.close()


@pytest.fixture
def inst(tmp_path: Path) -> InstanceRef:
    folder = tmp_path / "instances" / "web"
    folder.mkdir(parents=True)
    cfg = config.Config(name="web", backend="libvirt", libvirt_uri=TEST_URI)
    (folder / paths.INSTANCE_CONFIG).write_text(cfg.to_toml())
    return InstanceRef("web", folder, cfg)


def define(conn: Any, inst: InstanceRef, owner: Owner | None) -> Any:
    """A domain of the instance's name: devenv's (`owner`), or, with owner None, one made by hand."""
    xml = domain_xml(spec(inst.dir), domain_name(inst.name, inst.dir), owner or Owner("x", "x"), "/usr/bin/qemu")
    if owner is None:
        root = ET.fromstring(xml)
        root.remove(root.find("metadata"))  # type: ignore[arg-type]
        xml = ET.tostring(root, encoding="unicode")
    return conn.defineXML(xml)


# -- the XML -----------------------------------------------------------------


def test_domain_xml_is_what_libvirt_keeps(tmp_path: Path, conn: Any) -> None:
    owner = Owner("web", str(tmp_path))
    xml = domain_xml(
        spec(tmp_path, shares=(("m0", "/src", False),), relay_socket=tmp_path / "relay.sock"),
        "devenv-web-1",
        owner,
        "/usr/bin/qemu",
        run_as=(7, 8),
    )
    dom = conn.defineXML(xml)
    kept = ET.fromstring(dom.XMLDesc())
    assert kept.get("type") == "qemu"
    assert kept.findtext("os/kernel") == str(tmp_path / "vmlinuz")
    assert kept.findtext("os/cmdline") == "root=LABEL=root console=ttyS0"
    assert kept.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert kept.findtext("features/tcg/tb-cache") == str(64 * 1024)  # KiB: the instance's tcg_cache
    assert kept.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    disks = [(d.find("source").get("file"), d.find("readonly") is not None) for d in kept.findall("devices/disk")]  # type: ignore[union-attr]
    assert disks == [(str(tmp_path / "disk.qcow2"), False), (str(tmp_path / "cidata.iso"), True)]
    assert kept.find("devices/serial/source").get("path") == str(tmp_path / "serial.log")  # type: ignore[union-attr]
    assert kept.find("devices/interface").get("type") == "user"  # type: ignore[union-attr]
    assert kept.find("devices/interface/alias").get("name") == "ua-devenv-net0"  # type: ignore[union-attr]
    fs = kept.find("devices/filesystem")
    assert fs is not None and fs.get("accessmode") == "squash" and fs.find("readonly") is not None
    assert kept.find("seclabel/label").text == "+7:+8"  # type: ignore[union-attr]
    channel = kept.find("devices/channel")
    assert channel is not None and channel.find("source").get("path") == str(tmp_path / "relay.sock")  # type: ignore[union-attr]
    assert channel.find("target").get("name") == "org.devenv.relay"  # type: ignore[union-attr]
    assert owner_of(dom) == owner


def test_kvm_gets_a_kvm_domain_with_the_host_cpu_and_no_tcg_cache(tmp_path: Path) -> None:
    root = ET.fromstring(domain_xml(spec(tmp_path, "kvm"), "d", Owner("web", "/f"), "/q"))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert root.find("features/tcg") is None


def test_a_pooled_domain_keeps_its_console_on_a_pty(tmp_path: Path) -> None:
    """The system daemon's QEMU runs as another user, who cannot write into the instance folder."""
    root = ET.fromstring(domain_xml(spec(tmp_path), "d", Owner("web", "/f"), "/q", console_file=False))
    serial = root.find("devices/serial")
    assert serial is not None and serial.get("type") == "pty" and serial.find("source") is None


def test_an_image_without_its_own_kernel_boots_from_its_disk(tmp_path: Path) -> None:
    root = ET.fromstring(domain_xml(spec(tmp_path, kernel=None, initrd=None), "d", Owner("web", "/f"), "/q"))
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_a_defined_domain_is_redefined_under_its_uuid(tmp_path: Path, conn: Any) -> None:
    first = conn.defineXML(domain_xml(spec(tmp_path), "devenv-web-2", Owner("web", "/f"), "/q"))
    again = domain_xml(spec(tmp_path, cpus=1), "devenv-web-2", Owner("web", "/f"), "/q", uuid=first.UUIDString())
    assert conn.defineXML(again).UUIDString() == first.UUIDString()
    with pytest.raises(libvirt.libvirtError, match="already exists"):
        conn.defineXML(domain_xml(spec(tmp_path), "devenv-web-2", Owner("web", "/f"), "/q", uuid=str(uuid.uuid4())))


def test_domain_names_differ_per_instance_folder() -> None:
    a, b = domain_name("web", Path("/h1/instances/web")), domain_name("web", Path("/h2/instances/web"))
    assert a.startswith("devenv-web-") and b.startswith("devenv-web-") and a != b


@pytest.mark.parametrize(
    ("text", "owner"),
    [
        (metadata_xml(Owner("web", "/f")), Owner("web", "/f")),
        ("<instance><name>web</name></instance>", None),  # no folder
        ("<other><name>web</name><folder>/f</folder></other>", None),
        ("not xml", None),
    ],
)
def test_parse_metadata(text: str, owner: Owner | None) -> None:
    assert parse_metadata(text) == owner


# -- whose domain it is --------------------------------------------------------


def test_a_domain_without_devenv_metadata_is_not_the_instance_and_is_left_alone(inst: InstanceRef, conn: Any) -> None:
    hand_made = define(conn, inst, None)
    hand_made.create()
    driver = LibvirtDriver()
    assert owner_of(hand_made) is None
    assert driver.state(inst).state == "off"  # never reported as the instance's
    driver.force_off(inst, StepRecorder())
    driver.delete(inst)
    assert hand_made.isActive() and conn.lookupByName(hand_made.name()).UUIDString() == hand_made.UUIDString()
    with pytest.raises(StateError) as e:
        driver._refuse_foreign(inst, hand_made.name(), TEST_URI)
    assert e.value.message == (
        f"a libvirt domain named {hand_made.name()} exists on {TEST_URI} that devenv did not make for `web`;"
        " devenv leaves it alone"
    )


def test_a_domain_of_another_instance_folder_is_not_this_ones(inst: InstanceRef, conn: Any) -> None:
    other = define(conn, inst, Owner("web", "/another/home/instances/web"))
    LibvirtDriver().delete(inst)
    assert conn.lookupByName(other.name()).UUIDString() == other.UUIDString()


def test_state_follows_libvirt_and_delete_undefines(inst: InstanceRef, conn: Any) -> None:
    dom = define(conn, inst, Owner("web", str(inst.dir.absolute())))
    driver = LibvirtDriver()
    assert driver.state(inst).state == "off"
    dom.create()
    assert driver.state(inst).state == "running"
    dom.suspend()
    vm = driver.state(inst)
    assert (vm.state, vm.word) == ("paused", "paused")
    dom.resume()
    driver.force_off(inst, StepRecorder())
    assert not dom.isActive() and driver.state(inst).state == "off"
    driver.delete(inst)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(dom.name())


# -- the instance's disk volume in the pool ------------------------------------


@pytest.fixture
def pool(conn: Any) -> Iterator[Any]:
    """libvirt's in-memory `devenv` pool (test:///default keeps it for the process): emptied after each test."""
    p = libvirtpool.pool(conn)
    yield p
    for name in p.listVolumes():
        p.storageVolLookupByName(name).delete(0)


def test_the_first_launch_makes_the_disk_volume_and_records_it(inst: InstanceRef, pool: Any) -> None:
    path = own_disk_volume(inst.dir, pool, "web-1.qcow2", "/base.qcow2", 2 * 1024**3, TEST_URI)
    assert path == pool.storageVolLookupByName("web-1.qcow2").path()
    assert (inst.dir / DISK_VOLUME).read_text() == "web-1.qcow2\n"
    assert own_disk_volume(inst.dir, pool, "web-1.qcow2", "/base.qcow2", 2 * 1024**3, TEST_URI) == path


def test_a_volume_the_instance_did_not_make_is_refused_and_kept(inst: InstanceRef, pool: Any) -> None:
    # what a delete cut short after its undefine leaves: the old disk under the name the new instance gets
    libvirtpool.overlay(pool, "web-1.qcow2", "/base.qcow2", 1024**3)
    with pytest.raises(StateError) as e:
        own_disk_volume(inst.dir, pool, "web-1.qcow2", "/base.qcow2", 2 * 1024**3, TEST_URI)
    assert "web-1.qcow2" in e.value.message and "did not make" in e.value.message
    assert f"virsh -c {TEST_URI} vol-delete --pool devenv web-1.qcow2" in e.value.hint
    assert pool.listVolumes() == ["web-1.qcow2"] and not (inst.dir / DISK_VOLUME).exists()


def test_an_instance_provisioned_before_the_record_keeps_its_volume(inst: InstanceRef, pool: Any) -> None:
    old = libvirtpool.overlay(pool, "web-1.qcow2", "/base.qcow2", 1024**3)
    (inst.dir / paths.PROVISIONED).touch()
    assert own_disk_volume(inst.dir, pool, "web-1.qcow2", "/base.qcow2", 1024**3, TEST_URI) == old
    assert (inst.dir / DISK_VOLUME).read_text() == "web-1.qcow2\n"


def test_a_delete_cut_short_after_the_undefine_is_finished_by_the_next(
    inst: InstanceRef, conn: Any, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LibvirtDriver, "_pooled", lambda self, inst: True)  # test:///default is not pooled itself
    name = domain_name(inst.name, inst.dir)
    own_disk_volume(inst.dir, pool, f"{name}.qcow2", "/base.qcow2", 1024**3, TEST_URI)
    libvirtpool.overlay(pool, "someone-else.qcow2", "/base.qcow2", 1024**3)
    LibvirtDriver().delete(inst)  # no domain: it was undefined by the delete that did not finish
    assert pool.listVolumes() == ["someone-else.qcow2"]


def test_without_its_record_and_its_domain_a_delete_removes_no_volume(
    inst: InstanceRef, conn: Any, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LibvirtDriver, "_pooled", lambda self, inst: True)
    libvirtpool.overlay(pool, f"{domain_name(inst.name, inst.dir)}.qcow2", "/base.qcow2", 1024**3)
    LibvirtDriver().delete(inst)
    assert pool.listVolumes() == [f"{domain_name(inst.name, inst.dir)}.qcow2"]


# -- URIs and errors ---------------------------------------------------------------


def test_uri_from_config_then_environment_then_system_when_it_lets_us_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.hostos import Probe

    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
    assert libvirturi.choose("test:///default").uri == "test:///default"
    assert libvirturi.choose("").uri == "qemu:///session"
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI")
    monkeypatch.setattr(libvirturi, "system_problem", lambda: None)
    assert libvirturi.choose("") == libvirturi.UriChoice(
        "qemu:///system", "default", "qemu:///system answers for this user"
    )
    problem = Probe(False, "no system libvirtd runs", "sudo systemctl start libvirtd")
    monkeypatch.setattr(libvirturi, "system_problem", lambda: problem)
    assert (
        libvirturi.choose("").why
        == "not qemu:///system: no system libvirtd runs (to use it: sudo systemctl start libvirtd)"
    )


def test_system_problem_names_the_group_when_the_socket_is_not_ours(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sock = tmp_path / "libvirt-sock"
    sock.write_text("")
    sock.chmod(0o000)
    monkeypatch.setattr(libvirturi, "SYSTEM_SOCKETS", (str(sock),))
    if os.access(sock, os.W_OK):
        pytest.skip("root may use any socket")
    problem = libvirturi.system_problem()
    assert problem is not None and "not in the `libvirt` group" in problem.detail
    assert problem.fix.startswith("sudo usermod -aG libvirt $USER")
    monkeypatch.setattr(libvirturi, "SYSTEM_SOCKETS", (str(tmp_path / "none"),))
    assert libvirturi.system_problem().detail == f"no system libvirtd runs (no socket at {tmp_path / 'none'})"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("said", "uri", "cls"),
    [
        (
            "Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory",
            "qemu:///system",
            BackendUnavailable,
        ),
        ("authentication unavailable: no polkit agent available", "qemu:///system", PermissionProblem),
        ("Cannot access storage file '/x' (as uid:64055): Permission denied", "qemu:///session", PermissionProblem),
        ("Storage pool not found: no storage pool with matching name 'devenv'", "qemu+ssh://h/system", CommandFailed),
        ("internal error: something else", "qemu:///session", CommandFailed),
    ],
)
def test_libvirt_errors_become_devenv_errors_naming_uri_and_operation(said: str, uri: str, cls: type) -> None:
    err = libvirturi.translate(libvirt.libvirtError(said), uri, "start the domain d")
    assert type(err) is cls
    assert err.message == f"libvirt ({uri}) could not start the domain d: {said}"
    assert err.hint


def test_connecting_to_a_daemon_that_is_not_there_says_so() -> None:
    with pytest.raises(BackendUnavailable) as e:
        libvirturi.connect("qemu+unix:///system?socket=/nonexistent/sock", "connect")
    assert e.value.message.startswith("libvirt (qemu+unix:///system?socket=/nonexistent/sock) could not connect: ")


def test_a_remote_session_daemon_is_refused_with_the_setting_that_works(
    inst: InstanceRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    other = InstanceRef(inst.name, inst.dir, dataclasses.replace(inst.config, libvirt_uri="qemu+ssh://box/session"))
    with pytest.raises(NotSupported) as e:
        LibvirtDriver().create(other, StepRecorder())
    assert e.value.hint == "use the host's system daemon: qemu+ssh://box/system"
    assert not (inst.dir / paths.DISK).exists()
    xen = InstanceRef(inst.name, inst.dir, dataclasses.replace(inst.config, libvirt_uri="xen://box/"))
    with pytest.raises(NotSupported) as e:
        LibvirtDriver().create(xen, StepRecorder())
    assert '"qemu+ssh://USER@HOST/system"' in e.value.hint


# -- devenv.toml ---------------------------------------------------------------------


def test_libvirt_uri_is_validated_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "devenv.toml"
    f.write_text('name = "a"\nlibvirt_uri = "not a uri"\n')
    with pytest.raises(ConfigError) as e:
        config.load_file(f)
    assert e.value.message == (
        f'{f}:2: field `libvirt_uri` must be a libvirt URI such as "qemu:///session" or'
        " \"qemu+ssh://user@host/system\", not 'not a uri'"
    )
    f.write_text('libvirt_uri = "qemu+ssh://me@box/system"\n')
    cfg = config.load_file(f)
    assert cfg.libvirt_uri == "qemu+ssh://me@box/system"
    assert 'libvirt_uri = "qemu+ssh://me@box/system"' in cfg.to_toml()
    assert "libvirt_uri" not in config.Config().to_toml()


@pytest.mark.parametrize(
    ("state", "reason", "expected", "word", "said"),
    [
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, "off", "", ""),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, "off", "", ""),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, "crashed", "shut off: crashed", "is gone"),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED, "crashed", "shut off: failed", "is gone"),
        (libvirt.VIR_DOMAIN_CRASHED, 0, "halted", "crashed", "guest kernel crashed"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR, "paused", "paused: ioerror", "full disk"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_CRASHED, "halted", "paused: crashed", "kernel crashed"),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, "paused", "paused", "(libvirt: paused)"),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, "paused", "pmsuspended", "suspended itself"),
    ],
)
def test_libvirts_state_and_reason_in_devenvs_words(
    state: int, reason: int, expected: str, word: str, said: str
) -> None:
    """The states test:///default cannot reach (a crash, a pause on an I/O error): each says what happened."""
    details: dict[str, object] = {"domain": "d", "uri": "qemu:///session"}
    got = state_from_libvirt(state, reason, details)
    assert got is not None
    assert (got.state, got.word, got.details) == (expected, word, details)
    assert said in got.reason


@pytest.mark.parametrize("state", [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_SHUTDOWN])
def test_a_domain_that_runs_or_is_shutting_down_is_left_to_the_driver(state: int) -> None:
    assert state_from_libvirt(state, 0, {}) is None
