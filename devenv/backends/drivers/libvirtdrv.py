"""The libvirt driver: the instance's VM as a libvirt domain, for developers whose VMs libvirt already runs.

What a VM is made of is the QEMU driver's: the same image record and overlay
disk (QemuDriver.create), the same accelerator and machine rule (qemuaccel),
the same kernel command line and VmSpec (qemuargs), the same first-boot seed
and console readiness (the VM backend). Only how the VM is run differs: a
persistent domain (libvirtxml.py) that libvirt starts, powers down with the
ACPI button and destroys, and whose state and reason are libvirt's word.

A domain is devenv's only when its <metadata> names this instance's name and
folder; any other, whatever its name, is left alone: never reported as the
instance's, stopped or undefined. One whose name devenv needs makes a start
fail, saying so.

Where the domain's files live depends on whose QEMU opens them. The session
daemon's QEMU is this user's: the disk, seed and console stay in the
instance folder, and folders are shared over 9p. The system daemon's QEMU
runs as its own user, who cannot enter a 0700 instance folder: the disk,
seed, kernel and initrd become volumes of its storage pool (libvirtpool.py),
the console stays with libvirt (readiness is asked over SSH) and folders are
shared by reverse sshfs. A daemon on another host (any URI with a host or a
network transport, `qemu+ssh://user@host/system`) is a pooled one whose
files are uploaded over libvirt's own connection; nothing of it is on this
host (no QEMU pid to watch, no console or domain log, no 9p, no relay).

Networking (libvirtnet.py): a session domain has user-mode networking and
its sshd forwarded to a 127.0.0.1 port; a system one, here or remote, is on
libvirt's NAT network `default` and SSH goes to its DHCP-leased address,
through the daemon's host when that is another (libvirtssh.py: never a
prompt, never a host key taken on trust).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt  # here, not lazily: the registry turns its absence into the extra's install command

from devenv import paths
from devenv.backends.drivers import libvirtnet, libvirtpool, libvirtsnap, libvirtssh, libvirturi, qemuhost
from devenv.backends.drivers.libvirtxml import (
    METADATA_KEY,
    METADATA_NS,
    NETDEV,
    Owner,
    domain_name,
    domain_xml,
    parse_metadata,
)
from devenv.backends.drivers.qemu import HOST_ADDRESS, POWER_BUTTON_EVERY, QemuDriver
from devenv.backends.drivers.qemuaccel import accel_choice, machine
from devenv.backends.drivers.qemuargs import VmSpec, kernel_cmdline
from devenv.backends.drivers.qemuproc import ssh_port, ssh_port_for
from devenv.backends.vm.driver import (
    AgentPlan,
    Boot,
    DriverFeatures,
    Endpoint,
    VmState,
    no_snapshot,
    not_made_yet,
    tail,
    with_console,
)
from devenv.errors import CommandFailed, ConfigError, DevenvError, NotSupported, StateError, Timeout

if TYPE_CHECKING:
    from devenv.backends.base import InstanceRef, Snapshot, StepReporter

VM_PID = "libvirt.pid"  # in the instance dir: the pid of the domain's QEMU, which the host agent watches
IN_PLACE_URIS = ("qemu:///session", "test:///default")  # QEMU runs as this user: the files stay where they are
POOLED_URIS = ("qemu:///system",)  # QEMU runs as the daemon's own user: the files go into its pool
DIGESTS = "libvirt.json"  # in the instance dir: the sha256 of the image's files, which name their volumes
DISK_VOLUME = "libvirt.volume"  # in the instance dir: the pool volume this instance made for its disk (pooled only)
ADDRESS = "libvirt.address"  # in the instance dir: the guest's address on the NAT network, from its DHCP lease
ADDRESS_TIMEOUT = {"emulated": 420.0, "default": 180.0}  # s from the domain's start to its lease (the boot budget)


class LibvirtDriver:
    name = "libvirt"
    features = DriverFeatures(mounts=("9p", "sshfs"), accelerators=("kvm", "tcg"), snapshots=True)
    host_address = HOST_ADDRESS  # user-mode networking, as the QEMU driver's

    def __init__(self) -> None:
        libvirturi.quiet()
        self._disk = QemuDriver()  # the image record, the overlay and the accelerator/machine checks
        self._conns: dict[str, Any] = {}

    # -- what the VM backend asks ---------------------------------------------

    def check(self, inst: InstanceRef) -> None:
        self._supported_uri(inst)
        self._disk.check(inst)
        arch = QemuDriver.image_record(inst).get("arch") or "x86_64"
        accel, _ = accel_choice(inst, arch)
        self._domain_type(inst, accel)
        chosen, _ = machine(inst, arch, bool(QemuDriver.image_record(inst).get("kernel")), accel, creating=False)
        if chosen == "microvm":
            raise ConfigError(
                [f'{self._where(inst, "machine")}: field `machine` = "microvm" is not a machine libvirt runs'],
                'remove `machine` from devenv.toml (or use backend = "qemu"), delete the instance and start again',
            )

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        self._supported_uri(inst)  # before any disk is made
        self._disk.create(inst, step)
        if self._pooled(inst):  # its disk is a pool volume, made at the first launch
            (inst.dir / paths.DISK).unlink()

    def delete(self, inst: InstanceRef) -> None:
        """Undefine this instance's domain, and remove its volumes from the pool (the shared base stays).

        In place, its disk and seed are in the instance folder, which goes next. The domain's snapshots
        are inside its disk; libvirt's record of them goes with the domain (it refuses a plain undefine).
        A delete cut short after the undefine is finished by the next one: the volumes this instance
        recorded as made (DISK_VOLUME) go even when its domain is gone.
        """
        dom = self._ours(inst)
        with self._errors(inst, "delete the domain"):
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            if self._pooled(inst) and (dom is not None or (inst.dir / DISK_VOLUME).exists()):
                conn = self._conn(inst, "delete the domain's volumes")
                libvirtpool.remove(libvirtpool.pool(conn), list(_own_volumes(domain_name(inst.name, inst.dir))))

    def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
        uri = self._supported_uri(inst)
        image = QemuDriver.image_record(inst)
        arch = image.get("arch") or "x86_64"
        accel, _ = accel_choice(inst, arch)
        kind = self._domain_type(inst, accel)
        chosen, extra = machine(inst, arch, bool(image.get("kernel")), accel, creating=False)
        name = domain_name(inst.name, inst.dir)
        self._refuse_foreign(inst, name, uri)
        known = self._ours(inst)
        uuid = known.UUIDString() if known is not None else ""
        (inst.dir / paths.RELAY_SOCK).unlink(missing_ok=True)  # a socket of the last boot
        serial = inst.dir / paths.SERIAL_LOG
        if serial.exists():
            os.replace(serial, inst.dir / (paths.SERIAL_LOG + ".1"))
        cmdline = f"{kernel_cmdline(image.get('cmdline', ''), 'ttyS0', aslr=inst.config.aslr, accel=accel)} {extra}"
        remote = self._remote(inst)
        binary = "" if remote else qemuhost.check_qemu(arch)  # a remote daemon picks its own QEMU
        conn = self._conn(inst, "define the domain")
        files = self._files(inst, conn, image, name, step)
        if self._nat(inst):
            step(f"the NAT network `{libvirtnet.NETWORK}` (defined and started when absent)")
            with self._errors(inst, f"start the NAT network `{libvirtnet.NETWORK}`"):
                libvirtnet.ensure_network(conn)
        step(f"start the libvirt domain {name} ({kind}, {uri})")
        shares = () if self._pooled(inst) else qemuhost.shares(inst, binary)  # its QEMU cannot read them
        cmdline = qemuhost.with_boot_mounts(cmdline.strip(), inst, shares, direct_kernel=bool(files.get("kernel")))
        spec = VmSpec(
            name=inst.name,
            arch=arch,
            accel=accel,
            cpus=inst.config.cpus,
            memory=inst.config.memory,
            disk=files["disk"],
            cidata=files["cidata"],
            ssh_port=0,  # forwarded once the domain runs (forward_ssh)
            serial_log=serial.absolute(),
            qmp_socket=inst.dir / paths.QMP_SOCK,  # unused: libvirt owns QEMU's monitor
            pid_file=inst.dir / VM_PID,  # unused: libvirt keeps QEMU's pid file
            kernel=files.get("kernel"),
            initrd=files.get("initrd"),
            cmdline=cmdline.strip(),
            firmware=None if remote else qemuhost.firmware(arch, direct_kernel=bool(image.get("kernel"))),
            shares=shares,
            machine=chosen,
            relay_socket=self._relay(inst),
            tcg_cache_mb=inst.config.tcg_cache // 1024**2,
        )
        # root's session daemon is a privileged one, which runs QEMU as the system's qemu user (who cannot
        # open a 0700 instance folder) unless the domain says otherwise; a user's has no such user to switch to
        run_as = (0, os.getgid()) if os.getuid() == 0 and not self._pooled(inst) else None
        nat = self._nat(inst)
        mac = libvirtnet.mac_for(name) if nat else ""
        xml = domain_xml(
            spec,
            name,
            self._owner(inst),
            binary,
            uuid=uuid,
            run_as=run_as,
            console_file=not self._pooled(inst),
            network=libvirtnet.NETWORK if nat else "",
            mac=mac,
        )
        (inst.dir / ADDRESS).unlink(missing_ok=True)  # the last boot's lease
        stale = libvirtnet.leases_now(conn, mac) if nat else frozenset()
        with self._errors(inst, "define the domain"):
            dom = conn.defineXML(xml)
        try:
            dom.create()
        except libvirt.libvirtError as e:
            err = libvirturi.translate(e, uri, f"start the domain {name}")
            raise self.failure(inst, err.message, err.hint, CommandFailed, exited=True) from None
        self._record_pid(inst, name)
        if nat:
            self._wait_address(inst, dom, step, emulated=kind == "qemu", stale=stale)
            return Boot(emulated=kind == "qemu", watch=self._alive_check(inst))
        try:
            forward_ssh(dom, inst.dir)
        except DevenvError as e:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            raise self.failure(inst, e.message, e.hint, CommandFailed) from None
        return Boot(emulated=kind == "qemu", watch=self._alive_check(inst))

    def attach(self, inst: InstanceRef, step: StepReporter) -> Boot:
        vm = self.state(inst)
        dom = self._ours(inst)
        assert dom is not None, "attach is asked only of a domain that runs"
        if vm.state == "halted":
            raise StateError(
                f"{vm.reason}: libvirt says `{vm.word}`", f"`devenv stop -n {inst.name} && devenv start -n {inst.name}`"
            )
        step(f"the libvirt domain {dom.name()} is already running")
        if vm.state == "paused":
            step(f"resume the domain ({vm.word})")
            with self._errors(inst, "resume the domain"):
                dom.resume()
        self._record_pid(inst, dom.name())
        accel, _ = accel_choice(inst, QemuDriver.image_record(inst).get("arch") or "x86_64")
        if self._nat(inst):
            self._wait_address(inst, dom, step, emulated=accel != "kvm")  # its lease may have changed
        return Boot(emulated=accel != "kvm", watch=self._alive_check(inst))

    def power_down(self, inst: InstanceRef, step: StepReporter, timeout: float) -> bool:
        """Press the ACPI power button every POWER_BUTTON_EVERY s until the domain is off (the QEMU driver's reason)."""
        dom = self._ours(inst)
        if dom is None or not dom.isActive():
            return True
        vm = self.state(inst)
        if vm.state == "halted" or vm.word == "paused: ioerror":
            return False  # the guest cannot act on the button
        if vm.state == "paused":
            step(f"resume the domain ({vm.word}) to shut it down")
            with contextlib.suppress(libvirt.libvirtError):
                dom.resume()
        step(f"ACPI power-down; up to {timeout:.0f} s for the guest to shut down")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            press_again = time.monotonic() + min(POWER_BUTTON_EVERY, max(deadline - time.monotonic(), 0.0))
            while time.monotonic() < press_again:
                if not self._active(dom):
                    return True
                time.sleep(0.2)
            if not self._active(dom):
                return True
            if time.monotonic() >= deadline:
                step.fail()
                return False

    def force_off(self, inst: InstanceRef, step: StepReporter) -> None:
        dom = self._ours(inst)
        if dom is None or not self._active(dom):
            return
        step(f"destroy the libvirt domain {dom.name()}")
        with self._errors(inst, "destroy the domain"):
            dom.destroy()

    def state(self, inst: InstanceRef) -> VmState:
        """libvirt's state and its reason, in the VM backend's words."""
        dom = self._ours(inst)
        if dom is None:
            return VmState("off")
        with self._errors(inst, "read the domain's state"):
            state, reason = dom.state()
        details: dict[str, object] = {"domain": dom.name(), "uri": self._uri(inst).uri}
        known = state_from_libvirt(state, reason, details)
        if known is not None:
            return known
        pid = self._read_pid(inst)
        if pid is not None:
            details["pid"] = pid
        return VmState("running", details=details)  # running, blocked, being shut down

    def endpoint(self, inst: InstanceRef) -> Endpoint | None:
        if self._nat(inst):
            try:
                address = (inst.dir / ADDRESS).read_text().strip()
            except OSError:
                return None
            if not address:
                return None
            proxy = libvirtssh.proxy_command(self._uri(inst).uri) if self._remote(inst) else ()
            return Endpoint(address, 22, proxy=proxy)
        port = ssh_port(inst.dir)
        return None if port is None else Endpoint("127.0.0.1", port)

    def console_log(self, inst: InstanceRef) -> Path | None:
        """None for a pooled domain, whose QEMU cannot write into the instance folder: readiness goes over SSH."""
        return None if self._pooled(inst) else inst.dir / paths.SERIAL_LOG

    def agent_plan(self, inst: InstanceRef) -> AgentPlan:
        pid_file = None if self._remote(inst) else inst.dir / VM_PID  # a remote QEMU is no process of this host
        return AgentPlan(vm_pid_file=pid_file, relay_socket=self._relay(inst))

    def _relay(self, inst: InstanceRef) -> Path | None:
        """The SSH relay's virtio-serial port on a unix socket in the instance folder, as the QEMU driver's.

        The host agent's session goes through it rather than the guest's network (hostagent/relay.py says why).
        """
        relay = (inst.dir / paths.RELAY_SOCK).absolute()
        return relay if paths.socket_path_fits(relay) and not self._pooled(inst) else None

    def log_files(self, inst: InstanceRef) -> list[Path]:
        log = self._domain_log(inst)
        return [log] if log is not None else []

    def failure(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        """The error with the domain's QEMU log (libvirt keeps it) and the console's last lines."""
        parts = [message]
        log = self._domain_log(inst)
        said = tail(log, 8) if log is not None else ""
        if said:
            parts.append(f"libvirt's log of the domain ({log}) ends:\n{said}")
        return cls(with_console(parts, self.console_log(inst)), hint)

    # -- snapshots (libvirtsnap.py; the VM backend asks create and restore only of a domain that is off) ----

    def snapshot_create(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        dom = self._ours(inst)
        if dom is None:
            raise not_made_yet(inst.name, "libvirt domain")
        step(f"take the internal snapshot {name} of the libvirt domain {dom.name()}")
        with self._errors(inst, f"create the snapshot {name} of the domain {dom.name()}"):
            libvirtsnap.create(dom, name)

    def snapshot_list(self, inst: InstanceRef) -> list[Snapshot]:
        dom = self._ours(inst)
        if dom is None:
            return []
        with self._errors(inst, f"list the snapshots of the domain {dom.name()}"):
            return libvirtsnap.listing(dom)

    def snapshot_restore(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        dom = self._ours(inst)
        if dom is None:
            raise no_snapshot(name, inst.name)
        step(f"revert the libvirt domain {dom.name()} to its snapshot {name}")
        with self._errors(inst, f"revert the domain {dom.name()} to the snapshot {name}"):
            libvirtsnap.restore(dom, name, inst.name)

    def snapshot_delete(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        """Also while the domain runs: libvirt deletes an internal snapshot of a running domain through QEMU."""
        dom = self._ours(inst)
        if dom is None:
            raise no_snapshot(name, inst.name)
        step(f"delete the snapshot {name} of the libvirt domain {dom.name()}")
        with self._errors(inst, f"delete the snapshot {name} of the domain {dom.name()}"):
            libvirtsnap.delete(dom, name, inst.name)

    # -- this instance's domain -------------------------------------------------

    def _uri(self, inst: InstanceRef) -> libvirturi.UriChoice:
        return libvirturi.choose(inst.config.libvirt_uri)

    def _supported_uri(self, inst: InstanceRef) -> str:
        choice = self._uri(inst)
        where = libvirturi.locate(choice.uri)
        if choice.uri in IN_PLACE_URIS + POOLED_URIS or (where.remote and where.driver == "qemu"):
            if where.remote and where.path != "/system":
                raise NotSupported(
                    "libvirt",
                    f"the URI {choice.uri} ({choice.why})",
                    f"use the host's system daemon: {choice.uri.replace(where.path, '/system', 1)}",
                    why="a remote session daemon's user-mode network is reachable from that host's loopback only",
                )
            return choice.uri
        raise NotSupported(
            "libvirt",
            f"the URI {choice.uri} ({choice.why})",
            'set libvirt_uri = "qemu:///session", "qemu:///system" or "qemu+ssh://USER@HOST/system" in devenv.toml',
            why="devenv runs QEMU domains on this host's session or system daemon, or on another host's system one",
        )

    def _pooled(self, inst: InstanceRef) -> bool:
        return self._uri(inst).uri in POOLED_URIS or self._remote(inst)

    def _remote(self, inst: InstanceRef) -> bool:
        return libvirturi.locate(self._uri(inst).uri).remote

    def _nat(self, inst: InstanceRef) -> bool:
        """On the NAT network (a system daemon, here or remote); else user-mode (session, test)."""
        return self._uri(inst).uri not in IN_PLACE_URIS

    def _wait_address(
        self,
        inst: InstanceRef,
        dom: Any,
        step: StepReporter,
        *,
        emulated: bool,
        stale: frozenset[libvirtnet.Lease] = frozenset(),
    ) -> str:
        """Poll the DHCP leases until the guest has one (its network comes up early in boot), into ADDRESS.

        `stale`: the leases its MAC had before this boot (libvirtnet.leases_now), never taken for its own.
        """
        step(f"wait for the guest's DHCP lease on the NAT network `{libvirtnet.NETWORK}`")
        conn = self._conn(inst, "read the guest's DHCP lease")
        mac = libvirtnet.mac_for(dom.name())
        budget = ADDRESS_TIMEOUT["emulated" if emulated else "default"]
        deadline = time.monotonic() + budget
        alive = self._alive_check(inst)
        while time.monotonic() < deadline:
            address = libvirtnet.guest_address(conn, dom, mac, stale)
            if address is not None:
                (inst.dir / ADDRESS).write_text(address + "\n")
                return address
            alive()
            time.sleep(1.0)
        step.fail()
        raise self.failure(
            inst,
            f"the guest got no DHCP lease for {mac} on the NAT network `{libvirtnet.NETWORK}` within {budget:.0f} s",
            f"`virsh -c {self._uri(inst).uri} net-dhcp-leases {libvirtnet.NETWORK}` lists the leases;"
            f" `devenv stop --force -n {inst.name} && devenv start -n {inst.name}` boots it again",
        )

    def _files(
        self, inst: InstanceRef, conn: Any, image: dict[str, str], name: str, step: StepReporter
    ) -> dict[str, Path]:
        """The disk, seed, kernel and initrd as this daemon's QEMU opens them: in place, or pool volumes."""
        files = {"disk": (inst.dir / paths.DISK).absolute(), "cidata": (inst.dir / paths.CIDATA).absolute()}
        for key in ("kernel", "initrd"):
            if image.get(key):
                files[key] = Path(image[key])
        if not self._pooled(inst):
            return files
        step(f"put the disk and seed in the libvirt storage pool `{libvirtpool.POOL}`")
        with self._errors(inst, f"put the instance's files in the storage pool `{libvirtpool.POOL}`"):
            pool = libvirtpool.pool(conn)
            digests = self._digests(inst, image)
            disk, seed = _own_volumes(name)
            base = libvirtpool.upload_once(conn, pool, f"base-{digests['base'][:24]}.qcow2", Path(image["base"]))
            pooled = {
                "disk": Path(own_disk_volume(inst.dir, pool, disk, base, inst.config.disk, self._uri(inst).uri)),
                "cidata": Path(libvirtpool.replace(conn, pool, seed, files["cidata"])),
            }
            for key in ("kernel", "initrd"):
                if key in files:
                    vol = f"{key}-{digests[key][:24]}"
                    pooled[key] = Path(libvirtpool.upload_once(conn, pool, vol, files[key]))
        return pooled

    def _digests(self, inst: InstanceRef, image: dict[str, str]) -> dict[str, str]:
        """sha256 of the image's base, kernel and initrd, computed once per instance (DIGESTS)."""
        import json

        record = inst.dir / DIGESTS
        try:
            known = json.loads(record.read_text())
            if isinstance(known, dict):
                return {str(k): str(v) for k, v in known.items()}
        except (OSError, ValueError):
            pass
        digests = {k: libvirtpool.sha256_of(Path(image[k])) for k in ("base", "kernel", "initrd") if image.get(k)}
        record.write_text(json.dumps(digests) + "\n")
        return digests

    def _conn(self, inst: InstanceRef, operation: str) -> Any:
        uri = self._uri(inst).uri
        conn = self._conns.get(uri)
        if conn is None or not conn.isAlive():
            libvirtssh.check_host_key(uri)  # before libvirt's ssh could meet an unknown key
            conn = self._conns[uri] = libvirturi.connect(libvirtssh.connect_uri(uri), operation)
        return conn

    @contextlib.contextmanager
    def _errors(self, inst: InstanceRef, operation: str) -> Any:
        try:
            yield
        except libvirt.libvirtError as e:
            raise libvirturi.translate(e, self._uri(inst).uri, operation) from None

    def _owner(self, inst: InstanceRef) -> Owner:
        return Owner(inst.name, str(inst.dir.absolute()))

    def _lookup(self, inst: InstanceRef, name: str) -> Any:
        conn = self._conn(inst, "look up the domain")
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise libvirturi.translate(e, self._uri(inst).uri, f"look up the domain {name}") from None

    def _ours(self, inst: InstanceRef) -> Any:
        """This instance's domain; None when there is none, or the one of that name is not devenv's for it."""
        dom = self._lookup(inst, domain_name(inst.name, inst.dir))
        return dom if dom is not None and owner_of(dom) == self._owner(inst) else None

    def _refuse_foreign(self, inst: InstanceRef, name: str, uri: str) -> None:
        dom = self._lookup(inst, name)
        if dom is not None and owner_of(dom) != self._owner(inst):
            raise StateError(
                f"a libvirt domain named {name} exists on {uri} that devenv did not make for `{inst.name}`;"
                " devenv leaves it alone",
                f"rename it (`virsh -c {uri} domrename {name} NEW`) or remove it yourself, then start again",
            )

    @staticmethod
    def _active(dom: Any) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError:
            return False

    def _alive_check(self, inst: InstanceRef) -> Any:
        """The domain still runs (asked every 2 s): a boot would otherwise wait out its budget."""
        next_ask = time.monotonic() + 2.0

        def check() -> None:
            nonlocal next_ask
            if time.monotonic() < next_ask:
                return
            next_ask = time.monotonic() + 2.0
            vm = self.state(inst)
            if not vm.up:
                raise self.failure(
                    inst,
                    "the libvirt domain stopped while the guest was booting" + (f" ({vm.reason})" if vm.reason else ""),
                    f"`devenv start -n {inst.name}` boots it again; the log above may say why it stopped",
                    StateError,
                    exited=True,
                )

        return check

    def _domain_type(self, inst: InstanceRef, accel: str) -> str:
        if accel not in ("kvm", "tcg"):
            raise ConfigError(
                [f"{self._where(inst, 'accelerator')}: accelerator {accel!r} is not one libvirt runs on this host"],
                'use "kvm" or "tcg", or "auto"',
            )
        return "kvm" if accel == "kvm" else "qemu"

    @staticmethod
    def _where(inst: InstanceRef, key: str) -> str:
        from devenv import config

        return config.line_of(inst.dir / paths.INSTANCE_CONFIG, key)

    def _record_pid(self, inst: InstanceRef, name: str) -> None:
        """The domain's QEMU pid into VM_PID, by the `-name guest=NAME,` libvirt gives it (none for a remote one)."""
        pid = None if self._remote(inst) else qemu_pid(name)
        if pid is not None:
            (inst.dir / VM_PID).write_text(f"{pid}\n")
        else:
            (inst.dir / VM_PID).unlink(missing_ok=True)

    @staticmethod
    def _read_pid(inst: InstanceRef) -> int | None:
        try:
            return int((inst.dir / VM_PID).read_text().strip())
        except (OSError, ValueError):
            return None

    def _domain_log(self, inst: InstanceRef) -> Path | None:
        """Where a local daemon writes the domain's QEMU output (the system one's is for root to read)."""
        name = domain_name(inst.name, inst.dir)
        uri = self._uri(inst).uri
        if uri not in (libvirturi.SESSION, libvirturi.SYSTEM):
            return None
        if (
            uri == libvirturi.SYSTEM or os.getuid() == 0
        ):  # root's session daemon is a privileged one, which logs where the system one does
            return Path("/var/log/libvirt/qemu") / f"{name}.log"
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return Path(cache) / "libvirt" / "qemu" / "log" / f"{name}.log"


def forward_ssh(dom: Any, inst_dir: Path) -> int:
    """Forward a 127.0.0.1 port to the guest's port 22 on the running domain's user-mode netdev (ssh.port).

    The port is found free, then bound by QEMU: another program may take it in
    between, and then QEMU says so and another one is tried, as the QEMU driver does.
    """
    import libvirt_qemu

    said = ""
    for _ in range(3):
        port = ssh_port_for(inst_dir)
        try:
            said = libvirt_qemu.qemuMonitorCommand(
                dom,
                f"hostfwd_add {NETDEV} tcp:127.0.0.1:{port}-:22",
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            ).strip()
        except libvirt.libvirtError as e:
            said = str(e)
        if not said:
            (inst_dir / paths.SSH_PORT).write_text(f"{port}\n")
            return port
        (inst_dir / paths.SSH_PORT).unlink(missing_ok=True)  # ssh_port_for then picks a new one
    raise CommandFailed(
        f"QEMU could not forward a 127.0.0.1 port to the guest's sshd: {said}",
        "another program may be taking ports as fast as they are freed; start again",
    )


def own_disk_volume(inst_dir: Path, pool: Any, name: str, base: str, capacity: int, uri: str) -> str:
    """The path of the instance's disk volume `name` on `base`, made at its first launch; never one it did not make.

    The volume's name comes from the instance's name and folder, so one of that name that this
    instance did not make was left by an earlier instance there whose delete was cut short. Booted,
    it would be that instance's old disk, whose keys refuse this one's login (start would wait out its
    budget). It is not deleted unasked either: the error names the command. DISK_VOLUME is written
    before the volume is made, so a launch cut short in between finds its record and goes on. An
    instance made before that record existed is provisioned, and keeps its volume.
    """
    record = inst_dir / DISK_VOLUME
    ours = record.exists() or (inst_dir / paths.PROVISIONED).exists()
    if not ours and libvirtpool.exists(pool, name):
        raise StateError(
            f"the storage pool `{libvirtpool.POOL}` on {uri} already holds a volume {name}, which this"
            " instance did not make (an earlier instance of this name and folder left it: its delete did"
            " not finish); devenv does not boot another instance's disk",
            f"if that disk is not wanted, remove it (`virsh -c {uri} vol-delete --pool {libvirtpool.POOL}"
            f" {name}`) and start again",
        )
    record.write_text(name + "\n")
    return libvirtpool.overlay(pool, name, base, capacity)


def _own_volumes(domain: str) -> tuple[str, str]:
    """The pool volumes of one instance's own: its disk and its seed."""
    return f"{domain}.qcow2", f"{domain}-cidata.iso"


def owner_of(dom: Any) -> Owner | None:
    """Whom a domain's devenv metadata names; None for a domain without it (made by someone else)."""
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
    except libvirt.libvirtError:
        return None
    return parse_metadata(text)


def qemu_pid(domain: str) -> int | None:
    """The pid of the QEMU libvirt runs for `domain` on this host (its command line names the domain)."""
    marker = f"guest={domain},".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"-name" in args[:-1] and args[args.index(b"-name") + 1].startswith(marker):
            return int(entry.name)
    return None


__all__ = ["METADATA_KEY", "LibvirtDriver", "owner_of", "qemu_pid", "state_from_libvirt"]


def state_from_libvirt(state: int, reason: int, details: dict[str, object]) -> VmState | None:
    """A domain's state and reason in the VM backend's words; None for a domain that runs (or is shutting down)."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        if reason in (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED):
            word = "shut off: crashed" if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED else "shut off: failed"
            return VmState("crashed", f"the VM process is gone (libvirt: {word})", word, details)
        return VmState("off", details=details)
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return VmState("halted", "the guest kernel crashed (libvirt: crashed)", "crashed", details)
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
            why = "libvirt paused the VM: writing its disk failed on the host (a full disk?); nothing is lost"
            return VmState("paused", why, "paused: ioerror", details)
        if reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED:
            return VmState("halted", "the guest kernel crashed (libvirt: paused, crashed)", "paused: crashed", details)
        return VmState("paused", "the domain is paused (libvirt: paused)", "paused", details)
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return VmState("paused", "the guest suspended itself (libvirt: pmsuspended)", "pmsuspended", details)
    return None
