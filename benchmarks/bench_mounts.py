"""Mount speed: 9p and reverse sshfs side by side with the guest's own disk.

For each mount type a VM is created from a throwaway project folder (which
devenv mounts at the same path), then inside the guest:
- write: 64 MiB with dd (conv=fsync) into the folder,
- read: the same file back after dropping the guest's page cache,
- walk: `find` over 2,000 small files in 100 folders made on the host,
and the same on the guest's local disk (/var/tmp) as the baseline.

    .venv/bin/python benchmarks/bench_mounts.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

SIZE_MIB = 64

SCRIPT = r"""
set -e
d="$1"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(ms); dd if=/dev/zero of="$d/bench.bin" bs=1M count={size} conv=fsync status=none; t1=$(ms)
sudo -n sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'
t2=$(ms); cat "$d/bench.bin" > /dev/null; t3=$(ms)
t4=$(ms); n=$(find "$d/tree" | wc -l); t5=$(ms)
rm -f "$d/bench.bin"
echo "$((t1 - t0)) $((t3 - t2)) $((t5 - t4)) $n"
""".replace("{size}", str(SIZE_MIB))


def devenv(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"devenv {' '.join(args)} failed:\n{r.stderr}")
    return r


def make_tree(root: Path) -> None:
    for i in range(100):
        sub = root / "tree" / f"d{i:03d}"
        sub.mkdir(parents=True)
        for j in range(20):
            (sub / f"f{j:02d}.txt").write_text(f"{i} {j}\n")


def measure(name: str, folder: str, cwd: Path, env: dict[str, str]) -> tuple[float, float, float, int]:
    r = devenv("exec", "-n", name, "-w", "/", "--", "sh", "-c", SCRIPT, "bench", folder, cwd=cwd, env=env)
    w, rd, walk, n = (int(x) for x in r.stdout.split())
    return SIZE_MIB / (w / 1000), SIZE_MIB / (rd / 1000), walk / 1000, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/report.py's shape)")
    args = ap.parse_args()
    env = {**os.environ}
    env.setdefault("DEVENV_QEMU_ACCEL", "tcg")
    base = Path(tempfile.mkdtemp(prefix="bench-mounts-"))
    rows: list[tuple[str, tuple[float, float, float, int]]] = []
    try:
        for kind in ("9p", "sshfs"):
            project = base / kind
            project.mkdir()
            os.chmod(project, 0o777)  # so the guest user may write whatever uid it shows
            make_tree(project)
            (project / "devenv.toml").write_text(f'name = "bench-mnt-{kind}"\nbackend = "qemu"\n')
            kenv = {**env, "DEVENV_MOUNT_TYPE": kind}
            name = f"bench-mnt-{kind}"
            try:
                devenv("start", cwd=project, env=kenv)
                st = devenv("status", "--json", cwd=project, env=kenv).stdout
                if f"{kind}, mounted" not in st:
                    raise SystemExit(f"{kind}: the project folder is not mounted with {kind}:\n{st}")
                rows.append((kind, measure(name, str(project), project, kenv)))
                if kind == "9p":
                    devenv(
                        "exec", "-n", name, "-w", "/", "--", "sh", "-c", f"cp -r {project}/tree /var/tmp/",
                        cwd=project, env=kenv,
                    )  # fmt: skip
                    rows.append(("guest disk", measure(name, "/var/tmp", project, kenv)))
            finally:
                subprocess.run(
                    [sys.executable, "-m", "devenv", "delete", "--force", "-n", name],
                    cwd=project, env=kenv, capture_output=True, check=False,
                )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, {env['DEVENV_QEMU_ACCEL']}")
    print(f"{'mount':<12} {'write MiB/s':>12} {'read MiB/s':>11} {'find 2k files s':>16}")
    for kind, (w, rd, walk, n) in rows:
        print(f"{kind:<12} {w:>12.1f} {rd:>11.1f} {walk:>16.2f}  ({n} entries)")
    if args.json:
        by = dict(rows)
        disk = by["guest disk"]
        figures = []
        for kind in ("9p", "sshfs"):
            if kind not in by:
                continue
            for i, (what, unit) in enumerate(((f"write {SIZE_MIB} MiB", "MiB/s"), (f"read {SIZE_MIB} MiB", "MiB/s"))):
                figures.append(
                    report.figure(f"project mount ({kind}): {what}", unit, [by[kind][i]], baseline="guest disk",
                                  baseline_median=disk[i])
                )  # fmt: skip
            figures.append(
                report.figure(f"project mount ({kind}): `find` over 2,000 files", "s", [by[kind][2]],
                              baseline="guest disk", baseline_median=disk[2])
            )  # fmt: skip
        report.save(args.json, "mounts", figures, {k: list(v) for k, v in rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
