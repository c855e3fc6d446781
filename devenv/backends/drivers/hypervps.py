"""The PowerShell the Hyper-V driver sends, and the readers of what comes back: pure text in, values out.

Every cmdlet is written Hyper-V\\Name: VMware's PowerCLI also has a Get-VM,
and whichever module loaded last would answer otherwise (Checkmk PR #707).
Every answer is built here field by field and passed through ConvertTo-Json
with enums as strings ("$($vm.State)", as Vagrant's get_vm_status.ps1 does):
ConvertTo-Json writes an enum as its number, whose meaning varies between
Windows versions above 32781 (eryph's VirtualMachineState), and PowerShell
5.1 has no -EnumsAsStrings. Lists go through -InputObject @(...) so that one
VM is still a list; the readers accept a bare object all the same.

Strings from devenv (names, paths, notes) enter scripts only as
single-quoted literals (powershell.quote), which PowerShell never expands.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.backends.drivers.powershell import quote
from devenv.errors import BackendUnavailable, DevenvError, PermissionProblem, UsageError

DEFAULT_SWITCH_ID = "c08cb7b8-9b3c-408e-8e30-5e16a3aeb444"  # fixed on every Windows; its name is localized
HYPERV_ADMINS_SID = "S-1-5-32-578"  # the Hyper-V Administrators group, whose name is localized too
SECURE_BOOT_TEMPLATE = "MicrosoftUEFICertificateAuthority"  # signs shim, which Linux distributions boot through
NOTE_PREFIX = "devenv instance "


def vm_name(instance: str, inst_dir: Path) -> str:
    """devenv-NAME-HASH: the same instance name under two DEVENV_HOMEs is two VMs."""
    digest = hashlib.sha256(str(inst_dir.absolute()).encode()).hexdigest()[:8]
    return f"devenv-{instance}-{digest}"


def owner_note(instance: str, inst_dir: Path) -> str:
    """The VM's Notes: which instance (and folder) it belongs to. A VM whose Notes differ is not devenv's."""
    return f"{NOTE_PREFIX}{instance} ({inst_dir.absolute()}); deleted with it by `devenv delete`"


def _json(expr: str) -> str:
    return f"ConvertTo-Json -Compress -Depth 4 -InputObject ({expr})"


def switch_selector(switch: str) -> str:
    """Get-VMSwitch's argument: the Default Switch by its fixed id (its name differs per language)."""
    return f"-Id {quote(DEFAULT_SWITCH_ID)}" if not switch else f"-Name {quote(switch)}"


# -- the checks before anything is made -------------------------------------------------


def preflight(switch: str) -> str:
    """Who runs this, whether Hyper-V is there and usable for them, and the switch the VM would use.

    Membership of Hyper-V Administrators is read twice: in this logon's token
    (what Hyper-V checks) and in the group's member list (who was added). A
    user in the list but not in the token was added after logging in.
    """
    return f"""\
$id = [Security.Principal.WindowsIdentity]::GetCurrent()
$principal = New-Object Security.Principal.WindowsPrincipal($id)
$admin = $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
$inToken = $principal.IsInRole((New-Object Security.Principal.SecurityIdentifier({quote(HYPERV_ADMINS_SID)})))
$listed = $false
try {{
  $members = Get-LocalGroupMember -SID {quote(HYPERV_ADMINS_SID)} -ErrorAction Stop
  $listed = [bool]($members | Where-Object {{ $_.SID -eq $id.User }})
}} catch {{ }}
$module = [bool](Get-Module -ListAvailable -Name Hyper-V)
$vmms = "$((Get-Service -Name vmms -ErrorAction SilentlyContinue).Status)"
$switch = $null
$vhdPath = ''
if ($module -and $vmms -eq 'Running' -and ($admin -or $inToken)) {{
  $s = @(Hyper-V\\Get-VMSwitch {switch_selector(switch)} -ErrorAction SilentlyContinue)[0]
  if ($s) {{ $switch = [ordered]@{{ name = $s.Name; id = "$($s.Id)"; type = "$($s.SwitchType)" }} }}
  $vhdPath = (Hyper-V\\Get-VMHost).VirtualHardDiskPath
}}
{
        _json(
            "[ordered]@{ user = $id.Name; admin = $admin; in_group = $inToken; listed = $listed; module = $module; "
            "vmms = $vmms; switch = $switch; vhd_path = $vhdPath; computer = $env:COMPUTERNAME }"
        )
    }
"""


@dataclass(frozen=True)
class HostFacts:
    user: str
    computer: str
    switch: str  # the switch's name on this host ("Default Switch", "Standardswitch", ...)
    vhd_path: str  # the host's folder for virtual disks (Get-VMHost), where remote files go


