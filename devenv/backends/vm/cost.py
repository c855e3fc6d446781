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

from devenv.atomicfile import write_atomic
from devenv.errors import DevenvError

LAST_START = "last-start.json"
# numbers for --json; the text output shows the sentences beside them (memory, disk_usage, last_start)
MACHINE_KEYS = frozenset(
    {"host_rss", "guest_used", "disk_used", "disk_virtual", "last_start_seconds", "last_start_kind"}
)
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
    used = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return {"used": used, "virtual": virtual}


def guest_used(memory: dict[str, Any] | None) -> int | None:
    """The guest's own view (total - available, as `free` counts it), from its agent."""
    if not isinstance(memory, dict):
        return None
    total, available = memory.get("total"), memory.get("available")
    if isinstance(total, int) and isinstance(available, int):
        return total - available
    return None


def details(inst_dir: Path, pid: int | None, disk: Path, guest_memory: dict[str, Any] | None) -> dict[str, object]:
    """The status details this module adds; each one only when it could be measured."""
    from devenv import pidutil

    out: dict[str, object] = {}
    start = last_start(inst_dir)
    if start is not None:
        out["last_start"] = f"{start['seconds']:.1f} s ({start['kind']}, {start.get('finished', '?')})"
        out["last_start_seconds"] = start["seconds"]
        out["last_start_kind"] = start["kind"]
    rss = pidutil.rss_bytes(pid) if pid else None
    if rss is not None:
        out["host_rss"] = rss
    used = guest_used(guest_memory)
    if used is not None:
        out["guest_used"] = used
    if rss is not None:
        out["memory"] = f"{human(rss)} held on the host" + (
            f", {human(used)} used in the guest" if used is not None else ""
        )
    usage = disk_usage(disk)
    if usage is not None:
        out["disk_used"] = usage["used"]
        out["disk_virtual"] = usage["virtual"]
        out["disk_usage"] = f"{human(usage['used'])} used of {human(usage['virtual'])}"
    return out


def kind_of_start(*, resumed: bool, first: bool, attached: bool) -> str:
    if attached:
        return "attach"
    if resumed:
        return "resume"
    return "first boot" if first else "boot"


def human(n: int) -> str:
    """A measured size, to one decimal: 612.3 MiB (sizes.format_size writes configured sizes exactly)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
