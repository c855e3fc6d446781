"""`devenv snapshot` through the CLI: names, states, errors, and the QEMU driver's qcow2 path on a real overlay.

An instance of the qemu backend is made by hand (its devenv.toml, an overlay
made by qemu-img on a small base, the marker of a finished first boot), so
the commands run the real path: CLI -> snapshot.py -> VM backend -> QEMU
driver -> qemu-img. The guest's disk is read back with `qemu-img convert`.
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

from devenv import config, paths
from devenv.backends.drivers.qemu import QemuDriver
from devenv.backends.vm.driver import VmState
from devenv.errors import ExitCode
from tests.conftest import tree

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (qemu-utils)")

BLOCK = 64 * 1024


def qemu_io(disk: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)], check=True, capture_output=True)


def content(disk: Path, tmp: Path) -> bytes:
    """The guest-visible bytes of the disk's first block (the overlay over its base)."""
    raw = tmp / "read.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    data = raw.read_bytes()[:BLOCK]
    raw.unlink()
    return data


@pytest.fixture
def qemu_instance(home: Path, tmp_path: Path) -> Path:
    """A shut-down qemu instance `web` whose first boot finished; its overlay reads b"A" * BLOCK."""
    d = home / "instances" / "web"
    d.mkdir(parents=True)
    (d / paths.INSTANCE_CONFIG).write_text(config.Config(name="web", backend="qemu").to_toml())
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(d / paths.DISK)], check=True
    )
    qemu_io(d / paths.DISK, f"write -P 0x41 0 {BLOCK}")
    (d / paths.PROVISIONED).touch()
    return d


