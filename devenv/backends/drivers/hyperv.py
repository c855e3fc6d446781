"""The Hyper-V driver: the instance's VM on this Windows host's Hyper-V, or on another's over WinRM.

Everything goes through the PowerShell runner (powershell.py), whose
transport is the only difference between local and remote; the scripts and
their readers are in hypervps.py. The VM is generation 2 with Secure Boot
(the Microsoft UEFI CA template, which signs the shim Linux distributions
boot through), its disk a differencing VHDX on the image's base, converted
once from the qcow2 (hypervimage.py), the first-boot seed ISO in its DVD
drive, and one network adapter on the Default Switch (found by its fixed
id: its name is localized) or the switch named in hyperv_switch.

A VM is devenv's only when its Notes name this instance and its folder
(hypervps.owner_note); any other, whatever its name, is left alone. Its id
is kept in hyperv.json and every later script finds it by that id, since
Hyper-V lets two VMs share a name.

The guest's address comes from Get-VMNetworkAdapter (the guest's KVP
daemon reports it; the host's neighbour table is the fallback) once the VM
runs, and is kept in hyperv.address for endpoint(). On a remote host with
the Default Switch the guest is reachable only from that host: SSH goes
through it (`ssh -W`, with the user's own OpenSSH config for that host).
Hyper-V gives no console file here, so readiness is read over SSH.

On a remote host the files live under the host's own virtual disk folder
(Get-VMHost's VirtualHardDiskPath)\\devenv: the base VHDX copied once over
the WinRM session and named by the image's digest (hypervcopy.py), and per
instance its differencing disk and the seed, copied again at every start.

`devenv snapshot` is Hyper-V's checkpoints: Checkpoint-VM of the VM while it
is off, so a checkpoint holds its disk (an AVHDX beside the instance's
disk, removed with the instance's folder) and settings, never memory. A
checkpoint is named by the user but found by its id: Hyper-V lets two share
a name, and devenv refuses such a name rather than pick one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

from devenv import paths
from devenv.backends.base import Snapshot
from devenv.backends.drivers import hypervcopy, hypervimage, hypervps
from devenv.backends.drivers.powershell import PowerShell, PowerShellFailed, for_config
from devenv.backends.drivers.psclixml import PsError
from devenv.backends.vm.driver import AgentPlan, Boot, DriverFeatures, Endpoint, VmState, no_snapshot, not_made_yet
from devenv.errors import DevenvError, NotSupported, StateError, Timeout

if TYPE_CHECKING:
    from collections.abc import Callable

    from devenv.backends.base import InstanceRef, StepReporter

RECORD = "hyperv.json"  # in the instance dir: the VM's id and name, and its files as the Hyper-V host sees them
ADDRESS = "hyperv.address"  # in the instance dir: the guest's address, read once it runs
IMAGE_RECORD = "image.json"  # the image this instance was made from (as the QEMU driver's)
DISK = "disk.vhdx"
VM_FOLDER = "hyperv"  # in the instance dir (local): Hyper-V's configuration files of the VM
ADDRESS_TIMEOUT = 300.0  # s from Start-VM until the guest reports an address: a first boot's DHCP, under Hyper-V
POLL_EVERY = 2.0  # s between two state or address questions (each one runs PowerShell)
PERMISSION_CATEGORIES = ("PermissionDenied", "SecurityError")


class HypervDriver:
    name = "hyperv"
    features = DriverFeatures(mounts=("sshfs",), accelerators=(), snapshots=True)  # checkpoints
    host_address = ""  # the Default Switch's host address changes with every Windows boot

    def __init__(self, shell: Callable[[InstanceRef], PowerShell] | None = None) -> None:
        self._shell_for = shell or (lambda inst: for_config(inst.config))
        self._shells: dict[str, PowerShell] = {}
        self._facts: dict[str, hypervps.HostFacts] = {}

    # -- what the VM backend asks ---------------------------------------------------------

    def check(self, inst: InstanceRef) -> None:
        self._host(inst)

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        from devenv.images import catalog
        from devenv.progress import DownloadProgress

        facts = self._host(inst)  # before anything is converted or made
        step(f"find image {inst.config.image}")
        record = catalog.resolve(inst.config.image, "x86_64", progress=DownloadProgress(f"pulling {inst.config.image}"))
        if record.kernel is not None:
            raise NotSupported(
                "hyperv",
                f"the image {record.name}",
                "use an image that boots through its own bootloader (the cloud images devenv pulls do)",
                why="it boots by QEMU's direct kernel boot; Hyper-V boots the disk's own UEFI bootloader",
            )
        key = hypervimage.image_key(record.digest, record.disk)
        vhdx = hypervimage.vhdx_path(key)
        if not vhdx.is_file():
            step(f"convert {record.name} to a VHDX for Hyper-V (once per image)")
            hypervimage.convert_once(record.disk, key)
        (inst.dir / IMAGE_RECORD).write_text(
            json.dumps({"name": record.name, "arch": record.arch, "base": str(record.disk), "vhdx": str(vhdx)}) + "\n"
        )
        files = self._files(inst, facts, key)
        self._write_record(inst, files)
        ps = self._ps(inst)
        if self._remote(inst) and not hypervcopy.present(ps, files["base"]):
            size = vhdx.stat().st_size / 1024**3
            step(f"copy the base VHDX ({size:.1f} GiB) to {ps.host} over WinRM (once per image)")
            hypervcopy.copy(ps, vhdx, files["base"], _hint_for(None, ps.host))
        step("prepare the base disk (not sparse, read-only)")
        _run(ps, hypervps.prepare_base(files["base"]), "prepare the base VHDX")
        step(f"create a {inst.config.disk // 1024**3} GiB differencing disk on {record.name}")
        _run(ps, hypervps.create_disk(files["base"], files["disk"], inst.config.disk), "New-VHD -Differencing")

    def delete(self, inst: InstanceRef) -> None:
        """Remove this instance's VM (and, on a remote host, its files there); a VM not ours stays."""
        vm = self._ours(inst)
        rec = self._record(inst)
        ps = self._ps(inst)
        folder = rec.get("folder", "") if self._remote(inst) else ""
        if vm is not None or folder:
            _run(ps, hypervps.remove_vm(vm.id if vm else _NO_VM, folder), "Remove-VM")

    def launch(self, inst: InstanceRef, step: StepReporter) -> Boot:
        ps = self._ps(inst)
        rec = self._record(inst)
        if not rec.get("disk"):
            raise StateError(
                f"instance `{inst.name}` has no Hyper-V disk record ({RECORD})",
                f"it was not created completely; `devenv delete -n {inst.name}` and start it again",
            )
        vm = self._ours(inst)
        if vm is None:
            name = hypervps.vm_name(inst.name, inst.dir)
            self._refuse_foreign(inst, name)
            step(f"define the Hyper-V VM {name} (generation 2, Secure Boot with the Microsoft UEFI CA)")
            spec = hypervps.VmSpec(
                name=name,
                notes=hypervps.owner_note(inst.name, inst.dir),
                disk=rec["disk"],
                seed=rec["seed"],
                folder=rec["folder"],
                cpus=inst.config.cpus,
                memory=inst.config.memory,
                switch=inst.config.hyperv_switch,
            )
            made = hypervps.read_vms(_json(ps, hypervps.define_vm(spec), "New-VM"))
            if len(made) != 1:
                raise DevenvError(f"New-VM on {ps.host} answered {len(made)} VMs, not the one it made")
            vm = made[0]
            self._write_record(inst, {**rec, "vm_id": vm.id, "vm_name": vm.name})
        (inst.dir / ADDRESS).unlink(missing_ok=True)
        if self._remote(inst):  # written anew by every start, here
            step(f"copy the first-boot seed to {ps.host}")
            hypervcopy.copy(ps, inst.dir / paths.CIDATA, rec["seed"], _hint_for(None, ps.host))
        step(f"start the Hyper-V VM {vm.name} on {ps.host}")
        _run(ps, hypervps.start_vm(vm.id, rec["seed"]), "Start-VM")
        return self._booting(inst, step)

    def attach(self, inst: InstanceRef, step: StepReporter) -> Boot:
        vm = self.state(inst)
        if vm.state == "halted":
            raise StateError(
                f"{vm.reason}", f"`devenv stop -n {inst.name} && devenv start -n {inst.name}` boots it again"
            )
        rec = self._record(inst)
        if vm.state == "paused":
            step(f"resume the VM ({vm.word})")
            ps = self._ps(inst)
            _run(ps, hypervps.start_vm(rec["vm_id"], rec["seed"]), "Start-VM")
        else:
            step(f"the Hyper-V VM {rec.get('vm_name')} is already running")
        return self._booting(inst, step)

    def power_down(self, inst: InstanceRef, step: StepReporter, timeout: float) -> bool:
        """Stop-VM (the guest's shutdown integration service), then wait up to `timeout` s for Off."""
        vm = self._ours(inst)
        if vm is None or vm.state == "Off":
            return True
        if vm.state in hypervps.HELD or vm.state.endswith("Critical"):
            return False  # a saved or paused guest cannot act on a shutdown request
        ps = self._ps(inst)
        step(f"Stop-VM: the guest shuts down; up to {timeout:.0f} s")
        _run(ps, hypervps.shut_down(vm.id), "Stop-VM")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._ours(inst)
            if now is None or now.state == "Off":
                return True
            time.sleep(POLL_EVERY)
        step.fail()
        return False

    def force_off(self, inst: InstanceRef, step: StepReporter) -> None:
        vm = self._ours(inst)
        if vm is None or vm.state == "Off":
            return
        ps = self._ps(inst)
        step(f"Stop-VM -TurnOff {vm.name}")
        _run(ps, hypervps.turn_off(vm.id), "Stop-VM -TurnOff")

    def state(self, inst: InstanceRef) -> VmState:
        vm = self._ours(inst)
        if vm is None:
            return VmState("off")
        state, reason = hypervps.vm_state(vm.state)
        details: dict[str, object] = {"vm": vm.name, "vm_id": vm.id, "hyperv_host": self._ps(inst).host}
        if vm.status:
            details["hyperv_status"] = vm.status
        return VmState(state, reason, vm.state, details)

    def endpoint(self, inst: InstanceRef) -> Endpoint | None:
        try:
            address = (inst.dir / ADDRESS).read_text().strip()
        except OSError:
            return None
        if not address:
            return None
        cfg = inst.config
        if cfg.hyperv_host and not cfg.hyperv_switch:  # the Default Switch's NAT is reachable from its host only
            from devenv.backends.drivers.powershell import WinRMTarget

            return Endpoint(address, 22, proxy=("ssh", "-W", "%h:%p", WinRMTarget(cfg.hyperv_host).name))
        return Endpoint(address, 22)

    def console_log(self, inst: InstanceRef) -> Path | None:
        return None  # Hyper-V's serial port is a named pipe, not a file: readiness is read over SSH

    def agent_plan(self, inst: InstanceRef) -> AgentPlan:
        return AgentPlan()

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return []

    def failure(
        self, inst: InstanceRef, message: str, hint: str, cls: type[DevenvError] = Timeout, *, exited: bool = False
    ) -> DevenvError:
        """The error with what Hyper-V says of the VM now (its state and status)."""
        try:
            vm = self._ours(inst)
        except DevenvError:
            vm = None
        if vm is not None:
            message += f"\nHyper-V says the VM {vm.name} is {vm.state}" + (f" ({vm.status})" if vm.status else "")
        return cls(message, hint)

    # -- checkpoints as snapshots (hypervps.py); the VM backend asks create and restore only of a VM that is off

    def snapshot_create(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        vm = self._ours(inst)
        if vm is None:
            raise not_made_yet(inst.name, "Hyper-V VM")
        step(f"Checkpoint-VM {vm.name} -SnapshotName {name}")
        _run(self._ps(inst), hypervps.checkpoint(vm.id, name), "Checkpoint-VM")

    def snapshot_list(self, inst: InstanceRef) -> list[Snapshot]:
        vm = self._ours(inst)
        if vm is None:
            return []
        return [Snapshot(c.name, c.created) for c in self._checkpoints(inst, vm)]

    def snapshot_restore(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        vm, cp = self._checkpoint(inst, name)
        step(f"Restore-VMSnapshot {name} of {vm.name}")
        _run(self._ps(inst), hypervps.restore_checkpoint(vm.id, cp.id), "Restore-VMSnapshot")

    def snapshot_delete(self, inst: InstanceRef, name: str, step: StepReporter) -> None:
        """Also while the VM runs: Hyper-V merges the checkpoint's differencing disk into the next one live."""
        vm, cp = self._checkpoint(inst, name)
        step(f"Remove-VMSnapshot {name} of {vm.name} (Hyper-V merges its disk)")
        _run(self._ps(inst), hypervps.remove_checkpoint(vm.id, cp.id), "Remove-VMSnapshot")

    def _checkpoints(self, inst: InstanceRef, vm: hypervps.VmInfo) -> list[hypervps.CheckpointInfo]:
        return hypervps.read_checkpoints(_json(self._ps(inst), hypervps.checkpoints(vm.id), "Get-VMSnapshot"))

    def _checkpoint(self, inst: InstanceRef, name: str) -> tuple[hypervps.VmInfo, hypervps.CheckpointInfo]:
        """The one checkpoint of this name: Hyper-V lets two share one (made outside devenv); devenv never guesses."""
        vm = self._ours(inst)
        if vm is None:
            raise no_snapshot(name, inst.name)
        named = [c for c in self._checkpoints(inst, vm) if c.name == name]
        if not named:
            raise no_snapshot(name, inst.name)
        if len(named) > 1:
            raise StateError(
                f"the Hyper-V VM {vm.name} has {len(named)} checkpoints named `{name}`; devenv does not choose"
                " between them",
                f"rename all but one (Hyper-V Manager, or `Hyper-V\\Rename-VMSnapshot -VMName {vm.name} -Name"
                f" {name} -NewName OTHER` for each extra one), then try again",
            )
        return vm, named[0]

    # -- this instance's VM --------------------------------------------------------------------

    def _ps(self, inst: InstanceRef) -> PowerShell:
        key = inst.config.hyperv_host
        if key not in self._shells:
            self._shells[key] = self._shell_for(inst)
        return self._shells[key]

    @staticmethod
    def _remote(inst: InstanceRef) -> bool:
        return bool(inst.config.hyperv_host)

    def _host(self, inst: InstanceRef) -> hypervps.HostFacts:
        """Hyper-V there and usable by this user, and the switch (asked once per driver, i.e. per command)."""
        key = f"{inst.config.hyperv_host}|{inst.config.hyperv_switch}"
        if key not in self._facts:
            ps = self._ps(inst)
            data = _json(ps, hypervps.preflight(inst.config.hyperv_switch), "check Hyper-V")
            self._facts[key] = hypervps.read_preflight(data, ps.host, inst.config.hyperv_switch)
        return self._facts[key]

    def _files(self, inst: InstanceRef, facts: hypervps.HostFacts, digest: str) -> dict[str, str]:
        """The base, disk, seed and VM folder as paths on the Hyper-V host."""
        if not self._remote(inst):
            return {
                "base": str(hypervimage.vhdx_path(digest)),
                "disk": str((inst.dir / DISK).absolute()),
                "seed": str((inst.dir / paths.CIDATA).absolute()),
                "folder": str((inst.dir / VM_FOLDER).absolute()),
            }
        root = PureWindowsPath(facts.vhd_path or r"C:\Users\Public\Documents\Hyper-V\Virtual Hard Disks") / "devenv"
        folder = root / "instances" / hypervps.vm_name(inst.name, inst.dir)
        return {
            "base": str(root / "bases" / hypervimage.vhdx_path(digest).name),
            "disk": str(folder / DISK),
            "seed": str(folder / paths.CIDATA),
            "folder": str(folder),
        }

    @staticmethod
    def _record(inst: InstanceRef) -> dict[str, str]:
        try:
            data = json.loads((inst.dir / RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    @staticmethod
    def _write_record(inst: InstanceRef, rec: dict[str, str]) -> None:
        from devenv.atomicfile import write_atomic

        write_atomic(inst.dir / RECORD, (json.dumps(rec, indent=2) + "\n").encode())

    def _ours(self, inst: InstanceRef) -> hypervps.VmInfo | None:
        """This instance's VM, by the id kept at its making; None when there is none or it is not ours."""
        vm_id = self._record(inst).get("vm_id")
        if not vm_id:
            return None
        ps = self._ps(inst)
        found = hypervps.read_vms(_json(ps, hypervps.vm_by_id(vm_id), "Get-VM"))
        if not found or found[0].notes.strip() != hypervps.owner_note(inst.name, inst.dir):
            return None
        return found[0]

    def _refuse_foreign(self, inst: InstanceRef, name: str) -> None:
        ps = self._ps(inst)
        for vm in hypervps.read_vms(_json(ps, hypervps.vms_named(name), "Get-VM")):
            if vm.notes.strip() != hypervps.owner_note(inst.name, inst.dir):
                raise StateError(
                    f"a Hyper-V VM named {name} exists on {ps.host} that devenv did not make for `{inst.name}`;"
                    " devenv leaves it alone",
                    f"rename it (`Hyper-V\\Rename-VM -Name {name} -NewName OTHER`) or remove it yourself,"
                    " then start again",
                )

    def _booting(self, inst: InstanceRef, step: StepReporter) -> Boot:
        """Wait for the guest's address (the readiness wait needs an endpoint), then the boot's watch."""
        watch = self._alive_check(inst)
        step("wait for the guest's address (the guest's Hyper-V KVP daemon reports it)")
        rec = self._record(inst)
        ps = self._ps(inst)
        deadline = time.monotonic() + ADDRESS_TIMEOUT
        while True:
            address = hypervps.read_address(_json(ps, hypervps.addresses(rec["vm_id"]), "Get-VMNetworkAdapter"))
            if address is not None:
                (inst.dir / ADDRESS).write_text(address + "\n")
                return Boot(emulated=False, watch=watch)
            if time.monotonic() > deadline:
                raise self.failure(
                    inst,
                    f"the guest reported no IPv4 address within {ADDRESS_TIMEOUT:.0f} s",
                    "the guest needs Hyper-V's KVP daemon (Debian: hyperv-daemons) and DHCP on the switch;"
                    " Hyper-V Manager's console shows how far its boot got",
                )
            watch()
            time.sleep(POLL_EVERY)

    def _alive_check(self, inst: InstanceRef) -> Callable[[], None]:
        """The VM still runs (asked every few seconds: each question runs PowerShell)."""
        next_ask = time.monotonic() + POLL_EVERY

        def check() -> None:
            nonlocal next_ask
            if time.monotonic() < next_ask:
                return
            next_ask = time.monotonic() + 3 * POLL_EVERY
            vm = self.state(inst)
            if vm.state in ("off", "crashed", "halted"):
                raise self.failure(
                    inst,
                    "the Hyper-V VM stopped while the guest was booting" + (f" ({vm.reason})" if vm.reason else ""),
                    f"`devenv start -n {inst.name}` boots it again; Hyper-V Manager's console shows why it stopped",
                    StateError,
                    exited=True,
                )

        return check


_NO_VM = "00000000-0000-0000-0000-000000000000"  # no VM has it: remove_vm then removes only the folder


def _run(ps: PowerShell, script: str, label: str) -> None:
    """Run a script; its failure as PowerShellFailed with the fix when Hyper-V refused this user."""
    result = ps.run(script, label)
    if not result.ok:
        raise PowerShellFailed(result, _hint_for(result.error, ps.host))


def _json(ps: PowerShell, script: str, label: str) -> Any:
    result = ps.run(script, label)
    if not result.ok:
        raise PowerShellFailed(result, _hint_for(result.error, ps.host))
    return result.json()


def _hint_for(error: PsError | None, host: str) -> str:
    """A permission failure that got past the preflight (a VM another user made, say) gets the group's fix."""
    if error is not None and error.category in PERMISSION_CATEGORIES:
        return (
            f"add the user to Hyper-V Administrators ({hypervps.HYPERV_ADMINS_SID}) on {host} and log out and in"
            " again, or run devenv as administrator"
        )
    return f"the command ran in PowerShell on {host}; running it there by hand shows all it says"
