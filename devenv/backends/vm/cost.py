"""What a VM instance costs its host, for `devenv status` and `devenv list`: the VM-or-container question.

Per instance: the last start's time to ready and what kind of start it was
(a first boot, a boot, a resume), the VM process's resident memory on the
host beside the memory the guest itself uses (a VM holds RAM the guest has
freed until the balloon reports it), and the disk bytes the instance really
holds beside its virtual size (its qcow2 overlay grows as the guest writes;
the base image is shared and not counted).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from devenv import hostdisk
from devenv.atomicfile import write_atomic
from devenv.errors import DevenvError

LAST_START = "last-start.json"
START_KINDS = ("first boot", "boot", "resume", "attach")


def record_start(inst_dir: Path, seconds: float, kind: str) -> None:
    """Written when a start has finished: how long `devenv start` took to a usable guest."""
    data = {"seconds": round(seconds, 2), "kind": kind, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(inst_dir / LAST_START, (json.dumps(data) + "\n").encode(), 0o600)


def last_start(inst_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((inst_dir / LAST_START).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") in START_KINDS else None


def disk_usage(disk: Path) -> dict[str, int] | None:
    """Bytes the overlay really takes on the host's disk, and the size the guest sees."""
    from devenv.images import overlay

    try:
        st = disk.stat()
        virtual = overlay.read_header(disk).virtual_size
    except (OSError, ValueError, DevenvError):  # not a qcow2 (another driver's disk): no figure, not an error
        return None
    used = hostdisk.allocated(st)
    return {"used": used, "virtual": virtual}


def guest_used(memory: dict[str, Any] | None) -> int | None:
    """The guest's own view (total - available, as `free` counts it), from its agent."""
    if not isinstance(memory, dict):
        return None
    total, available = memory.get("total"), memory.get("available")
    if isinstance(total, int) and isinstance(available, int):
        return total - available
    return None


def measure(
    inst_dir: Path,
    pid: int | None,
    disk: Path,
    guest_memory: dict[str, Any] | None,
    memory_file: Path | None = None,
) -> tuple[dict[str, object], dict[str, float | int | str]]:
    """(status details in words, the same as figures for --json); each only when it could be measured.

    `memory_file`: the guest's memory as a file (the driver's AgentPlan); its
    blocks are kept allocated (hostdisk.keep_allocated), so it takes the
    guest's whole memory size on the host's disk while the VM runs or is saved.
    """
    from devenv import pidutil
    from devenv.sizes import format_measured as human

    words: dict[str, object] = {}
    figures: dict[str, float | int | str] = {}
    start = last_start(inst_dir)
    if start is not None:
        words["last_start"] = f"{start['seconds']:.1f} s ({start['kind']}, {start.get('finished', '?')})"
        figures["last_start_seconds"] = start["seconds"]
        figures["last_start_kind"] = start["kind"]
    rss = pidutil.rss_bytes(pid) if pid else None
    used = guest_used(guest_memory)
    if used is not None:
        figures["guest_used"] = used
    if rss is not None:
        figures["host_rss"] = rss
        words["memory"] = f"{human(rss)} held on the host" + (
            f", {human(used)} used in the guest" if used is not None else ""
        )
    usage = disk_usage(disk)
    if usage is not None:
        figures["disk_used"] = usage["used"]
        figures["disk_virtual"] = usage["virtual"]
        words["disk_usage"] = f"{human(usage['used'])} used of {human(usage['virtual'])}"
    try:
        st = memory_file.stat() if memory_file is not None else None
    except OSError:
        st = None
    if st is not None:
        figures["memory_file_used"] = hostdisk.allocated(st)
        words["memory_file"] = f"{human(int(figures['memory_file_used']))} on the host's disk ({memory_file})"
    return words, figures
