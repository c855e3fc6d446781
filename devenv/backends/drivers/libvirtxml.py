"""The libvirt domain XML of one instance, from the same VmSpec the QEMU driver builds its command line from.

Pure data in, text out, so every choice is unit-tested and checked by
libvirt's own parser (test:///default) without a daemon. The choices follow
qemuargs.py's, in libvirt's words, and where they differ, why:
- domain type `kvm` under KVM, `qemu` (TCG, its translation cache bounded by
  `<tcg><tb-cache>`) otherwise; CPU `host-passthrough` or `maximum`.
- the seed is a read-only virtio disk, not a cdrom: a cdrom on q35 hangs off
  the SATA controller, whose driver (ahci) the TCG kernel command line keeps
  out of the guest (qemuargs.TCG_MODULE_BLACKLIST), and the QEMU driver
  hands the guest the same virtio disk, so the guest finds it the same way.
- on a session daemon, user-mode networking (libvirt's `<interface type='user'>`,
  QEMU's slirp, as the QEMU driver's), the guest's sshd forwarded to a 127.0.0.1
  port once the domain runs (libvirtdrv.forward_ssh); on a system daemon (here or
  remote) an interface on a libvirt network (`network`: libvirtnet.py's NAT
  `default`) with devenv's own MAC, whose DHCP lease gives the guest's address. Debian 12's libvirt 9.0 has two
  other ways: `<qemu:commandline>` with a -netdev and -device of devenv's
  own, which collided with libvirt's PCI addresses on q35 when tried here
  (QEMU refused to start: "slot 1 function 0 not available for
  pcie-root-port"), and the passt backend's `<portForward>`, which needs the
  passt program that neither libvirt's packages nor a desktop install bring.
- `<metadata>` carries the devenv instance's name and folder: a domain
  without it, or with another folder's, is not devenv's and is never
  stopped, undefined or reported, whatever its name.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from devenv.backends.drivers.qemuargs import VmSpec
from devenv.guestagent.relay import PORT_NAME as RELAY_PORT_NAME

METADATA_NS = "https://devenv.invalid/xmlns/instance/1"
METADATA_KEY = "devenv"  # the element's prefix in libvirt's XML
NET_ALIAS = "ua-devenv-net0"  # the user-mode interface's alias ("ua-": a user alias libvirt keeps)
NETDEV = f"host{NET_ALIAS}"  # the QEMU netdev libvirt makes of it, which SSH's forward is added to


def domain_name(instance: str, inst_dir: Path) -> str:
    """devenv-NAME-HASH: instances of the same name in two DEVENV_HOMEs are two domains of one daemon."""
    digest = hashlib.sha256(str(inst_dir.absolute()).encode()).hexdigest()[:8]
    return f"devenv-{instance}-{digest}"


@dataclass(frozen=True)
class Owner:
    """Whom a domain belongs to, as its <metadata> says."""

    instance: str
    folder: str


def metadata_xml(owner: Owner) -> str:
    """The <metadata> child, as virDomainGetMetadata returns it and virDomainSetMetadata takes it."""
    root = ET.Element("instance")
    ET.SubElement(root, "name").text = owner.instance
    ET.SubElement(root, "folder").text = owner.folder
    return ET.tostring(root, encoding="unicode")


def parse_metadata(text: str) -> Owner | None:
    """The owner in a domain's devenv metadata; None when it is not devenv's element."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    name, folder = root.findtext("name"), root.findtext("folder")
    if root.tag.rpartition("}")[2] != "instance" or not name or not folder:
        return None
    return Owner(name, folder)


