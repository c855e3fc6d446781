"""The Hyper-V driver: every script it builds, every reader of an answer, the VHDX conversion, and its lifecycle.

The conversion runs the real qemu-img. The lifecycle runs the driver's real
local transport against the stand-in `pwsh` (tests/powershell_stand_in.py),
which replays answers: JSON as the driver's own scripts print it, built
here (no Windows host was at hand; tests/hyperv_recordings.py says which
answers are recorded and which built). Nothing here has run on Hyper-V.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devenv import config
from devenv.backends.base import InstanceRef
from devenv.backends.drivers import hyperv, hypervimage, hypervps
from devenv.backends.drivers.powershell import PowerShellFailed
from devenv.errors import BackendUnavailable, DevenvError, PermissionProblem, StateError, UsageError
from tests.steprecorder import StepRecorder

STAND_IN = Path(__file__).resolve().parents[1] / "powershell_stand_in.py"
REPO = Path(__file__).resolve().parents[2]
VM_ID = "5d4c1a7e-3f0b-4c55-9a3e-0c2f6a1b9e01"
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


# -- scripts ----------------------------------------------------------------------------


def test_define_vm_script() -> None:
    spec = hypervps.VmSpec(
        name="devenv-web-0123abcd",
        notes="devenv instance web (C:\\Users\\ann's\\devenv\\web); deleted with it by `devenv delete`",
        disk="C:\\d\\disk.vhdx",
        seed="C:\\d\\cidata.iso",
        folder="C:\\d\\hyperv",
        cpus=4,
        memory=2 * 1024**3,
        switch="",
    )
    assert hypervps.define_vm(spec) == (
        "$switch = Hyper-V\\Get-VMSwitch -Id 'c08cb7b8-9b3c-408e-8e30-5e16a3aeb444'\n"
        "$new = @{\n"
        "  Name = 'devenv-web-0123abcd'\n"
        "  Generation = 2\n"
        "  MemoryStartupBytes = 2147483648\n"
        "  VHDPath = 'C:\\d\\disk.vhdx'\n"
        "  BootDevice = 'VHD'\n"
        "  SwitchName = $switch.Name\n"
        "  Path = 'C:\\d\\hyperv'\n"
        "}\n"
        "$vm = Hyper-V\\New-VM @new\n"
        "$settings = @{\n"
        "  ProcessorCount = 4\n"
        "  StaticMemory = $true\n"
        "  AutomaticCheckpointsEnabled = $false\n"
        "  AutomaticStopAction = 'ShutDown'\n"
        "  Notes = 'devenv instance web (C:\\Users\\ann''s\\devenv\\web); deleted with it by `devenv delete`'\n"
        "}\n"
        "Hyper-V\\Set-VM -VM $vm @settings\n"
        "Hyper-V\\Set-VMFirmware -VM $vm -EnableSecureBoot On -SecureBootTemplate MicrosoftUEFICertificateAuthority\n"
        "Hyper-V\\Add-VMDvdDrive -VM $vm -Path 'C:\\d\\cidata.iso'\n"
        'ConvertTo-Json -Compress -Depth 4 -InputObject ([ordered]@{ name = $vm.Name; id = "$($vm.Id)";'
        ' state = "$($vm.State)"; status = "$($vm.Status)"; notes = $vm.Notes; uptime = [int]$vm.Uptime.TotalSeconds })\n'
    )


def test_a_named_switch_is_found_by_name() -> None:
    assert hypervps.switch_selector("Ext 'LAN'") == "-Name 'Ext ''LAN'''"
    assert "Hyper-V\\Get-VMSwitch -Name 'lab' -ErrorAction SilentlyContinue" in hypervps.preflight("lab")


FIND = "$vm = @(Hyper-V\\Get-VM | Where-Object { $_.Id -eq [guid]'" + VM_ID + "' })[0]\n"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (hypervps.vm_by_id(VM_ID), FIND + "if ($vm) { ConvertTo-Json -Compress -Depth 4 -InputObject ("),
        (
            hypervps.start_vm(VM_ID, "C:\\i\\cidata.iso"),
            FIND + f'if (-not $vm) {{ throw "the VM {VM_ID} is gone" }}\n'
            "$dvd = @(Hyper-V\\Get-VMDvdDrive -VM $vm)[0]\n"
            "if ($dvd) { Hyper-V\\Set-VMDvdDrive -VMDvdDrive $dvd -Path 'C:\\i\\cidata.iso' }\n"
            "else { Hyper-V\\Add-VMDvdDrive -VM $vm -Path 'C:\\i\\cidata.iso' }\n"
            "Hyper-V\\Start-VM -VM $vm\n",
        ),
        (hypervps.shut_down(VM_ID), FIND + "if ($vm) { Hyper-V\\Stop-VM -VM $vm -Force -AsJob | Out-Null }\n"),
        (
            hypervps.turn_off(VM_ID),
            FIND + "if ($vm -and $vm.State -ne 'Off') { Hyper-V\\Stop-VM -VM $vm -TurnOff -Force }\n",
        ),
        (
            hypervps.remove_vm(VM_ID, "C:\\h\\devenv\\instances\\x"),
            FIND + "if ($vm) {\n"
            "  if ($vm.State -ne 'Off') { Hyper-V\\Stop-VM -VM $vm -TurnOff -Force }\n"
            "  Hyper-V\\Remove-VM -VM $vm -Force\n}\n"
            "if (Test-Path -LiteralPath 'C:\\h\\devenv\\instances\\x') {\n"
            "  Remove-Item -LiteralPath 'C:\\h\\devenv\\instances\\x' -Recurse -Force\n}\n",
        ),
        (
            hypervps.create_disk("C:\\c\\base.vhdx", "C:\\i\\disk.vhdx", 20 * 1024**3),
            "New-Item -ItemType Directory -Force -Path (Split-Path -Parent -Path 'C:\\i\\disk.vhdx') | Out-Null\n"
            "if (-not (Test-Path -LiteralPath 'C:\\i\\disk.vhdx')) {\n"
            "  Hyper-V\\New-VHD -Path 'C:\\i\\disk.vhdx' -ParentPath 'C:\\c\\base.vhdx' -Differencing | Out-Null\n}\n"
            "if ((Hyper-V\\Get-VHD -Path 'C:\\i\\disk.vhdx').Size -lt 21474836480) {\n"
            "  Hyper-V\\Resize-VHD -Path 'C:\\i\\disk.vhdx' -SizeBytes 21474836480\n}\n",
        ),
        (
            hypervps.prepare_base("C:\\c\\base.vhdx"),
            "$f = Get-Item -LiteralPath 'C:\\c\\base.vhdx'\n"
            "if ($f.Attributes -band [IO.FileAttributes]::SparseFile) {\n"
            "  fsutil sparse setflag $f.FullName 0 | Out-Null\n"
            '  if ($LASTEXITCODE -ne 0) { throw "fsutil could not clear the sparse flag of $($f.FullName)" }\n'
            "}\n$f.IsReadOnly = $true\n",
        ),
    ],
    ids=["vm-by-id", "start", "shut-down", "turn-off", "remove", "differencing-disk", "base-not-sparse"],
)
def test_scripts(script: str, expected: str) -> None:
    assert script.startswith(expected) and (script == expected or expected.endswith("-InputObject ("))


def test_every_script_names_the_hyper_v_module_and_asks_state_by_name() -> None:
    """PowerCLI's Get-VM must not answer; enums go out as "$(...)" strings, never ConvertTo-Json numbers."""
    spec = hypervps.VmSpec("n", "x", "d", "s", "f", 1, 2**30, "")
    scripts = [
        hypervps.preflight(""),
        hypervps.vms_named("n"),
        hypervps.vm_by_id(VM_ID),
        hypervps.define_vm(spec),
        hypervps.start_vm(VM_ID, "s"),
        hypervps.shut_down(VM_ID),
        hypervps.turn_off(VM_ID),
        hypervps.remove_vm(VM_ID),
        hypervps.addresses(VM_ID),
        hypervps.create_disk("b", "d", 2**30),
        hypervps.checkpoints(VM_ID),
        hypervps.checkpoint(VM_ID, "n"),
        hypervps.restore_checkpoint(VM_ID, VM_ID),
        hypervps.remove_checkpoint(VM_ID, VM_ID),
    ]
    import re

    for script in scripts:
        cmdlets = "Get-VM|New-VM|Set-VM|Start-VM|Stop-VM|Remove-VM|Get-VHD|New-VHD|Checkpoint-VM|Get-VMSnapshot"
        bare = re.findall(rf"(?<![\\\w-])({cmdlets}|Restore-VMSnapshot|Remove-VMSnapshot)\b", script)
        assert bare == [], script
        assert "state = $vm.State" not in script and 'state = "$($vm.State)"' in hypervps._VM_FIELDS