@pytest.fixture
def vm_state(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the QEMU driver see its VM in a state: vm_state("running")."""

    def set_state(state: str, reason: str = "") -> None:
        monkeypatch.setattr(QemuDriver, "state", lambda self, inst: VmState(state, reason))

    return set_state


def test_create_change_restore_puts_the_disk_back_exactly(qemu_instance: Path, cli: Any, tmp_path: Path) -> None:
    disk = qemu_instance / paths.DISK
    ran = cli("snapshot", "create", "before", "-n", "web")
    assert ran.code == 0, ran.err
    assert "instance `web`: snapshot `before` created" in ran.out
    qemu_io(disk, f"write -P 0x42 0 {BLOCK}")
    assert content(disk, tmp_path) == b"B" * BLOCK

    ran = cli("snapshot", "restore", "before", "-n", "web")
    assert ran.code == 0, ran.err
    assert content(disk, tmp_path) == b"A" * BLOCK
    events = [json.loads(line)["event"] for line in (qemu_instance / paths.EVENTS_LOG).read_text().splitlines()]
    assert events == ["snapshot-created", "snapshot-restored"]


def test_list_shows_them_oldest_first_and_as_json_and_delete_removes_one(qemu_instance: Path, cli: Any) -> None:
    assert cli("snapshot", "list", "-n", "web").out.startswith("instance `web` has no snapshots")
    assert json.loads(cli("snapshot", "list", "-n", "web", "--json").out) == []
    assert cli("snapshot", "create", "one", "-n", "web").code == 0
    assert cli("snapshot", "create", "two.b_c-d", "-n", "web").code == 0

    rows = json.loads(cli("snapshot", "list", "-n", "web", "--json").out)
    assert [r["name"] for r in rows] == ["one", "two.b_c-d"]
    assert all(r["created"].endswith("+00:00") for r in rows)
    table = cli("snapshot", "list", "-n", "web").out.splitlines()
    assert table[0].split() == ["NAME", "CREATED"]
    assert [line.split()[0] for line in table[1:]] == ["one", "two.b_c-d"]

    ran = cli("snapshot", "delete", "one", "-n", "web")
    assert ran.code == 0, ran.err
    assert [r["name"] for r in json.loads(cli("snapshot", "list", "-n", "web", "--json").out)] == ["two.b_c-d"]
    listed = subprocess.run(["qemu-img", "snapshot", "-l", str(qemu_instance / paths.DISK)], capture_output=True)
    assert b"two.b_c-d" in listed.stdout and b" one " not in listed.stdout


def test_the_project_files_name_picks_the_instance(qemu_instance: Path, cli: Any) -> None:
    Path("devenv.toml").write_text('name = "web"\n')
    assert cli("snapshot", "create", "s1").code == 0
    assert "s1" in cli("snapshot", "list").out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["snapshot", "create", "1st", "-n", "web"], ExitCode.USAGE, "`1st` is not a snapshot name"),
        (["snapshot", "create", "a b", "-n", "web"], ExitCode.USAGE, "`a b` is not a snapshot name"),
        (["snapshot", "create", "../x", "-n", "web"], ExitCode.USAGE, "`../x` is not a snapshot name"),
        (["snapshot", "restore", "x" * 64, "-n", "web"], ExitCode.USAGE, "is not a snapshot name"),
        (["snapshot", "create", "-n", "web"], ExitCode.USAGE, None),
        (["snapshot", "restore", "nope", "-n", "web"], ExitCode.NOT_FOUND, "instance `web` has no snapshot `nope`"),
        (["snapshot", "delete", "nope", "-n", "web"], ExitCode.NOT_FOUND, "instance `web` has no snapshot `nope`"),
        (["snapshot", "create", "s", "-n", "ghost"], ExitCode.NOT_FOUND, "instance `ghost` does not exist"),
        (["snapshot", "list", "-n", "ghost"], ExitCode.NOT_FOUND, "instance `ghost` does not exist"),
    ],
)
def test_bad_input_is_an_error_with_a_hint_and_changes_nothing(
    qemu_instance: Path, home: Path, cli: Any, argv: list[str], code: ExitCode, message: str | None
) -> None:
    before = tree(home)
    ran = cli(*argv)
    assert ran.code == code, ran.err
    if message is not None:
        _, said, rest = ran.err.partition("devenv: error: ")
        assert said and message in rest.splitlines()[0], ran.err
        assert rest.splitlines()[1].startswith("  hint: ")
    assert "Traceback" not in ran.err
    after = {k: v for k, v in tree(home).items() if not k.endswith(paths.OP_LOCK)}  # the lock's file stays
    assert after == before


def test_a_name_taken_already_is_refused(qemu_instance: Path, cli: Any) -> None:
    assert cli("snapshot", "create", "s1", "-n", "web").code == 0
    again = cli("snapshot", "create", "s1", "-n", "web")
    assert again.code == ExitCode.STATE
    assert "instance `web` already has a snapshot `s1`" in again.err
    assert "devenv snapshot delete s1 -n web" in again.err


@pytest.mark.parametrize("state", ["running", "paused", "halted"])
def test_create_and_restore_of_a_running_vm_are_refused_with_the_shutdown_command(
    qemu_instance: Path, cli: Any, vm_state: Any, tmp_path: Path, state: str
) -> None:
    assert cli("snapshot", "create", "s1", "-n", "web").code == 0
    disk = qemu_instance / paths.DISK
    before = disk.read_bytes()
    vm_state(state)
    for verb in ("create", "restore", "delete"):
        ran = cli("snapshot", verb, "s2" if verb == "create" else "s1", "-n", "web")
        assert ran.code == ExitCode.STATE, (verb, ran.err)
        assert f"instance `web` is {state}" in ran.err and "only while it is shut down" in ran.err
        assert "hint: shut it down first: `devenv stop --shutdown -n web`" in ran.err
    assert disk.read_bytes() == before
    assert [r["name"] for r in json.loads(cli("snapshot", "list", "-n", "web", "--json").out)] == ["s1"]


def test_a_suspended_guest_is_never_restored_under_nor_discarded(qemu_instance: Path, cli: Any, vm_state: Any) -> None:
    """Its saved memory belongs to the disk as it is: changing the disk would corrupt it or lose it."""
    assert cli("snapshot", "create", "s1", "-n", "web").code == 0
    disk = qemu_instance / paths.DISK
    before = disk.read_bytes()
    vm_state("saved", "the guest is suspended to disk")
    for verb in ("create", "restore", "delete"):
        ran = cli("snapshot", verb, "s1", "-n", "web")
        assert ran.code == ExitCode.STATE, (verb, ran.err)
        assert "instance `web` is suspended: its saved guest belongs to the disk as it is now" in ran.err
        assert "`devenv stop --shutdown -n web`" in ran.err and "nothing is lost" in ran.err
    assert disk.read_bytes() == before


def test_a_crashed_vm_may_be_restored(qemu_instance: Path, cli: Any, vm_state: Any, tmp_path: Path) -> None:
    assert cli("snapshot", "create", "s1", "-n", "web").code == 0
    qemu_io(qemu_instance / paths.DISK, f"write -P 0x42 0 {BLOCK}")
    vm_state("crashed", "the VM process is gone")
    assert cli("snapshot", "restore", "s1", "-n", "web").code == 0
    assert content(qemu_instance / paths.DISK, tmp_path) == b"A" * BLOCK


def test_an_instance_that_never_finished_its_first_boot_is_not_snapshotted(qemu_instance: Path, cli: Any) -> None:
    (qemu_instance / paths.PROVISIONED).unlink()
    ran = cli("snapshot", "create", "s1", "-n", "web")
    assert ran.code == ExitCode.STATE
    assert "has never finished its first boot" in ran.err and "devenv start -n web" in ran.err


def test_the_operation_lock_keeps_a_start_out(qemu_instance: Path, cli: Any) -> None:
    """A `devenv start` holding the instance: the snapshot waits for nobody and says who holds it."""
    from devenv import oplock
    from tests.steprecorder import StepRecorder

    with oplock.hold(qemu_instance, "start", StepRecorder()):
        ran = cli("snapshot", "restore", "s1", "-n", "web")
    assert ran.code == ExitCode.STATE
    assert f"`devenv start` (pid {os.getpid()}) is working on it" in ran.err


def test_a_qemu_img_failure_names_the_command(qemu_instance: Path, cli: Any) -> None:
    (qemu_instance / paths.DISK).write_bytes(b"not a qcow2")
    ran = cli("snapshot", "list", "-n", "web")
    assert ran.code == ExitCode.COMMAND_FAILED
    assert "`qemu-img info -f qcow2 --force-share --output=json" in ran.err and "Traceback" not in ran.err


@pytest.mark.usefixtures("fake")
def test_a_backend_without_snapshots_says_not_supported(home: Path, cli: Any) -> None:
    assert cli("create", "-n", "f", "--backend", "fake").code == 0
    for argv in (["create", "s1"], ["list"], ["restore", "s1"], ["delete", "s1"]):
        ran = cli("snapshot", *argv, "-n", "f")
        assert ran.code == ExitCode.NOT_SUPPORTED, ran.err
        assert "backend `fake` does not support snapshots" in ran.err
        assert 'hint: the qemu, libvirt and hyperv backends have them (backend = "qemu", "libvirt" or' in ran.err


@pytest.mark.parametrize("backend", ["wsl2"])
def test_the_wsl2_driver_has_no_snapshots(home: Path, cli: Any, backend: str) -> None:
    d = home / "instances" / "w"
    d.mkdir(parents=True)
    (d / paths.INSTANCE_CONFIG).write_text(config.Config(name="w", backend=backend).to_toml())
    ran = cli("snapshot", "create", "s1", "-n", "w")
    assert ran.code == ExitCode.NOT_SUPPORTED, ran.err
    assert f"backend `{backend}` does not support snapshots" in ran.err


def test_the_native_backend_has_no_guest_disk(home: Path, cli: Any) -> None:
    d = home / "instances" / "n"
    d.mkdir(parents=True)
    (d / paths.INSTANCE_CONFIG).write_text(config.Config(name="n", backend="native").to_toml())
    ran = cli("snapshot", "list", "-n", "n")
    assert ran.code == ExitCode.NOT_SUPPORTED
    assert "backend `native` does not support snapshots" in ran.err and "no guest disk" in ran.err


def test_shell_completion_offers_the_subcommands_and_instance_names(qemu_instance: Path) -> None:
    env = {**os.environ, "_DEVENV_COMPLETE": "complete_bash", "COMP_WORDS": "devenv snapshot ", "COMP_CWORD": "2"}
    out = subprocess.run([sys.executable, "-m", "devenv"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["create", "list", "restore", "delete"]
    env |= {"COMP_WORDS": "devenv snapshot list -n w", "COMP_CWORD": "4"}
    out = subprocess.run([sys.executable, "-m", "devenv"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["web"]
    for snap in ("before", "beyond", "other"):
        subprocess.run(["qemu-img", "snapshot", "-c", snap, str(qemu_instance / paths.DISK)], check=True)
    env |= {"COMP_WORDS": "devenv snapshot restore -n web be", "COMP_CWORD": "5"}
    out = subprocess.run([sys.executable, "-m", "devenv"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["before", "beyond"]
    env |= {"COMP_WORDS": "devenv snapshot delete -n ghost ", "COMP_CWORD": "5"}
    done = subprocess.run([sys.executable, "-m", "devenv"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [] and "Traceback" not in done.stderr
