"""This tree's start-to-ready and warm exec side by side with another checkout of devenv (a parent commit, say).

A refactor must not cost speed: each side gets its own DEVENV_HOME and its own
instance on the same cached image, made and provisioned by that side's own
devenv (first boot, not measured). Then, alternating which side goes first:

- start: `devenv start` of the stopped instance until it is ready, then stop;
  only one VM runs at a time.
- exec:  with that side's VM running and settled (--settle s after start: the
  guest's engine and timers keep its CPUs busy for a while after ready), warm
  `devenv exec -- true` through that side's own `devenv` (the native launcher
  where it was built), R runs.

Both sides run the same QEMU (tcg unless DEVENV_QEMU_ACCEL says otherwise).
Prints medians, this tree's figure over the other's, and writes the raw times
to benchmarks/results/compare-DATE.json.

    .venv/bin/python benchmarks/bench_compare.py --base /path/to/other/checkout [--rounds 3] [--runs 60]

The other checkout needs a venv of its own with devenv installed (`python -m
venv .venv && .venv/bin/pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
NAME = "cmp"


class Side:
    def __init__(self, label: str, root: Path, home: Path) -> None:
        self.label = label
        self.root = root
        self.bin = root / ".venv" / "bin"
        self.env = {**os.environ, "DEVENV_HOME": str(home)}
        self.env.setdefault("DEVENV_QEMU_ACCEL", "tcg")
        self.env.pop("DEVENV_INSTANCE", None)

    def devenv(self, *args: str, launcher: bool = False) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self.bin / "devenv"), *args] if launcher else [str(self.bin / "python"), "-m", "devenv", *args]
        r = subprocess.run(argv, capture_output=True, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SystemExit(f"{self.label}: devenv {' '.join(args)} failed:\n{r.stderr.decode(errors='replace')}")
        return r

    def power_off(self) -> None:
        """A cold start is what is compared: a plain `stop` suspends where the side can."""
        argv = [str(self.bin / "python"), "-m", "devenv", "stop", "-n", NAME, "--shutdown"]
        r = subprocess.run(argv, capture_output=True, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL)
        if r.returncode in (2, 64):  # a usage error: a side older than --shutdown, whose plain stop powers off
            self.devenv("stop", "-n", NAME)
        elif r.returncode != 0:
            raise SystemExit(f"{self.label}: devenv stop failed:\n{r.stderr.decode(errors='replace')}")

    def commit(self) -> str:
        out = subprocess.run(["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"], capture_output=True)
        return out.stdout.decode().strip()

    def timed_start(self) -> float:
        t0 = time.perf_counter()
        self.devenv("start", "-n", NAME)
        return time.perf_counter() - t0

    def exec_times(self, runs: int) -> list[float]:
        argv = [str(self.bin / "devenv"), "exec", "-n", NAME, "--", "true"]
        times = []
        for i in range(runs + 3):
            t0 = time.perf_counter()
            r = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True)
            took = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                raise SystemExit(f"{self.label}: exec failed: {r.stderr.decode(errors='replace')}")
            if i >= 3:  # the first runs warm the page cache
                times.append(took)
        return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the other checkout, with its own .venv")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--settle", type=float, default=20.0, help="seconds between ready and the exec runs")
    ap.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    sides = [Side("this", HERE, tmp / "this"), Side("base", args.base.resolve(), tmp / "base")]
    starts: dict[str, list[float]] = {s.label: [] for s in sides}
    execs: dict[str, list[float]] = {s.label: [] for s in sides}
    try:
        for s in sides:
            print(f"{s.label} ({s.commit()}): creating and provisioning `{NAME}` (not measured)", file=sys.stderr)
            s.devenv("start", "-n", NAME, "--backend", "qemu")
            s.power_off()
        for i in range(args.rounds):
            for s in sides if i % 2 == 0 else sides[::-1]:
                starts[s.label].append(s.timed_start())
                time.sleep(args.settle)
                execs[s.label].extend(s.exec_times(args.runs))
                s.power_off()
                print(
                    f"round {i + 1} {s.label}: start {starts[s.label][-1]:.1f} s,"
                    f" exec median {statistics.median(execs[s.label][-args.runs :]):.1f} ms",
                    file=sys.stderr,
                )
    finally:
        for s in sides:
            subprocess.run(
                [str(s.bin / "python"), "-m", "devenv", "delete", "--force", "-n", NAME],
                env=s.env,
                capture_output=True,
                cwd=s.root,
            )
        shutil.rmtree(tmp, ignore_errors=True)

    accel = sides[0].env["DEVENV_QEMU_ACCEL"]
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, accelerator {accel}")
    print(f"{'':<34}{'this ' + sides[0].commit():>14}{'base ' + sides[1].commit():>14}{'this/base':>11}")
    rows = {}
    for label, data, unit in (("start to ready (s)", starts, "s"), ("warm exec -- true (ms)", execs, "ms")):
        this, base = statistics.median(data["this"]), statistics.median(data["base"])
        rows[label] = {"this": this, "base": base, "ratio": this / base, "unit": unit}
        print(f"{label:<34}{this:>14.1f}{base:>14.1f}{this / base:>11.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"node": platform.node(), "arch": platform.machine(), "cpus": os.cpu_count(), "accel": accel},
        "this": sides[0].commit(),
        "base": sides[1].commit(),
        "rounds": args.rounds,
        "runs": args.runs,
        "settle": args.settle,
        "medians": rows,
        "start_seconds": starts,
        "exec_ms": execs,
    }
    path = args.out / f"compare-{record['date'][:10]}-{record['this']}-{record['base']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raw times: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