# -- readers ----------------------------------------------------------------------------

FACTS = {
    "user": "DESK\\ann",
    "admin": False,
    "in_group": True,
    "listed": True,
    "module": True,
    "vmms": "Running",
    "switch": {"name": "Default Switch", "id": hypervps.DEFAULT_SWITCH_ID, "type": "Internal"},
    "vhd_path": "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks",
    "computer": "DESK",
}


def test_preflight_of_a_usable_host() -> None:
    assert hypervps.read_preflight(FACTS, "this host", "") == hypervps.HostFacts(
        "DESK\\ann", "DESK", "Default Switch", "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"
    )


@pytest.mark.parametrize(
    ("change", "switch", "cls", "message", "hint_start"),
    [
        (
            {"module": False},
            "",
            BackendUnavailable,
            "Hyper-V is not enabled on this host (its PowerShell module is missing)",
            "as administrator: `Enable-WindowsOptionalFeature -Online -FeatureName Microsoft-Hyper-V -All`",
        ),
        (
            {"vmms": "Stopped"},
            "",
            BackendUnavailable,
            "the Hyper-V service (vmms) on this host is stopped",
            "as administrator: `Start-Service vmms`",
        ),
        (
            {"vmms": ""},
            "",
            BackendUnavailable,
            "the Hyper-V service (vmms) on this host is not installed",
            "as administrator: `Start-Service vmms`",
        ),
        (
            {"in_group": False, "listed": False},
            "",
            PermissionProblem,
            "DESK\\ann may not manage Hyper-V on this host: not in Hyper-V Administrators (S-1-5-32-578) and not"
            " running as administrator",
            "as administrator: `Add-LocalGroupMember -SID S-1-5-32-578 -Member 'DESK\\ann'`, then log out",
        ),
        (
            {"in_group": False, "listed": True},
            "",
            PermissionProblem,
            "DESK\\ann was added to Hyper-V Administrators on this host, but this logon session began before that",
            "log out of Windows and in again",
        ),
        (
            {"switch": None},
            "",
            BackendUnavailable,
            "this host has no Default Switch (the Hyper-V switch with id c08cb7b8-9b3c-408e-8e30-5e16a3aeb444)",
            "Windows 10 1709 and later make it with Hyper-V, Windows Server does not",
        ),
        (
            {"switch": None},
            "lab",
            UsageError,
            "this host has no Hyper-V switch named 'lab' (hyperv_switch in devenv.toml)",
            "`Hyper-V\\Get-VMSwitch` lists the switches there",
        ),
    ],
    ids=[
        "no-module",
        "vmms-stopped",
        "vmms-missing",
        "not-in-group",
        "added-not-logged-in",
        "no-default-switch",
        "no-named-switch",
    ],
)
def test_preflight_problems_each_with_its_fix(
    change: dict[str, Any], switch: str, cls: type[DevenvError], message: str, hint_start: str
) -> None:
    with pytest.raises(cls) as caught:
        hypervps.read_preflight({**FACTS, **change}, "this host", switch)
    assert caught.value.message == message
    assert caught.value.hint.startswith(hint_start)


