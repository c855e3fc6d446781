"""The libvirt driver's NAT network and remote daemons: URI reading, the proxy, host keys, leases and errors.

The pure parts table-driven; the network and interface XML checked by
libvirt's own test:///default driver; the host-key check run against the
real `ssh -G` and `ssh-keygen -F` with a config and known_hosts of the test's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

try:
    import libvirt
except ImportError:
    if os.environ.get("CI"):
        raise  # ci/setup-linux.sh installs the `libvirt` extra
    pytest.skip("libvirt-python is not installed (pip install 'devenv[libvirt]')", allow_module_level=True)

from devenv.backends.drivers import libvirtnet, libvirtssh, libvirturi
from devenv.backends.drivers.libvirtxml import Owner, domain_xml
from devenv.errors import BackendUnavailable, ConfigError, PermissionProblem
from tests.unit.test_libvirt import spec

TEST_URI = "test:///default"


@pytest.mark.parametrize(
    ("uri", "remote", "over_ssh", "destination", "port"),
    [
        ("qemu:///system", False, False, "", None),
        ("qemu:///session", False, False, "", None),
        ("qemu+unix:///system?socket=/x", False, False, "", None),
        ("test:///default", False, False, "", None),
        ("qemu+ssh://me@box/system", True, True, "me@box", None),
        ("qemu+ssh://me@127.0.0.1:2222/system?keyfile=/k", True, True, "me@127.0.0.1", 2222),
        ("qemu+libssh2://box/system", True, True, "box", None),
        ("qemu://box/system", True, False, "box", None),  # libvirt's default transport there: tls
        ("qemu+tcp:///system", True, False, "", None),  # over the network even to this host
    ],
)
def test_locate_reads_a_uri_as_libvirt_does(
    uri: str, remote: bool, over_ssh: bool, destination: str, port: int | None
) -> None:
    where = libvirturi.locate(uri)
    assert (where.remote, where.over_ssh, where.destination, where.port) == (remote, over_ssh, destination, port)


@pytest.mark.parametrize(
    ("uri", "proxy"),
    [
        (
            "qemu+ssh://me@box/system",
            ("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-W", "%h:%p", "me@box"),
        ),
        (
            "qemu+ssh://me@127.0.0.1:2222/system?keyfile=/home/me/k",
            (
                "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-p", "2222", "-i", "/home/me/k", "-W", "%h:%p", "me@127.0.0.1",
            ),
        ),
        # a TLS daemon's port is libvirt's, not sshd's: the host is logged in to on ssh's own
        (
            "qemu+tls://box:16514/system",
            ("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-W", "%h:%p", "box"),
        ),
    ],
)  # fmt: skip
def test_the_guest_is_reached_through_the_daemons_host_without_a_prompt(uri: str, proxy: tuple[str, ...]) -> None:
    assert libvirtssh.proxy_command(uri) == proxy


def test_libvirts_ssh_never_prompts_and_never_skips_the_host_key() -> None:
    assert libvirtssh.connect_uri("qemu+ssh://me@box/system") == "qemu+ssh://me@box/system?no_tty=1"
    assert libvirtssh.connect_uri("qemu+ssh://me@box:22/system?keyfile=/k") == (
        "qemu+ssh://me@box:22/system?keyfile=%2Fk&no_tty=1"
    )
    assert libvirtssh.connect_uri("qemu+ssh://box/system?no_tty=1") == "qemu+ssh://box/system?no_tty=1"
    assert libvirtssh.connect_uri("qemu:///system") == "qemu:///system"
    with pytest.raises(ConfigError) as e:
        libvirtssh.connect_uri("qemu+ssh://box/system?no_verify=1")
    assert e.value.problems == [
        "libvirt_uri qemu+ssh://box/system?no_verify=1: no_verify=1 turns off the SSH host key check,"
        " which devenv never does"
    ]


def test_known_hosts_names_a_host_on_another_port_in_brackets() -> None:
    assert libvirtssh.known_hosts_name("box", 22) == "box"
    assert libvirtssh.known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"
    cfg = libvirtssh.parse_ssh_g(
        "hostname box\nport 22\nuserknownhostsfile ~/.ssh/a ~/.ssh/b\nglobalknownhostsfile /g\n"
    )
    assert libvirtssh.known_hosts_files(cfg) == ["~/.ssh/a", "~/.ssh/b", "/g"]


@pytest.fixture
def ssh_tools(tmp_path: Path) -> tuple[Path, Any]:
    """The real ssh -G and ssh-keygen, with ssh reading the test's own config (never ~/.ssh)."""
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("the OpenSSH client is not installed (ci/setup-linux.sh installs it)")
    known = tmp_path / "known_hosts"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host *\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n")

    def run(argv: list[str]) -> str | None:
        if argv[:2] == ["ssh", "-G"]:
            argv = ["ssh", "-F", str(cfg), *argv[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else None

    return known, run


def test_an_unknown_host_key_is_a_devenv_error_with_the_fix(ssh_tools: tuple[Path, Any], tmp_path: Path) -> None:
    known, run = ssh_tools
    uri = "qemu+ssh://me@127.0.0.1:2222/system"
    with pytest.raises(PermissionProblem) as e:
        libvirtssh.check_host_key(uri, run)
    assert e.value.message == (
        f"libvirt ({uri}): the SSH host key of [127.0.0.1]:2222 is not in your known_hosts,"
        " and devenv never accepts one by itself"
    )
    assert "`ssh -p 2222 me@127.0.0.1`" in e.value.hint and "`ssh-keyscan -p 2222 127.0.0.1" in e.value.hint
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True)
    # pinned for port 22 only: another port of the same host is another host to ssh
    known.write_text("127.0.0.1 " + (tmp_path / "hk.pub").read_text())
    with pytest.raises(PermissionProblem):
        libvirtssh.check_host_key(uri, run)
    known.write_text("[127.0.0.1]:2222 " + (tmp_path / "hk.pub").read_text())
    libvirtssh.check_host_key(uri, run)
    libvirtssh.check_host_key("qemu:///system", run)  # nothing to check on this host


@pytest.mark.parametrize(
    ("said", "cls", "in_hint"),
    [
        ("Cannot recv data: Host key verification failed.: Connection reset by peer", PermissionProblem, "ssh-keyscan"),
        (
            "Cannot recv data: me@box: Permission denied (publickey).: Connection reset by peer",
            PermissionProblem,
            "ssh-copy-id -p 2200 me@box",
        ),
        (
            "Cannot recv data: ssh: connect to host box port 2200: Connection refused: Connection reset by peer",
            BackendUnavailable,
            "is sshd running on box port 2200?",
        ),
        ("Cannot recv data: ssh: Could not resolve hostname box: Name or service not known", BackendUnavailable, "box"),
        (
            "authentication unavailable: no polkit agent available to authenticate action 'org.libvirt.unix.manage'",
            PermissionProblem,
            "the account me@box may not use libvirt there",
        ),
        ("internal error: Unable to find 'dnsmasq' binary in $PATH", BackendUnavailable, "dnsmasq-base"),
        (
            "internal error: Failed to apply firewall rules /usr/sbin/iptables -w --table filter: Cannot find"
            " 'iptables' in path",
            BackendUnavailable,
            "apt-get install iptables",
        ),
    ],
)
def test_ssh_transport_and_network_failures_become_devenv_errors(said: str, cls: type, in_hint: str) -> None:
    uri = "qemu+ssh://me@box:2200/system"
    libvirt.virResetLastError()  # else libvirtError() takes the message of the thread's last libvirt error
    err = libvirturi.translate(libvirt.libvirtError(said), uri, "connect")
    assert type(err) is cls
    assert err.message == f"libvirt ({uri}) could not connect: {said}"
    assert in_hint in err.hint


# -- the network and the guest's lease --------------------------------------------------------


def test_the_default_network_is_libvirts_standard_one(tmp_path: Path) -> None:
    libvirturi.quiet()
    conn = libvirt.open(TEST_URI)
    try:
        conn.networkLookupByName("default").destroy()
        conn.networkLookupByName("default").undefine()
        libvirtnet.ensure_network(conn)  # absent: defined and started
        net = conn.networkLookupByName("default")
        assert net.isActive() and net.autostart()
        assert net.bridgeName() == "virbr0"
        kept = net.XMLDesc()
        assert "<forward mode='nat'" in kept and "<range start='192.168.122.2' end='192.168.122.254'/>" in kept
        net.destroy()
        libvirtnet.ensure_network(conn)  # inactive: started
        assert conn.networkLookupByName("default").isActive()
    finally:
        conn.close()


def test_the_interface_is_on_the_network_with_devenvs_mac(tmp_path: Path) -> None:
    mac = libvirtnet.mac_for("devenv-web-1")
    assert mac == libvirtnet.mac_for("devenv-web-1") != libvirtnet.mac_for("devenv-web-2")
    assert mac.startswith("52:54:00:") and len(mac) == 17
    xml = domain_xml(spec(tmp_path), "devenv-web-1", Owner("web", str(tmp_path)), "", network="default", mac=mac)
    assert "<emulator>" not in xml  # the daemon's own QEMU
    assert f'<interface type="network">\n      <mac address="{mac}" />\n      <source network="default" />' in xml
    libvirturi.quiet()
    conn = libvirt.open(TEST_URI)
    try:
        libvirtnet.ensure_network(conn)
        dom = conn.defineXML(xml.replace("<devices>", "<devices><emulator>/usr/bin/qemu</emulator>", 1))
        try:
            assert f"<mac address='{mac}'/>" in dom.XMLDesc() and "<source network='default'/>" in dom.XMLDesc()
        finally:
            dom.undefine()
    finally:
        conn.close()


def test_the_guests_address_is_its_macs_lease() -> None:
    mac = "52:54:00:aa:bb:cc"
    interfaces = {
        "vnet0": {"hwaddr": "52:54:00:11:11:11", "addrs": [{"type": 0, "addr": "192.168.122.9", "prefix": 24}]},
        "vnet1": {
            "hwaddr": "52:54:00:AA:BB:CC",
            "addrs": [
                {"type": 1, "addr": "fe80::1", "prefix": 64},
                {"type": 0, "addr": "192.168.122.50", "prefix": 24},
            ],
        },
    }
    assert libvirtnet.address_from_interfaces(interfaces, mac) == "192.168.122.50"
    assert libvirtnet.address_from_interfaces({}, mac) is None
    leases = [
        {"mac": mac, "ipaddr": "192.168.122.40", "type": 0, "expirytime": 100},
        {"mac": mac, "ipaddr": "192.168.122.41", "type": 0, "expirytime": 200},
        {"mac": "52:54:00:00:00:01", "ipaddr": "192.168.122.99", "type": 0, "expirytime": 300},
        {"mac": mac, "ipaddr": "fd00::5", "type": 1, "expirytime": 400},
    ]
    assert libvirtnet.address_from_leases(leases, mac) == "192.168.122.41"
    assert libvirtnet.address_from_leases(leases[2:], mac) is None


class _Network:
    def __init__(self, leases: list[dict[str, Any]]) -> None:
        self.leases = leases

    def DHCPLeases(self, mac: str, flags: int) -> list[dict[str, Any]]:  # libvirt's name
        return [lease for lease in self.leases if lease["mac"] == mac]


class _Conn:
    def __init__(self, leases: list[dict[str, Any]]) -> None:
        self.network = _Network(leases)

    def networkLookupByName(self, name: str) -> _Network:  # libvirt's name
        assert name == libvirtnet.NETWORK
        return self.network


class _Dom:
    """What libvirt's lease source shows for the domain: the first lease under its MAC, whoever's it was."""

    def __init__(self, conn: _Conn, mac: str) -> None:
        self.conn, self.mac = conn, mac

    def interfaceAddresses(self, source: int, flags: int) -> dict[str, Any]:  # libvirt's name
        addrs = [{"type": 0, "addr": lease["ipaddr"], "prefix": 24} for lease in self.conn.network.leases]
        return {"vnet0": {"hwaddr": self.mac, "addrs": addrs}} if addrs else {}


def test_a_lease_held_before_the_boot_is_never_taken_for_the_guests() -> None:
    """An instance made again where a deleted one was: same domain name, same MAC, and the old lease still there.

    Before, the old lease (192.168.122.149) was read at once and every login
    went there, while the new guest had asked with a new client id and got .150.
    """
    mac = "52:54:00:10:19:a5"
    old = {"mac": mac, "ipaddr": "192.168.122.149", "type": 0, "expirytime": 1000}
    conn = _Conn([old])
    dom = _Dom(conn, mac)
    stale = libvirtnet.leases_now(conn, mac)
    assert stale == {("192.168.122.149", 1000)}
    assert libvirtnet.guest_address(conn, dom, mac) == "192.168.122.149"  # what was taken before
    assert libvirtnet.guest_address(conn, dom, mac, stale) is None  # the new guest has not asked yet
    conn.network.leases.append({"mac": mac, "ipaddr": "192.168.122.150", "type": 0, "expirytime": 4000})
    assert libvirtnet.guest_address(conn, dom, mac, stale) == "192.168.122.150"
    # the same instance booted again: its guest asks with the same client id, gets the same address, a new expiry
    conn.network.leases[:] = [{**old, "expirytime": 5000}]
    assert libvirtnet.guest_address(conn, dom, mac, stale) == "192.168.122.149"
    assert libvirtnet.leases_now(_Conn([]), mac) == frozenset()


# -- what the driver answers for a NAT and a remote instance (nothing connects) -------------------------


def _instance(tmp_path: Path, uri: str) -> Any:
    from devenv import config, paths
    from devenv.backends.base import InstanceRef

    folder = tmp_path / "instances" / "web"
    folder.mkdir(parents=True)
    cfg = config.Config(name="web", backend="libvirt", libvirt_uri=uri)
    (folder / paths.INSTANCE_CONFIG).write_text(cfg.to_toml())
    return InstanceRef("web", folder, cfg)


@pytest.mark.parametrize(
    ("uri", "proxy", "pid_file"),
    [
        ("qemu:///system", (), True),
        (
            "qemu+ssh://me@box:2222/system",
            ("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-p", "2222", "-W", "%h:%p", "me@box"),
            False,
        ),
    ],
)
def test_a_nat_guest_is_at_its_lease_and_a_remote_one_through_its_host(
    tmp_path: Path, uri: str, proxy: tuple[str, ...], pid_file: bool
) -> None:
    from devenv.backends.drivers.libvirtdrv import ADDRESS, LibvirtDriver
    from devenv.backends.vm.driver import Endpoint

    inst = _instance(tmp_path, uri)
    drv = LibvirtDriver()
    assert drv.endpoint(inst) is None  # no lease yet
    (inst.dir / ADDRESS).write_text("192.168.122.77\n")
    assert drv.endpoint(inst) == Endpoint("192.168.122.77", 22, proxy=proxy)
    plan = drv.agent_plan(inst)
    assert (plan.vm_pid_file is not None) is pid_file and plan.relay_socket is None
    assert drv.console_log(inst) is None  # the system daemon's QEMU cannot write into the instance folder
    if proxy:
        assert drv.log_files(inst) == []  # another host's log is not a file here


def test_a_qcow2_base_keeps_its_virtual_size_in_the_pool(tmp_path: Path) -> None:
    from devenv.backends.drivers.libvirtpool import qcow2_size

    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed (ci/setup-linux.sh installs it)")
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "3G"], check=True)
    assert qcow2_size(disk) == 3 * 1024**3 != disk.stat().st_size
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError):
        qcow2_size(raw)