def read_preflight(data: Any, host: str, switch: str) -> HostFacts:
    """What preflight found, or the first problem in the order a user fixes them, each with its fix."""
    if not isinstance(data, dict):
        raise DevenvError(f"the Hyper-V check on {host} answered {data!r}, not an object")
    user = str(data.get("user") or "this user")
    if not data.get("module"):
        raise BackendUnavailable(
            f"Hyper-V is not enabled on {host} (its PowerShell module is missing)",
            "as administrator: `Enable-WindowsOptionalFeature -Online -FeatureName Microsoft-Hyper-V -All`, then"
            " restart Windows (Hyper-V needs Windows Pro, Enterprise or Education)",
        )
    vmms = str(data.get("vmms") or "")
    if vmms != "Running":
        state = vmms.lower() if vmms else "not installed"
        raise BackendUnavailable(
            f"the Hyper-V service (vmms) on {host} is {state}",
            "as administrator: `Start-Service vmms`; if it will not start, turn virtualization (VT-x/AMD-V) on in"
            " the firmware settings and restart",
        )
    if not data.get("admin") and not data.get("in_group"):
        if data.get("listed"):
            raise PermissionProblem(
                f"{user} was added to Hyper-V Administrators on {host}, but this logon session began before that",
                "log out of Windows and in again (or restart it): group membership is read at logon",
            )
        raise PermissionProblem(
            f"{user} may not manage Hyper-V on {host}: not in Hyper-V Administrators ({HYPERV_ADMINS_SID})"
            " and not running as administrator",
            f"as administrator: `Add-LocalGroupMember -SID {HYPERV_ADMINS_SID} -Member '{user}'`, then log out"
            " and in again",
        )
    found = data.get("switch")
    if not isinstance(found, dict) or not found.get("name"):
        if not switch:
            raise BackendUnavailable(
                f"{host} has no Default Switch (the Hyper-V switch with id {DEFAULT_SWITCH_ID})",
                "Windows 10 1709 and later make it with Hyper-V, Windows Server does not: create a switch"
                " (`New-VMSwitch -Name devenv -SwitchType Internal` plus NAT, or an External one) and set"
                " hyperv_switch in devenv.toml",
            )
        raise UsageError(
            f"{host} has no Hyper-V switch named {switch!r} (hyperv_switch in devenv.toml)",
            "`Hyper-V\\Get-VMSwitch` lists the switches there; leave hyperv_switch out for the Default Switch",
        )
    return HostFacts(user, str(data.get("computer") or host), str(found["name"]), str(data.get("vhd_path") or ""))


# -- the VM ------------------------------------------------------------------------------

_VM_FIELDS = (
    '[ordered]@{ name = $vm.Name; id = "$($vm.Id)"; state = "$($vm.State)"; status = "$($vm.Status)";'
    " notes = $vm.Notes; uptime = [int]$vm.Uptime.TotalSeconds }"
)


def _find(vm_id: str) -> str:
    """$vm: the VM with this id, or $null. Get-VM -Id would fail for a missing one; a missing one is an answer."""
    return f"$vm = @(Hyper-V\\Get-VM | Where-Object {{ $_.Id -eq [guid]{quote(vm_id)} }})[0]\n"


def vms_named(name: str) -> str:
    """Every VM of this name (Hyper-V allows several): the caller keeps the one whose Notes are its own."""
    return (
        f"$found = @(Hyper-V\\Get-VM | Where-Object {{ $_.Name -eq {quote(name)} }} | ForEach-Object {{\n"
        f"  $vm = $_\n  {_VM_FIELDS}\n}})\n" + _json("@($found)") + "\n"
    )


def vm_by_id(vm_id: str) -> str:
    return _find(vm_id) + f"if ($vm) {{ {_json(_VM_FIELDS)} }}\n"


@dataclass(frozen=True)
class VmInfo:
    name: str
    id: str
    state: str  # Hyper-V's own word: Running, Off, Saved, RunningCritical...
    status: str = ""
    notes: str = ""
    uptime: int = 0


def read_vms(data: Any) -> list[VmInfo]:
    """One VM (ConvertTo-Json unwraps a list of one), a list of them, or none (no output)."""
    items = [] if data is None else data if isinstance(data, list) else [data]
    vms = []
    for item in items:
        if not isinstance(item, dict):
            raise DevenvError(f"Hyper-V answered {item!r} where a VM was expected")
        state = item.get("state")
        if not isinstance(state, str) or state.isdigit():
            raise DevenvError(f"Hyper-V gave the VM's state as {state!r}, not by name")
        vms.append(
            VmInfo(
                str(item.get("name") or ""),
                str(item.get("id") or ""),
                state,
                str(item.get("status") or ""),
                str(item.get("notes") or ""),
                int(item.get("uptime") or 0),
            )
        )
    return vms