def test_an_administrator_outside_the_group_may() -> None:
    assert (
        hypervps.read_preflight({**FACTS, "admin": True, "in_group": False, "listed": False}, "h", "").user
        == "DESK\\ann"
    )


VM_JSON = {
    "name": "devenv-a-1",
    "id": VM_ID,
    "state": "Running",
    "status": "Operating normally",
    "notes": "n",
    "uptime": 42,
}


def test_vms_as_convertto_json_writes_one_many_or_none() -> None:
    one = hypervps.VmInfo("devenv-a-1", VM_ID, "Running", "Operating normally", "n", 42)
    assert hypervps.read_vms(VM_JSON) == [one]  # a list of one, unwrapped
    assert hypervps.read_vms([VM_JSON, {**VM_JSON, "state": "Off", "uptime": 0}])[1].state == "Off"
    assert hypervps.read_vms([]) == [] and hypervps.read_vms(None) == []


def test_a_state_as_a_number_is_refused() -> None:
    """ConvertTo-Json's number for an enum (2 is Running today, not on every Windows): never read."""
    with pytest.raises(DevenvError) as caught:
        hypervps.read_vms({**VM_JSON, "state": 2})
    assert caught.value.message == "Hyper-V gave the VM's state as 2, not by name"
    with pytest.raises(DevenvError):
        hypervps.read_vms({**VM_JSON, "state": "3"})


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("Off", ("off", "")),
        ("Running", ("running", "")),
        ("Starting", ("running", "")),
        ("Stopping", ("running", "")),
        ("Saved", ("paused", "Hyper-V saved the VM (its memory is on disk)")),
        ("Paused", ("paused", "the VM is paused in Hyper-V")),
        (
            "OffCritical",
            ("crashed", "Hyper-V cannot reach the VM's files (OffCritical): is the disk holding them there and full?"),
        ),
        (
            "RunningCritical",
            (
                "halted",
                "Hyper-V lost access to the VM's storage (RunningCritical): is the disk holding it full or gone?",
            ),
        ),
        ("Other", ("halted", "Hyper-V reports the state 'Other', which devenv does not know")),
    ],
)
def test_hyper_v_states_by_name(word: str, state: tuple[str, str]) -> None:
    assert hypervps.vm_state(word) == state


