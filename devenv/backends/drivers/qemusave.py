"""Suspend and resume for the QEMU driver: the guest's RAM lives in a file, so a save writes only its devices.

Every launch maps the guest's RAM from GUEST_RAM in the instance directory
(memory-backend-file, share=on), and a suspend migrates with x-ignore-shared:
QEMU then writes only device state to SAVED_STATE and leaves the RAM where it
is. Chosen by the figures (QEMU 7.2, TCG, a 2 GiB guest running docker, 2
cores): migrating the whole RAM to a file (`exec:cat`, the path every QEMU
has) wrote 438 MB in 3.1 s and loaded it in 1.42 s; with the RAM in the file,
the save wrote 0.8 MB in 0.03 s and the restore took 0.09 s (0.14 s with the
host's page cache dropped: the guest's pages then fault in as it touches
them). The costs, accepted: the file takes host disk as the guest touches
memory (at most the guest's size; free-page reporting punches back what the
guest frees), and the host kernel writes dirty guest pages to it in the
background.

A saved guest is only loaded with the RAM file and disk it was saved with:
- the record (SAVED_RECORD) is written last, after the state and the RAM
  file were fsynced: a host crash mid-save leaves no record, and the next
  start boots cold;
- it names the command line with the versioned machine type QEMU resolved
  ("q35" is "pc-q35-7.2" on 7.2 and a later QEMU's default differs), the
  QEMU binary and every file the command line loads (firmware, kernel), and
  the disk as QEMU left it; a launch compares them with what it would run now
  (misfit()) and boots cold, saying why, when any differs;
- it is removed before the restored guest runs: from then on its RAM and
  disk move on and the saved state no longer matches them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from devenv.atomicfile import write_atomic

GUEST_RAM = "memory.ram"  # the guest's RAM, mapped by QEMU: kept across a suspend
SAVED_STATE = "suspend.state"  # the guest's devices, as QEMU's migration wrote them
SAVED_RECORD = "suspend.json"  # what the state was saved with; no record, no saved guest
RAM_ID = "ram0"
MIGRATE_WAIT = 120.0  # s a save or a load may take before it is given up
RECORD_VERSION = 1

# the SSH port QEMU forwards is the host's business, not the guest's: it may change across a restore
_HOSTFWD_SSH = "hostfwd=tcp:127.0.0.1:"


class MigrationFailed(Exception):
    """QEMU could not save or load the guest; the message is QEMU's own, with what was being done."""


def uses_ram_file(argv: list[str]) -> bool:
    """The VM was launched with its RAM in the file (a VM launched by an older devenv was not)."""
    return any(a.startswith(f"memory-backend-file,id={RAM_ID},") for a in argv)


def _machine_index(argv: list[str]) -> int:
    return argv.index("-machine") + 1


def pin_machine(argv: list[str], versioned: str) -> list[str]:
    """The command line with its machine type ("q35") replaced by the versioned one it resolved to."""
    out = list(argv)
    i = _machine_index(out)
    _, sep, rest = out[i].partition(",")
    out[i] = versioned + sep + rest
    return out


def _normalised(argv: list[str]) -> list[str]:
    """What must match between the saved command line and the one a launch would run now."""
    out = []
    for a in argv:
        if a.startswith("user,id=net0,"):
            a = ",".join(
                p if not p.startswith(_HOSTFWD_SSH) or not p.endswith("-:22") else f"{_HOSTFWD_SSH}PORT-:22"
                for p in a.split(",")
            )
        if a.startswith("tcg,tb-size="):  # the host's translation cache, nothing of the guest's
            a = "tcg"
        out.append(a)
    return out


