"""Image build figures: build time (cold and cached), image size, and optionally boot time.

    .venv/bin/python benchmarks/bench_image_build.py            # cached build + sizes
    .venv/bin/python benchmarks/bench_image_build.py --cold     # rebuild from the mirror (root, ~2 min)
    .venv/bin/python benchmarks/bench_image_build.py --boot     # also boot it under TCG to a login prompt

Boot: direct kernel boot of a fresh overlay on the built base, q35, virtio disk
and NIC, serial to a file, no cloud-init seed (cloud-init falls back to its
None datasource, so this is first-boot work minus the user's seed). The times
are wall-clock from starting QEMU to the first line matching each milestone.
Peers for comparison (MACHINE-NOTES): a stock debootstrap image reached SSH in
32 s under TCG; with a NoCloud seed ~70 s on first boot.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devenv.images import build, cache, overlay

MILESTONES = {
    "kernel: init runs": re.compile(r"Run /init as init process|Freeing unused kernel image"),
    "userspace: systemd starts": re.compile(r"systemd\[1\]: systemd \d+|Welcome to"),
    "filesystem resized (cloud-init)": re.compile(r"EXT4-fs \(vd[a-z]\): resized filesystem"),
    "sshd started": re.compile(r"Started .*ssh\.service|Started ssh\.service"),
    "multi-user.target": re.compile(r"Reached target .*multi-user\.target"),
    "login prompt": re.compile(r"login: "),
}


def row(label: str, value: str) -> None:
    print(f"| {label:<38} | {value:>22} |")


def mib(n: int) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def boot(record: cache.ImageRecord, timeout: float, accel: str) -> dict[str, float]:
    assert record.kernel is not None and record.initrd is not None
    cmdline = record.cmdline.replace(" quiet", "")  # milestones are read from the console
    with tempfile.TemporaryDirectory(prefix="devenv-bench-") as tmp:
        disk = overlay.create_overlay(record.disk, Path(tmp) / "disk.qcow2", 10 * 1024**3)
        serial = Path(tmp) / "serial.log"
        argv = [
            "qemu-system-x86_64", "-accel", accel, "-M", "q35", "-cpu", "max", "-smp", "2", "-m", "1024",
            "-kernel", str(record.kernel), "-initrd", str(record.initrd), "-append", cmdline,
            "-drive", f"file={disk},if=virtio,format=qcow2", "-nic", "user,model=virtio-net-pci",
            "-display", "none", "-monitor", "none", "-serial", f"file:{serial}",
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        found: dict[str, float] = {}
        try:
            while time.monotonic() - started < timeout and len(found) < len(MILESTONES):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise SystemExit(f"qemu exited with {proc.returncode}: {err}")
                text = serial.read_text(errors="replace") if serial.exists() else ""
                now = time.monotonic() - started
                for name, pattern in MILESTONES.items():
                    if name not in found and pattern.search(text):
                        found[name] = now
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        if os.environ.get("BENCH_KEEP_SERIAL"):
            Path(os.environ["BENCH_KEEP_SERIAL"]).write_text(serial.read_text(errors="replace"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="rebuild even if cached (needs root)")
    parser.add_argument("--boot", action="store_true", help="boot the image under QEMU to a login prompt")
    parser.add_argument("--accel", default=os.environ.get("DEVENV_QEMU_ACCEL", "tcg"))
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    steps: list[tuple[float, str]] = []
    started = time.monotonic()
    record = build.build("debian-12", force=args.cold, progress=lambda s: steps.append((time.monotonic(), s)))
    elapsed = time.monotonic() - started
    meta = cache.read_json(record.disk.parent / "build.json") or {}
    seconds = meta.get("seconds", {})

    print(f"| {'debian-12 image (' + record.arch + ')':<38} | {'value':>22} |")
    print(f"|{'-' * 40}|{'-' * 24}|")
    row("this run: build() wall time", f"{elapsed:.2f} s" + (" (cold)" if args.cold else " (cache hit)"))
    if seconds:
        row("recorded cold build: total", f"{seconds.get('total', 0):.1f} s")
        row("  debootstrap + engines + configure", f"{seconds.get('rootfs', 0):.1f} s")
        row("  mkfs.ext4 -d + qemu-img convert", f"{seconds.get('disk', 0):.1f} s")
    row("disk.qcow2 on host (compressed)", mib(record.size))
    row("disk virtual size", mib(int(meta.get("virtual_size", overlay.read_header(record.disk).virtual_size))))
    if record.kernel and record.initrd:
        row("vmlinuz", mib(record.kernel.stat().st_size))
        row("initrd.img", mib(record.initrd.stat().st_size))
    row("files in image", f"{meta.get('files', '?')}")
    if args.cold and len(steps) > 1:
        for (t0, name), (t1, _) in itertools.pairwise(steps):
            row(f"  step: {name[:30]}", f"{t1 - t0:.1f} s")
    if args.boot:
        found = boot(record, args.timeout, args.accel)
        for name in MILESTONES:
            row(f"boot ({args.accel}): {name}", f"{found[name]:.1f} s" if name in found else "not seen")
    print(json.dumps({"build_seconds": round(elapsed, 2), "size": record.size, "cold": args.cold}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