@pytest.mark.parametrize(
    ("adapters", "address"),
    [
        (
            {"mac": "00155D012345", "addresses": ["172.27.144.5", "fe80::215:5dff:fe01:2345"], "neighbours": []},
            "172.27.144.5",
        ),
        (
            [{"mac": "00155D012345", "addresses": ["fe80::215:5dff:fe01:2345"], "neighbours": ["172.27.144.9"]}],
            "172.27.144.9",
        ),
        ([{"mac": "00155D012345", "addresses": [], "neighbours": []}], None),
        ([{"mac": "x", "addresses": ["169.254.3.4", "not an address"], "neighbours": []}], None),
        (None, None),
    ],
    ids=["kvp", "neighbour-fallback", "none-yet", "link-local-only", "no-adapter"],
)
def test_the_guest_address(adapters: Any, address: str | None) -> None:
    assert hypervps.read_address(adapters) == address


def test_vm_name_and_owner_note_depend_on_the_folder(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "web", tmp_path / "b" / "web"
    assert hypervps.vm_name("web", a) != hypervps.vm_name("web", b)
    assert hypervps.vm_name("web", a).startswith("devenv-web-") and len(hypervps.vm_name("web", a)) == 19
    assert hypervps.owner_note("web", a) == f"devenv instance web ({a}); deleted with it by `devenv delete`"


# -- the VHDX, made by the real qemu-img --------------------------------------------------


@needs_qemu_img
def test_the_base_is_converted_once_to_a_dynamic_vhdx_with_the_same_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "disk.raw"
    data = bytes(range(256)) * 4096  # 1 MiB with a pattern
    with open(raw, "wb") as f:
        f.write(data)
        f.truncate(64 * 1024**2)  # the rest is a hole
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(base)], check=True)
    out, converted = hypervimage.convert_once(base, "sha256:" + "ab" * 32)
    assert converted and out == tmp_path / "cache" / "hyperv" / f"base-{'ab' * 16}.vhdx"
    assert out.read_bytes()[:8] == b"vhdxfile"  # the VHDX file identifier (MS-VHDX 2.2.1)
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(out)], capture_output=True, check=True).stdout
    )
    assert (info["format"], info["virtual-size"]) == ("vhdx", 64 * 1024**2)
    assert out.stat().st_size < 64 * 1024**2  # dynamic: smaller than the disk (a fixed VHDX holds all 64 MiB)
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(out), str(back)], check=True)
    assert back.read_bytes() == raw.read_bytes()
    mtime = out.stat().st_mtime_ns
    assert hypervimage.convert_once(base, "sha256:" + "ab" * 32) == (out, False)
    assert out.stat().st_mtime_ns == mtime
    assert list(out.parent.iterdir()) == [out]  # no .part left behind


@needs_qemu_img
def test_a_failed_conversion_leaves_nothing_to_take_for_a_vhdx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "gone.qcow2"
    with pytest.raises(DevenvError) as caught:
        hypervimage.convert(missing, hypervimage.vhdx_path("cd" * 32))
    assert caught.value.message.startswith("`qemu-img convert -q -O vhdx -o subformat=dynamic")
    assert list((tmp_path / "cache" / "hyperv").iterdir()) == []


def test_a_local_image_is_keyed_by_path_size_and_time(tmp_path: Path) -> None:
    f = tmp_path / "mine.qcow2"
    f.write_bytes(b"one")
    first = hypervimage.image_key("", f)
    assert first.startswith("local-") and hypervimage.image_key("", f) == first
    f.write_bytes(b"other contents")
    assert hypervimage.image_key("", f) != first
    assert hypervimage.image_key("sha256:" + "ef" * 32, f) == "ef" * 32


# -- the lifecycle against the stand-in PowerShell ----------------------------------------