# Hyper-V's VMState names (Microsoft.HyperV.PowerShell.VMState), by what a start or stop can do with them
RUNNING = {"Running", "Starting", "Stopping", "Saving", "Pausing", "Resuming", "Reset", "ComponentServicing"}
RUNNING |= {"ForceShutdown", "ForceReboot", "FastSaving"}
HELD = {"Paused": "the VM is paused in Hyper-V", "Saved": "Hyper-V saved the VM (its memory is on disk)"}
HELD |= {"FastSaved": "Hyper-V saved the VM (its memory is on disk)", "Hibernated": "the VM is hibernated"}


def vm_state(word: str) -> tuple[str, str]:
    """Hyper-V's state name as one of the VM backend's states, with the reason a user reads."""
    if word == "Off":
        return "off", ""
    if word in RUNNING:
        return "running", ""
    if word in HELD:
        return "paused", HELD[word]
    if word == "OffCritical":
        return "crashed", "Hyper-V cannot reach the VM's files (OffCritical): is the disk holding them there and full?"
    if word.endswith("Critical"):
        return "halted", f"Hyper-V lost access to the VM's storage ({word}): is the disk holding it full or gone?"
    return "halted", f"Hyper-V reports the state {word!r}, which devenv does not know"


# -- making and changing it --------------------------------------------------------------


def prepare_base(base: str) -> str:
    """The base VHDX as every differencing disk needs it: not sparse, read-only.

    qemu-img writes sparse files on Windows, and Hyper-V refuses sparse
    virtual disks ("must not be sparse", as Multipass found): fsutil clears
    the flag once, before any disk is made on it.
    """
    return f"""\
$f = Get-Item -LiteralPath {quote(base)}
if ($f.Attributes -band [IO.FileAttributes]::SparseFile) {{
  fsutil sparse setflag $f.FullName 0 | Out-Null
  if ($LASTEXITCODE -ne 0) {{ throw "fsutil could not clear the sparse flag of $($f.FullName)" }}
}}
$f.IsReadOnly = $true
"""


def create_disk(base: str, disk: str, size: int) -> str:
    """The instance's differencing disk on the base, grown to `size` bytes (never shrunk)."""
    return f"""\
New-Item -ItemType Directory -Force -Path (Split-Path -Parent -Path {quote(disk)}) | Out-Null
if (-not (Test-Path -LiteralPath {quote(disk)})) {{
  Hyper-V\\New-VHD -Path {quote(disk)} -ParentPath {quote(base)} -Differencing | Out-Null
}}
if ((Hyper-V\\Get-VHD -Path {quote(disk)}).Size -lt {size}) {{
  Hyper-V\\Resize-VHD -Path {quote(disk)} -SizeBytes {size}
}}
"""


@dataclass(frozen=True)
class VmSpec:
    name: str
    notes: str
    disk: str  # on the Hyper-V host
    seed: str  # the cidata ISO, on the Hyper-V host
    folder: str  # where Hyper-V keeps the VM's configuration
    cpus: int
    memory: int  # bytes
    switch: str  # "" for the Default Switch


def define_vm(spec: VmSpec) -> str:
    """A generation 2 VM booting the disk under Secure Boot (Microsoft's UEFI CA, which signs shim).

    Static memory, as the other drivers give; no automatic checkpoints (each
    would fork the disk); shut down, not saved, when Windows shuts down, so a
    next start boots and the guest's clock is right.
    """
    return f"""\
$switch = Hyper-V\\Get-VMSwitch {switch_selector(spec.switch)}
$new = @{{
  Name = {quote(spec.name)}
  Generation = 2
  MemoryStartupBytes = {spec.memory}
  VHDPath = {quote(spec.disk)}
  BootDevice = 'VHD'
  SwitchName = $switch.Name
  Path = {quote(spec.folder)}
}}
$vm = Hyper-V\\New-VM @new
$settings = @{{
  ProcessorCount = {spec.cpus}
  StaticMemory = $true
  AutomaticCheckpointsEnabled = $false
  AutomaticStopAction = 'ShutDown'
  Notes = {quote(spec.notes)}
}}
Hyper-V\\Set-VM -VM $vm @settings
Hyper-V\\Set-VMFirmware -VM $vm -EnableSecureBoot On -SecureBootTemplate {SECURE_BOOT_TEMPLATE}
Hyper-V\\Add-VMDvdDrive -VM $vm -Path {quote(spec.seed)}
{_json(_VM_FIELDS)}
"""


