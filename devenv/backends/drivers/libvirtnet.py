"""The guest on libvirt's NAT network `default`: the network made when absent, the guest's address from its leases.

A session daemon's domain keeps user-mode networking (libvirtxml.py): it runs
as this user, who may not make bridges, and its sshd is forwarded to a
127.0.0.1 port as the QEMU driver's is. A system daemon's domain, on this
host or another, gets an interface on `default`, the network libvirt's own
packages define (virbr0, 192.168.122.0/24, DHCP by dnsmasq, NAT by
iptables), made and started here when the daemon has none, so a host where
virt-manager never ran works too. Its address is the one libvirt's DHCP
server leased to the interface's MAC (the domain's LEASE source, else the
network's lease list), and SSH goes straight to it: on this host directly,
on another through that host (libvirtssh.proxy_command).

The MAC is devenv's, made from the domain's name: the lease is found by it
without reading the domain back, and a redefined domain keeps its address.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

NETWORK = "default"
BRIDGE = "virbr0"
GATEWAY = "192.168.122.1"  # the host, as a guest on `default` sees it
IPV4 = 0  # libvirt's VIR_IP_ADDR_TYPE_IPV4 (kept here: this module's pure half needs no libvirt)


def default_network_xml() -> str:
    """libvirt's standard `default` network (its packages' networks/default.xml)."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = NETWORK
    ET.SubElement(net, "forward", {"mode": "nat"})
    ET.SubElement(net, "bridge", {"name": BRIDGE, "stp": "on", "delay": "0"})
    ip = ET.SubElement(net, "ip", {"address": GATEWAY, "netmask": "255.255.255.0"})
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", {"start": "192.168.122.2", "end": "192.168.122.254"})
    return ET.tostring(net, encoding="unicode")


def mac_for(domain: str) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range, from the domain's name."""
    d = hashlib.sha256(domain.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in d[:3])


def address_from_interfaces(interfaces: Mapping[str, Any], mac: str) -> str | None:
    """The IPv4 address virDomainInterfaceAddresses (source LEASE) gives the interface with `mac`."""
    for iface in interfaces.values():
        if str(iface.get("hwaddr", "")).lower() != mac.lower():
            continue
        for addr in iface.get("addrs") or []:
            if addr.get("type") == IPV4 and addr.get("addr"):
                return str(addr["addr"])
    return None


def address_from_leases(leases: Iterable[Mapping[str, Any]], mac: str) -> str | None:
    """The IPv4 address in virNetworkGetDHCPLeases' list for `mac`, the newest lease when there are several."""
    found = [
        lease
        for lease in leases
        if str(lease.get("mac", "")).lower() == mac.lower() and lease.get("type") == IPV4 and lease.get("ipaddr")
    ]
    if not found:
        return None
    return str(max(found, key=lambda lease: int(lease.get("expirytime") or 0))["ipaddr"])


def ensure_network(conn: Any) -> None:
    """`default` defined (libvirt's standard definition), autostarted and running.

    Raises libvirtError as libvirt says it (libvirturi.translate names the
    package when dnsmasq or iptables is what the daemon's host lacks).
    """
    import libvirt

    try:
        net = conn.networkLookupByName(NETWORK)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
            raise
        net = conn.networkDefineXML(default_network_xml())
        net.setAutostart(1)
    if not net.isActive():
        net.create()


Lease = tuple[str, int]  # (IPv4 address, expiry time): one DHCP lease the network holds for a MAC


def _ipv4_leases(conn: Any, mac: str) -> list[Mapping[str, Any]]:
    """The network's IPv4 leases for `mac` (none when libvirt cannot say)."""
    import libvirt

    try:
        raw = conn.networkLookupByName(NETWORK).DHCPLeases(mac, 0) or []
    except libvirt.libvirtError:
        return []
    return [
        lease
        for lease in raw
        if str(lease.get("mac", "")).lower() == mac.lower() and lease.get("type") == IPV4 and lease.get("ipaddr")
    ]


def _lease_key(lease: Mapping[str, Any]) -> Lease:
    return str(lease["ipaddr"]), int(lease.get("expirytime") or 0)


def leases_now(conn: Any, mac: str) -> frozenset[Lease]:
    """The IPv4 leases the NAT network holds for `mac` now: taken before a boot, none of them is that boot's.

    A MAC comes from the domain's name, and the name from the instance's name and
    folder, so an instance deleted and made again in the same place within the
    lease time (an hour) finds its predecessor's lease under its MAC. That guest
    asks with another client id (a new machine-id) and gets another address, so
    the old lease, read first, sent every login to an address nobody holds.
    """
    return frozenset(_lease_key(lease) for lease in _ipv4_leases(conn, mac))


def guest_address(conn: Any, dom: Any, mac: str, stale: frozenset[Lease] = frozenset()) -> str | None:
    """The guest's leased IPv4 address now; None before its DHCP client asked.

    `stale`: leases held before this boot (leases_now), which are not its own. A
    lease the guest takes again (same address, same client) gets a new expiry
    time, so it is not among them. With stale leases about, only the network's
    lease list (which has the expiry times) is read.
    """
    import libvirt

    if not stale:
        try:
            found = address_from_interfaces(
                dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0), mac
            )
        except libvirt.libvirtError:
            found = None
        if found is not None:
            return found
    return address_from_leases([lease for lease in _ipv4_leases(conn, mac) if _lease_key(lease) not in stale], mac)