def domain_xml(
    spec: VmSpec,
    domain: str,
    owner: Owner,
    emulator: str,
    *,
    uuid: str = "",
    run_as: tuple[int, int] | None = None,
    console_file: bool = True,
    network: str = "",
    mac: str = "",
) -> str:
    """`uuid`: the domain's when it is defined already (a new definition of it must name it).

    `console_file`: the console goes to spec.serial_log; else to a pty only (a QEMU of another user
    cannot write into the instance folder).
    `network`: the libvirt network the interface joins (with `mac`); "" for user-mode networking.
    `emulator`: "" lets the daemon pick its own QEMU for the arch (a remote host's path is not ours to know).
    """
    kvm = spec.accel == "kvm"
    ET.register_namespace(METADATA_KEY, METADATA_NS)
    dom = ET.Element("domain", {"type": "kvm" if kvm else "qemu"})
    ET.SubElement(dom, "name").text = domain
    if uuid:
        ET.SubElement(dom, "uuid").text = uuid
    meta = ET.SubElement(dom, "metadata")
    inst = ET.SubElement(meta, f"{{{METADATA_NS}}}instance")
    ET.SubElement(inst, f"{{{METADATA_NS}}}name").text = owner.instance
    ET.SubElement(inst, f"{{{METADATA_NS}}}folder").text = owner.folder
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(spec.memory // 1024**2)
    ET.SubElement(dom, "vcpu").text = str(spec.cpus)

    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", {"arch": spec.arch, "machine": spec.machine or "q35"}).text = "hvm"
    if spec.firmware is not None:
        ET.SubElement(os_, "loader", {"readonly": "yes", "type": "rom"}).text = str(spec.firmware)
    if spec.kernel is not None:
        ET.SubElement(os_, "kernel").text = str(spec.kernel)
        if spec.initrd is not None:
            ET.SubElement(os_, "initrd").text = str(spec.initrd)
        if spec.cmdline:
            ET.SubElement(os_, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(os_, "boot", {"dev": "hd"})

    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")  # the power button a clean shutdown presses
    if not kvm:
        tcg = ET.SubElement(features, "tcg")
        ET.SubElement(tcg, "tb-cache", {"unit": "MiB"}).text = str(spec.tcg_cache_mb)
    ET.SubElement(dom, "cpu", {"mode": "host-passthrough" if kvm else "maximum", "check": "none"})
    ET.SubElement(dom, "clock", {"offset": "utc"})
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        ET.SubElement(dom, event).text = action

    devices = ET.SubElement(dom, "devices")
    if emulator:
        ET.SubElement(devices, "emulator").text = emulator
    _disk(devices, spec.disk, "vda", "qcow2", writable=True)
    if spec.cidata is not None:
        _disk(devices, spec.cidata, "vdb", "raw", writable=False)
    ET.SubElement(devices, "controller", {"type": "usb", "model": "none"})
    serial = ET.SubElement(devices, "serial", {"type": "file" if console_file else "pty"})
    if console_file:
        ET.SubElement(serial, "source", {"path": str(spec.serial_log), "append": "on"})
    ET.SubElement(serial, "target", {"port": "0"})
    if spec.relay_socket is not None:  # the host agent's SSH session goes through it (hostagent/relay.py)
        channel = ET.SubElement(devices, "channel", {"type": "unix"})
        ET.SubElement(channel, "source", {"mode": "bind", "path": str(spec.relay_socket)})
        ET.SubElement(channel, "target", {"type": "virtio", "name": RELAY_PORT_NAME})
    for tag, path, writable in spec.shares:
        # squash: QEMU's security_model=none, as the QEMU driver's shares
        fs = ET.SubElement(devices, "filesystem", {"type": "mount", "accessmode": "squash"})
        ET.SubElement(fs, "source", {"dir": path})
        ET.SubElement(fs, "target", {"dir": tag})
        if not writable:
            ET.SubElement(fs, "readonly")
    iface = ET.SubElement(devices, "interface", {"type": "network" if network else "user"})
    if network:
        if mac:
            ET.SubElement(iface, "mac", {"address": mac})
        ET.SubElement(iface, "source", {"network": network})
    ET.SubElement(iface, "model", {"type": "virtio"})
    ET.SubElement(iface, "alias", {"name": NET_ALIAS})
    rng = ET.SubElement(devices, "rng", {"model": "virtio"})
    ET.SubElement(rng, "backend", {"model": "random"}).text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", {"model": "virtio", "freePageReporting": "on"})

    if run_as is not None:
        # QEMU as the instance's owner, who can open its 0700 folder, and its files left as they are
        label = ET.SubElement(dom, "seclabel", {"type": "static", "model": "dac", "relabel": "no"})
        ET.SubElement(label, "label").text = f"+{run_as[0]}:+{run_as[1]}"
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def _disk(devices: ET.Element, path: Path, target: str, fmt: str, *, writable: bool) -> None:
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    driver = {"name": "qemu", "type": fmt}
    if writable:
        driver |= {"cache": "writeback", "discard": "unmap"}
    ET.SubElement(disk, "driver", driver)
    ET.SubElement(disk, "source", {"file": str(path)})
    ET.SubElement(disk, "target", {"dev": target, "bus": "virtio"})
    if not writable:
        ET.SubElement(disk, "readonly")