def start_vm(vm_id: str, seed: str) -> str:
    """The seed ISO in the DVD drive (a start writes it anew), then Start-VM, which also resumes a saved VM."""
    return (
        _find(vm_id)
        + f"""\
if (-not $vm) {{ throw "the VM {vm_id} is gone" }}
$dvd = @(Hyper-V\\Get-VMDvdDrive -VM $vm)[0]
if ($dvd) {{ Hyper-V\\Set-VMDvdDrive -VMDvdDrive $dvd -Path {quote(seed)} }}
else {{ Hyper-V\\Add-VMDvdDrive -VM $vm -Path {quote(seed)} }}
Hyper-V\\Start-VM -VM $vm
"""
    )


def shut_down(vm_id: str) -> str:
    """Stop-VM asks the guest to shut down (the Shutdown integration service); as a job, so we wait ourselves."""
    return _find(vm_id) + "if ($vm) { Hyper-V\\Stop-VM -VM $vm -Force -AsJob | Out-Null }\n"


def turn_off(vm_id: str) -> str:
    """Stop-VM -TurnOff: power pulled, whatever the guest does."""
    return _find(vm_id) + "if ($vm -and $vm.State -ne 'Off') { Hyper-V\\Stop-VM -VM $vm -TurnOff -Force }\n"


def remove_vm(vm_id: str, folder: str = "") -> str:
    """Turn the VM off and remove it (Remove-VM leaves its disks); `folder`: remove the host's files too."""
    script = (
        _find(vm_id) + "if ($vm) {\n"
        "  if ($vm.State -ne 'Off') { Hyper-V\\Stop-VM -VM $vm -TurnOff -Force }\n"
        "  Hyper-V\\Remove-VM -VM $vm -Force\n}\n"
    )
    if folder:
        script += f"if (Test-Path -LiteralPath {quote(folder)}) {{\n"
        script += f"  Remove-Item -LiteralPath {quote(folder)} -Recurse -Force\n}}\n"
    return script


def addresses(vm_id: str) -> str:
    """The VM's network adapters: what the guest reports (KVP) and what the host's neighbour table knows.

    IPAddresses is filled by the guest's KVP daemon (hv_kvp_daemon: Debian's
    hyperv-daemons package); a guest without it still answers ARP, so the
    host's neighbour entries for the adapter's MAC are the fallback.
    """
    return (
        _find(vm_id)
        + """\
if (-not $vm) { throw "the VM is gone" }
$neighbours = @(Get-NetNeighbor -AddressFamily IPv4 -ErrorAction SilentlyContinue)
$found = @(Hyper-V\\Get-VMNetworkAdapter -VM $vm | ForEach-Object {
  $mac = $_.MacAddress
  [ordered]@{
    mac = $mac
    switch = $_.SwitchName
    addresses = @($_.IPAddresses)
    neighbours = @($neighbours | Where-Object { ($_.LinkLayerAddress -replace '-', '') -eq $mac } |
      ForEach-Object { $_.IPAddress })
  }
})
"""
        + _json("@($found)")
        + "\n"
    )


def read_address(data: Any) -> str | None:
    """The guest's IPv4 address: the first one the guest reported, else one the host's neighbours name."""
    items = [] if data is None else data if isinstance(data, list) else [data]
    for key in ("addresses", "neighbours"):
        for item in items:
            if not isinstance(item, dict):
                continue
            values = item.get(key) or []
            for value in values if isinstance(values, list) else [values]:
                try:
                    ip = ipaddress.ip_address(str(value))
                except ValueError:
                    continue
                if ip.version == 4 and not ip.is_link_local and not ip.is_loopback and not ip.is_unspecified:
                    return str(ip)
    return None


# -- checkpoints (`devenv snapshot`) ----------------------------------------------------------

_CHECKPOINT_FIELDS = (
    '[ordered]@{ name = $_.Name; id = "$($_.Id)"; type = "$($_.SnapshotType)";'
    " created = ([DateTimeOffset]$_.CreationTime).ToUnixTimeMilliseconds() }"
)


def checkpoints(vm_id: str) -> str:
    """The VM's checkpoints (Get-VMSnapshot), each with its id: two may share a name, an id is exact.

    The creation time leaves as milliseconds since the epoch: ConvertTo-Json
    writes a DateTime as "\\/Date(ms)\\/" in PowerShell 5.1 and as ISO text in 7.
    """
    return (
        _find(vm_id)
        + 'if (-not $vm) { throw "the VM is gone" }\n'
        + f"$found = @(Hyper-V\\Get-VMSnapshot -VM $vm | ForEach-Object {{ {_CHECKPOINT_FIELDS} }})\n"
        + _json("@($found)")
        + "\n"
    )


