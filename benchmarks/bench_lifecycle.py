"""First start, later cold start and resume of one instance, each beside the others, in one run.

Each round, on one new instance:

- first:  `devenv start` of a new instance (create, first boot with its
          provisioning) until ready.
- cold:   `devenv stop --shutdown`, then `devenv start` until ready: a full
          boot of the provisioned disk.
- resume: a file written to the guest's /dev/shm (RAM only: a boot would lose
          it), `devenv stop --suspend`, then the time from `devenv start` to a
          `devenv exec -- cat` of that file printing it back. After the timing,
          the host's `docker version` through the instance's engine socket
          must answer (the forward came back).

In the first round, 60 s after the cold start, `devenv status --json` gives
QEMU's resident memory on the host and the memory the guest uses: idle, the
first should exceed the second by at most 300 MiB.

Then the instance is deleted. Targets (the lightweight-VM issue): first <=
1.2x cold; resume under 2 s and <= 0.05x cold; idle overhead <= 300 MiB.

    DEVENV_CACHE=... .venv/bin/python benchmarks/bench_lifecycle.py [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

FIRST_OVER_COLD = 1.2
RESUME_OVER_COLD = 0.05
RESUME_UNDER_S = 2.0
IDLE_OVERHEAD_MIB = 300
MIB = 1024**2


def devenv(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run([sys.executable, "-m", "devenv", *args], capture_output=True, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise SystemExit(f"devenv {' '.join(args)} failed (exit {r.returncode}):\n{r.stderr.decode(errors='replace')}")
    return r


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    devenv(*args)
    return time.perf_counter() - t0


def one_round(name: str, image: str, idle: list[tuple[int, int]]) -> tuple[float, float, float]:
    devenv("delete", "--force", "-n", name, check=False)
    first = timed("start", "-n", name, "--backend", "qemu", "--image", image)
    devenv("stop", "-n", name, "--shutdown")
    cold = timed("start", "-n", name)
    if not idle:
        time.sleep(60)
        figures = json.loads(devenv("status", "-n", name, "--json").stdout)["figures"]
        idle.append((int(figures["host_rss"]), int(figures["guest_used"])))
    token = secrets.token_hex(8)
    devenv("exec", "-n", name, "--", "sh", "-c", f"echo {token} > /dev/shm/bench-resume")
    devenv("stop", "-n", name, "--suspend")
    t0 = time.perf_counter()
    devenv("start", "-n", name)
    back = devenv("exec", "-n", name, "--", "cat", "/dev/shm/bench-resume").stdout.decode().strip()
    resume = time.perf_counter() - t0
    if back != token:
        raise SystemExit(f"after the resume /dev/shm/bench-resume holds {back!r}, not {token!r}: that was a boot")
    env_lines = devenv("docker-env", "-n", name).stdout.decode().splitlines()
    sock = next((line.split("=", 1)[1].strip("'\"") for line in env_lines if "DOCKER_HOST=" in line), "")
    ver = subprocess.run(["docker", "-H", sock, "version", "--format", "{{.Server.Version}}"], capture_output=True)
    if ver.returncode != 0:
        raise SystemExit(f"after the resume the engine socket does not answer: {ver.stderr.decode(errors='replace')}")
    devenv("delete", "--force", "-n", name)
    return first, cold, resume


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--image", default="debian-12")
    ap.add_argument("--name", default="bench-life")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/report.py's shape)")
    args = ap.parse_args()
    os.environ.setdefault("DEVENV_QEMU_ACCEL", "tcg")
    home = os.environ.get("DEVENV_HOME") or tempfile.mkdtemp(prefix="bench-life-")
    os.environ["DEVENV_HOME"] = home

    firsts: list[float] = []
    colds: list[float] = []
    resumes: list[float] = []
    idle: list[tuple[int, int]] = []
    for i in range(args.rounds):
        first, cold, resume = one_round(args.name, args.image, idle)
        firsts.append(first)
        colds.append(cold)
        resumes.append(resume)
        print(f"round {i + 1}: first {first:.1f} s, cold {cold:.1f} s, resume {resume:.2f} s", file=sys.stderr)

    cold_f = report.figure("cold start to ready (`stop --shutdown`, `start`)", "s", colds)
    c = cold_f.median
    first_f = report.figure(
        "first start of a new instance to ready",
        "s",
        firsts,
        baseline="cold start",
        baseline_median=c,
        target=f"<= {FIRST_OVER_COLD}x",
        met=statistics.median(firsts) <= FIRST_OVER_COLD * c,
    )
    r = statistics.median(resumes)
    resume_f = report.figure(
        "resume: `start` of a suspended instance to a working `exec` (/dev/shm kept)",
        "s",
        resumes,
        baseline="cold start",
        baseline_median=c,
        target=f"< {RESUME_UNDER_S:.0f} s and <= {RESUME_OVER_COLD}x",
        met=r < RESUME_UNDER_S and r <= RESUME_OVER_COLD * c,
    )
    rss, used = idle[0]
    idle_f = report.figure(
        "QEMU's RSS on the host 60 s after a cold start",
        "MiB",
        [rss / MIB],
        baseline="memory the guest uses",
        baseline_median=used / MIB,
        target=f"<= guest + {IDLE_OVERHEAD_MIB} MiB",
        met=rss - used <= IDLE_OVERHEAD_MIB * MIB,
    )
    figures = [first_f, cold_f, resume_f, idle_f]
    print(report.table(figures))
    if args.json:
        raw = {"first": firsts, "cold": colds, "resume": resumes, "idle_rss_guest_used": idle}
        report.save(args.json, "lifecycle", figures, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