def file_identity(path: str | Path) -> list[int] | None:
    """Size and mtime of a file: a rebuilt or upgraded file changes them."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def loaded_files(argv: list[str]) -> dict[str, list[int] | None]:
    """The files QEMU loads whose contents the saved devices depend on: its binary, firmware, kernel."""
    files = {"qemu": os.path.realpath(argv[0])}
    for flag in ("-bios", "-kernel", "-initrd"):
        if flag in argv:
            files[flag] = argv[argv.index(flag) + 1]
    return {f"{k} {v}": file_identity(v) for k, v in files.items()}


def read_record(inst_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((inst_dir / SAVED_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == RECORD_VERSION else None


def misfit(record: dict[str, Any], argv: list[str], disk: Path) -> str | None:
    """Why the saved guest cannot be loaded into the VM `argv` would launch now; None when it can."""
    if not (Path(disk).parent / SAVED_STATE).exists():
        return f"its device state ({SAVED_STATE}) is missing"
    if not (Path(disk).parent / GUEST_RAM).exists():
        return f"its memory file ({GUEST_RAM}) is missing"
    saved = record.get("argv")
    if not isinstance(saved, list):
        return "its record is incomplete"
    now = _normalised(pin_machine(argv, str(record.get("machine"))))
    then = _normalised(saved)
    if now != then:
        return _first_difference(then, now)
    for name, ident in record.get("files", {}).items():
        path = name.partition(" ")[2]
        if file_identity(path) != ident:
            return f"{path} changed since the save (an upgrade or a rebuild)"
    if file_identity(disk) != record.get("disk"):
        return f"the disk {disk} changed since the save"
    return None


def _first_difference(then: list[str], now: list[str]) -> str:
    for i, (a, b) in enumerate(zip(then, now, strict=False)):
        if a != b:
            flag = then[i - 1] if i and then[i - 1].startswith("-") else "the command line"
            return f"the VM differs from the saved one: {flag} was `{a}`, is now `{b}`"
    return "the VM has other devices than the saved one"


def discard(inst_dir: Path) -> None:
    """The record first: without it the rest is never loaded."""
    for name in (SAVED_RECORD, SAVED_STATE, SAVED_STATE + ".tmp", GUEST_RAM):
        with contextlib.suppress(FileNotFoundError):
            (inst_dir / name).unlink()


def versioned_machine(q: Any, machine: str) -> str:
    """The machine type `machine` is an alias of in this QEMU ("q35" -> "pc-q35-7.2"), else itself."""
    for m in q.command("query-machines"):
        if m.get("alias") == machine:
            return str(m["name"])
    return machine


def _wait_migration(q: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + MIGRATE_WAIT
    while time.monotonic() < deadline:
        r = q.command("query-migrate")
        status = r.get("status")
        if status == "completed":
            return dict(r)
        if status in ("failed", "cancelled"):
            raise MigrationFailed(f"QEMU could not {what}: {r.get('error-desc', status)}")
        time.sleep(0.01)
    raise MigrationFailed(f"QEMU did not {what} within {MIGRATE_WAIT:.0f} s")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(q: Any, inst_dir: Path) -> dict[str, Any]:
    """Stop the guest and write its device state (QMP `q` of a VM launched with its RAM in the file).

    The guest is left stopped in QEMU, the state and RAM file on disk; the
    caller quits QEMU and then writes the record (write_record). On failure the
    guest runs on (`cont`) and MigrationFailed says why.
    """
    tmp = inst_dir / (SAVED_STATE + ".tmp")
    q.command("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    q.command("stop")
    try:
        try:
            q.command("migrate", uri=f"exec:cat > {shlex.quote(str(tmp))}")
        except Exception as e:  # QMP refuses at once, e.g. while a 9p share is mounted in the guest
            raise MigrationFailed(str(e).removeprefix("QMP migrate failed: ")) from None
        result = _wait_migration(q, "save the guest")
        _fsync(tmp)
        _fsync(inst_dir / GUEST_RAM)
        os.replace(tmp, inst_dir / SAVED_STATE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            q.command("cont")
        raise
    return result


def write_record(inst_dir: Path, argv: list[str], machine: str, disk: Path) -> None:
    """Written last (after QEMU quit and left the disk as it stays): with it, a launch may restore."""
    if "-incoming" in argv:  # a VM that was itself restored: the command line without its restore
        i = argv.index("-incoming")
        argv = argv[:i] + argv[i + 2 :]
    record = {
        "version": RECORD_VERSION,
        "saved_at": time.time(),
        "machine": machine,
        "argv": pin_machine(argv, machine),
        "files": loaded_files(argv),
        "disk": file_identity(disk),
    }
    write_atomic(inst_dir / SAVED_RECORD, (json.dumps(record, indent=1) + "\n").encode())


def load(q: Any, inst_dir: Path) -> dict[str, Any]:
    """Load the saved devices into a QEMU launched with `-incoming defer`; the guest is left paused."""
    q.command("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    try:
        q.command("migrate-incoming", uri=f"exec:cat {shlex.quote(str(inst_dir / SAVED_STATE))}")
    except Exception as e:
        raise MigrationFailed(str(e)) from None
    return _wait_migration(q, "load the saved guest")