def checkpoint(vm_id: str, name: str) -> str:
    """Checkpoint-VM of the VM (off: the backend asks only then), so the checkpoint is its disk and settings.

    A VM whose checkpoints were turned off (CheckpointType Disabled, by a user
    or a policy) gets Standard for this one checkpoint and Disabled back after,
    as Vagrant's create_snapshot.ps1 does.
    """
    return (
        _find(vm_id)
        + f"""\
if (-not $vm) {{ throw "the VM is gone" }}
$kind = "$($vm.CheckpointType)"
if ($kind -eq 'Disabled') {{ Hyper-V\\Set-VM -VM $vm -CheckpointType Standard }}
try {{ Hyper-V\\Checkpoint-VM -VM $vm -SnapshotName {quote(name)} }}
finally {{ if ($kind -eq 'Disabled') {{ Hyper-V\\Set-VM -VM $vm -CheckpointType Disabled }} }}
"""
    )


def _find_checkpoint(vm_id: str, checkpoint_id: str) -> str:
    return (
        _find(vm_id)
        + 'if (-not $vm) { throw "the VM is gone" }\n'
        + f"$cp = @(Hyper-V\\Get-VMSnapshot -VM $vm | Where-Object {{ $_.Id -eq [guid]{quote(checkpoint_id)} }})[0]\n"
        + 'if (-not $cp) { throw "the checkpoint is gone" }\n'
    )


def restore_checkpoint(vm_id: str, checkpoint_id: str) -> str:
    """Restore-VMSnapshot: the VM's disk (and its settings) as the checkpoint holds them; later writes are gone."""
    return _find_checkpoint(vm_id, checkpoint_id) + "Hyper-V\\Restore-VMSnapshot -VMSnapshot $cp -Confirm:$false\n"


def remove_checkpoint(vm_id: str, checkpoint_id: str) -> str:
    """Remove-VMSnapshot of this one checkpoint (its children stay): Hyper-V merges its differencing disk."""
    return _find_checkpoint(vm_id, checkpoint_id) + "Hyper-V\\Remove-VMSnapshot -VMSnapshot $cp -Confirm:$false\n"


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    id: str
    created: float  # seconds since the epoch
    type: str = ""  # Standard, Recovery (a production checkpoint), Planned...


def read_checkpoints(data: Any) -> list[CheckpointInfo]:
    """checkpoints()' answer, oldest first: one (ConvertTo-Json unwraps a list of one), several, or none."""
    items = [] if data is None else data if isinstance(data, list) else [data]
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item.get("id"):
            raise DevenvError(f"Hyper-V answered {item!r} where a checkpoint was expected")
        created = item.get("created")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise DevenvError(f"Hyper-V gave the checkpoint {item['name']!r} the creation time {created!r}")
        found.append(CheckpointInfo(item["name"], str(item["id"]), created / 1000, str(item.get("type") or "")))
    return sorted(found, key=lambda c: (c.created, c.name))


# -- files on a remote host -------------------------------------------------------------------


def exists(path: str) -> str:
    return _json(f"Test-Path -LiteralPath {quote(path)}") + "\n"


def receive_file(dest: str, sha256: str) -> str:
    """Write stdin's base64 lines to `dest`: aside first, checked against its sha256, then renamed into place.

    A copy cut short or damaged is never taken for the file: the name
    appears only once the whole of it arrived intact.
    """
    part = dest + ".part"
    return f"""\
New-Item -ItemType Directory -Force -Path (Split-Path -Parent -Path {quote(dest)}) | Out-Null
$out = [IO.File]::Open({quote(part)}, [IO.FileMode]::Create, [IO.FileAccess]::Write)
try {{
  while ($null -ne ($line = [Console]::In.ReadLine())) {{
    if ($line) {{ $bytes = [Convert]::FromBase64String($line); $out.Write($bytes, 0, $bytes.Length) }}
  }}
}} finally {{ $out.Close() }}
$sum = (Get-FileHash -LiteralPath {quote(part)} -Algorithm SHA256).Hash.ToLower()
if ($sum -ne {quote(sha256)}) {{
  Remove-Item -LiteralPath {quote(part)} -Force
  throw "the copy of {Path(dest).name} arrived damaged (sha256 $sum)"
}}
Move-Item -LiteralPath {quote(part)} -Destination {quote(dest)} -Force
"""
