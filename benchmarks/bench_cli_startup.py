"""How long hot CLI commands take, end to end, as a user's shell would run them.

Figures: `devenv --version` and `devenv list` with 20 instances, median of N
runs, beside a bare interpreter start for scale. Target (issue 2): both under
120 ms median on the CI machine.

    .venv/bin/python benchmarks/bench_cli_startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

TARGET_MS = 120.0


def devenv_argv() -> list[str]:
    script = Path(sys.executable).with_name("devenv")
    return [str(script)] if script.exists() else [sys.executable, "-m", "devenv"]


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def make_instances(home: Path, count: int, backend: str) -> None:
    for i in range(count):
        d = home / "instances" / f"bench{i:02d}"
        d.mkdir(parents=True, mode=0o700)
        (d / "devenv.toml").write_text(f'name = "bench{i:02d}"\nbackend = "{backend}"\ncpus = 2\nmemory = "2GiB"\n')
        if i % 2:
            (d / "started").touch()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--backend", default="native")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/report.py's shape)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="devenv-bench-"))
    try:
        make_instances(home, args.instances, args.backend)
        env = {**os.environ, "DEVENV_HOME": str(home)}
        cli = devenv_argv()
        rows = [
            ("python3 -c pass (baseline)", timed([sys.executable, "-c", "pass"], env, args.runs), None),
            ("devenv --version", timed([*cli, "--version"], env, args.runs), TARGET_MS),
            (f"devenv list ({args.instances} instances)", timed([*cli, "list"], env, args.runs), TARGET_MS),
            (f"devenv list --json ({args.instances})", timed([*cli, "list", "--json"], env, args.runs), TARGET_MS),
            ("devenv status (typer path)", timed([*cli, "status", "-n", "bench00"], env, args.runs), None),
        ]
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"{'command':<36} {'median ms':>10} {'p90 ms':>8}  target")
    failed = False
    for name, samples, target in rows:
        med = statistics.median(samples)
        p90 = sorted(samples)[int(len(samples) * 0.9) - 1]
        verdict = ""
        if target is not None:
            ok = med < target
            failed |= not ok
            verdict = f"< {target:.0f} ms {'ok' if ok else 'MISSED'}"
        print(f"{name:<36} {med:>10.1f} {p90:>8.1f}  {verdict}")
    if args.json:
        base = rows[0][1]
        baseline = {"baseline": "`python3 -c pass`", "baseline_median": statistics.median(base)}
        figures = []
        for name, samples, target in rows[1:]:
            if target is None:
                figures.append(report.figure(name, "ms", samples))
                continue
            met = statistics.median(samples) < target
            figures.append(report.figure(name, "ms", samples, **baseline, target=f"< {target:.0f} ms", met=met))
        report.save(args.json, "cli_startup", figures, {name: samples for name, samples, _ in rows})
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