class Host:
    """The stand-in pwsh on PATH, and what it was asked."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        pwsh = bin_dir / "pwsh"
        pwsh.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} {STAND_IN} "$@"\n')
        pwsh.chmod(0o755)
        self.log = tmp / "scripts.jsonl"
        self.replays = tmp / "replays.json"
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("STANDIN_LOG", str(self.log))
        monkeypatch.setenv("STANDIN_REPLAYS", str(self.replays))
        self.answer()

    def answer(self, *replays: dict[str, Any]) -> None:
        self.replays.write_text(json.dumps(list(replays)))
        self.log.unlink(missing_ok=True)

    def scripts(self) -> list[str]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


def js(value: Any) -> str:
    return json.dumps(value) + "\r\n"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setattr(hyperv, "POLL_EVERY", 0.01)
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    return Host(tmp_path, monkeypatch)


def instance(tmp_path: Path, **cfg: Any) -> InstanceRef:
    d = tmp_path / "instances" / "web"
    d.mkdir(parents=True, exist_ok=True)
    return InstanceRef("web", d, config.Config(name="web", **cfg))


PREFLIGHT = {"match": "Get-LocalGroupMember", "stdout": js(FACTS)}


def ours(inst: InstanceRef, state: str) -> dict[str, Any]:
    return {
        **VM_JSON,
        "name": hypervps.vm_name("web", inst.dir),
        "state": state,
        "notes": hypervps.owner_note("web", inst.dir),
    }


@needs_qemu_img
def test_create_converts_the_image_and_makes_a_differencing_disk(host: Host, tmp_path: Path) -> None:
    base = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    inst = instance(tmp_path, image=str(base), disk=8 * 1024**3)
    host.answer(PREFLIGHT, {"match": "fsutil", "stdout": ""}, {"match": "New-VHD", "stdout": ""})
    steps = StepRecorder()
    hyperv.HypervDriver().create(inst, steps)
    vhdx = hypervimage.vhdx_path(hypervimage.image_key("", base))
    assert vhdx.read_bytes()[:8] == b"vhdxfile"
    assert steps.seen == [
        "find image " + str(base),
        "convert img to a VHDX for Hyper-V (once per image)",
        "prepare the base disk (not sparse, read-only)",
        "create a 8 GiB differencing disk on img",
    ]
    scripts = host.scripts()
    assert scripts[1:] == [
        hypervps.prepare_base(str(vhdx)),
        hypervps.create_disk(str(vhdx), str(inst.dir / "disk.vhdx"), 8 * 1024**3),
    ]
    assert scripts[0].startswith("$id = [Security.Principal.WindowsIdentity]::GetCurrent()")
    assert json.loads((inst.dir / hyperv.RECORD).read_text())["disk"] == str(inst.dir / "disk.vhdx")


def test_create_stops_at_the_first_host_problem(host: Host, tmp_path: Path) -> None:
    inst = instance(tmp_path)
    host.answer({"match": "Get-LocalGroupMember", "stdout": js({**FACTS, "in_group": False, "listed": False})})
    with pytest.raises(PermissionProblem):
        hyperv.HypervDriver().create(inst, StepRecorder())
    assert len(host.scripts()) == 1  # nothing was made


def made(inst: InstanceRef) -> None:
    (inst.dir / hyperv.RECORD).write_text(
        json.dumps({"base": "b.vhdx", "disk": "d.vhdx", "seed": "cidata.iso", "folder": "hyperv"})
    )


def test_launch_defines_starts_and_waits_for_the_address(host: Host, tmp_path: Path) -> None:
    inst = instance(tmp_path)
    made(inst)
    no_address = [{"mac": "00155D012345", "switch": "Default Switch", "addresses": [], "neighbours": []}]
    address = [{"mac": "00155D012345", "switch": "Default Switch", "addresses": ["172.27.144.5"], "neighbours": []}]
    host.answer(
        {"match": "$_.Name -eq", "stdout": js([])},
        {"match": "New-VM @new", "stdout": js(ours(inst, "Off"))},
        {"match": "Start-VM", "stdout": ""},
        {"match": "Get-VMNetworkAdapter", "stdout": js(no_address), "uses": 1},
        {"match": "Get-VMNetworkAdapter", "stdout": js(address)},
        {"match": "if ($vm) { ConvertTo-Json", "stdout": js(ours(inst, "Running"))},
    )
    steps = StepRecorder()
    d = hyperv.HypervDriver()
    boot = d.launch(inst, steps)
    name = hypervps.vm_name("web", inst.dir)
    assert steps.seen == [
        f"define the Hyper-V VM {name} (generation 2, Secure Boot with the Microsoft UEFI CA)",
        f"start the Hyper-V VM {name} on this host",
        "wait for the guest's address (the guest's Hyper-V KVP daemon reports it)",
    ]
    assert not boot.emulated
    assert d.endpoint(inst) == hyperv.Endpoint("172.27.144.5", 22)
    assert json.loads((inst.dir / hyperv.RECORD).read_text())["vm_id"] == VM_ID
    scripts = host.scripts()
    assert scripts[1] == hypervps.define_vm(
        hypervps.VmSpec(
            name, hypervps.owner_note("web", inst.dir), "d.vhdx", "cidata.iso", "hyperv", 2, 2 * 1024**3, ""
        )
    )
    assert scripts[2] == hypervps.start_vm(VM_ID, "cidata.iso")
    st = d.state(inst)
    assert (st.state, st.word, st.details) == (
        "running",
        "Running",
        {"vm": name, "vm_id": VM_ID, "hyperv_host": "this host", "hyperv_status": "Operating normally"},
    )


def test_a_vm_of_that_name_devenv_did_not_make_is_left_alone(host: Host, tmp_path: Path) -> None:
    inst = instance(tmp_path)
    made(inst)
    name = hypervps.vm_name("web", inst.dir)
    host.answer({"match": "$_.Name -eq", "stdout": js({**VM_JSON, "name": name, "notes": "my own VM"})})
    with pytest.raises(StateError) as caught:
        hyperv.HypervDriver().launch(inst, StepRecorder())
    assert caught.value.message == (
        f"a Hyper-V VM named {name} exists on this host that devenv did not make for `web`; devenv leaves it alone"
    )


def record_vm(inst: InstanceRef) -> None:
    rec = json.loads((inst.dir / hyperv.RECORD).read_text())
    (inst.dir / hyperv.RECORD).write_text(json.dumps({**rec, "vm_id": VM_ID, "vm_name": "x"}))


def test_stop_asks_the_guest_then_waits_for_off(host: Host, tmp_path: Path) -> None:
    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    host.answer(
        {"match": "-AsJob", "stdout": ""},
        {"match": "if ($vm) { ConvertTo-Json", "stdout": js(ours(inst, "Running")), "uses": 2},
        {"match": "if ($vm) { ConvertTo-Json", "stdout": js(ours(inst, "Off"))},
    )
    steps = StepRecorder()
    assert hyperv.HypervDriver().power_down(inst, steps, 5)
    assert steps.seen == ["Stop-VM: the guest shuts down; up to 5 s"]
    assert host.scripts()[1] == hypervps.shut_down(VM_ID)


def test_a_guest_that_ignores_stop_is_turned_off_after_the_budget(host: Host, tmp_path: Path) -> None:
    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    host.answer(
        {"match": "-AsJob", "stdout": ""},
        {"match": "-TurnOff", "stdout": ""},
        {"match": "if ($vm) { ConvertTo-Json", "stdout": js(ours(inst, "Running"))},
    )
    steps = StepRecorder()
    d = hyperv.HypervDriver()
    assert not d.power_down(inst, steps, 0.3)
    d.force_off(inst, steps)
    assert steps.seen == [
        "Stop-VM: the guest shuts down; up to 0 s",
        "✗",
        f"Stop-VM -TurnOff {hypervps.vm_name('web', inst.dir)}",
    ]
    assert host.scripts()[-1] == hypervps.turn_off(VM_ID)


def test_a_vm_whose_notes_changed_is_not_ours_any_more(host: Host, tmp_path: Path) -> None:
    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    host.answer({"match": "if ($vm) { ConvertTo-Json", "stdout": js({**VM_JSON, "notes": "someone else's"})})
    assert hyperv.HypervDriver().state(inst).state == "off"


def test_hyper_v_refusing_this_user_gets_the_group_fix(host: Host, tmp_path: Path) -> None:
    """Built: the catch's line for a denied Get-VM; the message text is Hyper-V's (WSL2-Network-Fix PR #4)."""
    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    denied = {
        "message": "You do not have the required permission to complete this task. Contact the administrator of"
        " the authorization policy for the computer 'DESK'.",
        "cmdlet": "Get-VM",
        "category": "PermissionDenied",
        "error_id": "AccessDenied,Microsoft.HyperV.PowerShell.Commands.GetVM",
        "exception": "Microsoft.HyperV.PowerShell.VirtualizationException",
    }
    host.answer({"match": "Get-VM", "stderr": "DEVENV-PS-ERROR " + json.dumps(denied) + "\r\n", "code": 1})
    with pytest.raises(PowerShellFailed) as caught:
        hyperv.HypervDriver().state(inst)
    assert caught.value.message == (
        "PowerShell on this host: `Get-VM` failed (exit 1): You do not have the required permission to complete"
        " this task. Contact the administrator of the authorization policy for the computer 'DESK'."
    )
    assert caught.value.hint == (
        "add the user to Hyper-V Administrators (S-1-5-32-578) on this host and log out and in again,"
        " or run devenv as administrator"
    )


def test_remote_default_switch_goes_through_the_windows_host(tmp_path: Path) -> None:
    inst = instance(tmp_path, hyperv_host="https://desk.example:5986/wsman")
    (inst.dir / hyperv.ADDRESS).write_text("172.27.144.5\n")
    assert hyperv.HypervDriver().endpoint(inst) == hyperv.Endpoint(
        "172.27.144.5", 22, proxy=("ssh", "-W", "%h:%p", "desk.example")
    )
    named = instance(tmp_path, hyperv_host="desk", hyperv_switch="LAN")
    assert hyperv.HypervDriver().endpoint(named) == hyperv.Endpoint("172.27.144.5", 22)


def test_registered_as_a_vm_driver() -> None:
    from devenv import registry

    e = registry.entry("hyperv")
    assert (e.target, e.driver, e.extra) == ("devenv.backends.drivers.hyperv:HypervDriver", True, "winrm")


# -- checkpoints as `devenv snapshot` ----------------------------------------------------------
# Built (no Hyper-V host at hand): the answers are the JSON checkpoints() itself prints, field by field.

CP_A = {
    "name": "before-upgrade",
    "id": "0b6f7d3e-1111-4c2a-8d6e-4f1e2a3b4c5d",
    "type": "Standard",
    "created": 1765000000123,
}
CP_B = {"name": "clean", "id": "9a8b7c6d-2222-4e3f-9a0b-1c2d3e4f5a6b", "type": "Standard", "created": 1764000000000}


def test_checkpoint_scripts() -> None:
    listing = hypervps.checkpoints(VM_ID)
    assert "$found = @(Hyper-V\\Get-VMSnapshot -VM $vm | ForEach-Object {" in listing
    assert "created = ([DateTimeOffset]$_.CreationTime).ToUnixTimeMilliseconds()" in listing  # never a DateTime
    assert 'type = "$($_.SnapshotType)"' in listing  # an enum, as its name
    made = hypervps.checkpoint(VM_ID, "it's")
    assert "Hyper-V\\Checkpoint-VM -VM $vm -SnapshotName 'it''s'" in made  # a single-quoted literal
    assert "if ($kind -eq 'Disabled') { Hyper-V\\Set-VM -VM $vm -CheckpointType Standard }" in made
    assert "finally { if ($kind -eq 'Disabled') { Hyper-V\\Set-VM -VM $vm -CheckpointType Disabled } }" in made
    for script, cmdlet in (
        (hypervps.restore_checkpoint(VM_ID, CP_A["id"]), "Restore-VMSnapshot"),
        (hypervps.remove_checkpoint(VM_ID, CP_A["id"]), "Remove-VMSnapshot"),
    ):
        assert f"Where-Object {{ $_.Id -eq [guid]'{CP_A['id']}' }})[0]" in script  # by id: names may repeat
        assert script.endswith(f"Hyper-V\\{cmdlet} -VMSnapshot $cp -Confirm:$false\n")
        assert "IncludeAllChildSnapshots" not in script


def test_checkpoints_read_oldest_first_from_one_many_or_none() -> None:
    assert hypervps.read_checkpoints(None) == []
    assert hypervps.read_checkpoints(CP_A) == [
        hypervps.CheckpointInfo("before-upgrade", CP_A["id"], 1765000000.123, "Standard")
    ]
    assert [c.name for c in hypervps.read_checkpoints([CP_A, CP_B])] == ["clean", "before-upgrade"]
    for bad in ({**CP_A, "created": "/Date(1765000000123)/"}, {**CP_A, "id": ""}, "before-upgrade"):
        with pytest.raises(DevenvError):
            hypervps.read_checkpoints([bad])


def off_vm_with(host: Host, inst: InstanceRef, checkpoints: list[dict[str, Any]], state: str = "Off") -> None:
    host.answer(
        {"match": "Get-VMSnapshot -VM $vm | ForEach-Object", "stdout": js(checkpoints)},
        {"match": "Checkpoint-VM", "stdout": ""},
        {"match": "Restore-VMSnapshot", "stdout": ""},
        {"match": "Remove-VMSnapshot", "stdout": ""},
        {"match": "if ($vm) { ConvertTo-Json", "stdout": js(ours(inst, state))},
    )


def test_snapshots_are_checkpoints_of_the_vm(host: Host, tmp_path: Path) -> None:
    from devenv.backends.base import Snapshot
    from devenv.backends.vm import snapshots

    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    d = hyperv.HypervDriver()
    assert d.features.snapshots
    name = hypervps.vm_name("web", inst.dir)

    off_vm_with(host, inst, [CP_A, CP_B])
    assert snapshots.listing(d, inst) == [Snapshot("clean", 1764000000.0), Snapshot("before-upgrade", 1765000000.123)]

    off_vm_with(host, inst, [CP_B])
    steps = StepRecorder()
    snapshots.create(d, inst, "before-upgrade", steps, provisioned=True)
    assert steps.seen == [f"Checkpoint-VM {name} -SnapshotName before-upgrade"]
    assert host.scripts()[-1] == hypervps.checkpoint(VM_ID, "before-upgrade")

    off_vm_with(host, inst, [CP_A, CP_B])
    steps = StepRecorder()
    snapshots.restore(d, inst, "before-upgrade", steps)
    assert steps.seen == [f"Restore-VMSnapshot before-upgrade of {name}"]
    assert host.scripts()[-1] == hypervps.restore_checkpoint(VM_ID, CP_A["id"])

    off_vm_with(host, inst, [CP_A, CP_B], state="Running")  # a checkpoint goes while the VM runs: merged live
    steps = StepRecorder()
    snapshots.delete(d, inst, "clean", steps)
    assert steps.seen == [f"Remove-VMSnapshot clean of {name} (Hyper-V merges its disk)"]
    assert host.scripts()[-1] == hypervps.remove_checkpoint(VM_ID, CP_B["id"])


@pytest.mark.parametrize(("state", "said"), [("Running", "is running"), ("Saved", "is paused (Hyper-V saved the VM")])
def test_a_checkpoint_is_taken_or_restored_only_with_the_vm_off(
    host: Host, tmp_path: Path, state: str, said: str
) -> None:
    from devenv.backends.vm import snapshots

    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    off_vm_with(host, inst, [CP_A], state=state)
    for act in (
        lambda: snapshots.create(hyperv.HypervDriver(), inst, "x", StepRecorder(), provisioned=True),
        lambda: snapshots.restore(hyperv.HypervDriver(), inst, "before-upgrade", StepRecorder()),
    ):
        with pytest.raises(StateError) as caught:
            act()
        assert said in caught.value.message and "devenv stop --shutdown -n web" in caught.value.hint
    assert not any("Checkpoint-VM" in s or "Restore-VMSnapshot" in s for s in host.scripts())


def test_a_name_that_is_missing_or_twice_there_is_refused(host: Host, tmp_path: Path) -> None:
    from devenv.backends.vm import snapshots
    from devenv.errors import SnapshotNotFound

    inst = instance(tmp_path)
    made(inst)
    record_vm(inst)
    off_vm_with(host, inst, [CP_A, {**CP_B, "name": "before-upgrade"}])
    with pytest.raises(StateError) as caught:
        snapshots.restore(hyperv.HypervDriver(), inst, "before-upgrade", StepRecorder())
    assert "has 2 checkpoints named `before-upgrade`; devenv does not choose between them" in caught.value.message
    with pytest.raises(StateError) as caught:
        snapshots.create(hyperv.HypervDriver(), inst, "before-upgrade", StepRecorder(), provisioned=True)
    assert caught.value.message == "instance `web` already has a snapshot `before-upgrade`"
    with pytest.raises(SnapshotNotFound):
        snapshots.delete(hyperv.HypervDriver(), inst, "Before-Upgrade", StepRecorder())  # names match exactly
    assert not any("-VMSnapshot $cp" in s or "Checkpoint-VM" in s for s in host.scripts())


def test_an_instance_without_its_vm_has_no_snapshots(host: Host, tmp_path: Path) -> None:
    from devenv.backends.vm import snapshots

    inst = instance(tmp_path)
    made(inst)
    assert snapshots.listing(hyperv.HypervDriver(), inst) == []
    with pytest.raises(StateError) as caught:
        hyperv.HypervDriver().snapshot_create(inst, "x", StepRecorder())
    assert caught.value.hint == "start it once: `devenv start -n web`"
    assert host.scripts() == []
