"""`python -m benchmarks`: every benchmark in one run, one table, one JSON file.

Runs, each as its own process with a private DEVENV_HOME (instances made here
are deleted at the end; images come from the usual cache, so build or pull
one first):

  bench_cli_startup  the CLI's own start
  bench_start        cold start beside raw QEMU on the same disk
  bench_lifecycle    first start, cold start and resume of one instance
  bench_exec         warm exec beside OpenSSH with a ControlMaster  } one running
  bench_hostagent    engine socket and forwards beside OpenSSH/QEMU } instance
  bench_mounts       the project folder over 9p and sshfs beside the guest disk

bench_image_build (root, minutes) and bench_compare (needs a second checkout)
are run on their own. Prints the table (median, spread, the baseline from the
same run, ratio, target) with the machine, and writes the whole run to
benchmarks/results/run-DATE-COMMIT.json. Under TCG it takes 15-20 minutes.

    DEVENV_CACHE=... .venv/bin/python -m benchmarks [--rounds 3] [--skip mounts,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

HERE = Path(__file__).resolve().parent
WARM = "bench-warm"


def run(script: str, *args: str, out: Path) -> dict[str, object] | None:
    print(f"== {script} {' '.join(args)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    argv = [sys.executable, str(HERE / f"{script}.py"), *args, "--json", str(out)]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL)
    print(f"== {script}: exit {r.returncode} after {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    if not out.exists():
        return None
    data: dict[str, object] = json.loads(out.read_text())
    return data


def devenv(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "devenv", *args], capture_output=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"devenv {' '.join(args)} failed:\n{r.stderr.decode(errors='replace')}")


def commit() -> str:
    r = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="boots per figure in bench_start and bench_lifecycle")
    ap.add_argument("--skip", default="", help="comma-separated: cli_startup,start,lifecycle,exec,hostagent,mounts")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    os.environ.setdefault("DEVENV_QEMU_ACCEL", "tcg")
    os.environ["DEVENV_HOME"] = tempfile.mkdtemp(prefix="bench-home-")
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    rounds = str(args.rounds)
    results: dict[str, dict[str, object] | None] = {}

    if "cli_startup" not in skip:
        results["cli_startup"] = run("bench_cli_startup", out=work / "cli.json")
    if "start" not in skip:
        results["start"] = run("bench_start", "--rounds", rounds, out=work / "start.json")
    if "lifecycle" not in skip:
        results["lifecycle"] = run("bench_lifecycle", "--rounds", rounds, out=work / "lifecycle.json")
    if not {"exec", "hostagent"} <= skip:
        devenv("start", "-n", WARM, "--backend", "qemu")
        time.sleep(20)  # the guest's engine and timers keep its CPUs busy for a while after ready
        try:
            if "exec" not in skip:
                results["exec"] = run("bench_exec", "-n", WARM, "--runs", "40", out=work / "exec.json")
            if "hostagent" not in skip:
                results["hostagent"] = run("bench_hostagent", "-n", WARM, out=work / "hostagent.json")
        finally:
            subprocess.run([sys.executable, "-m", "devenv", "delete", "--force", "-n", WARM], capture_output=True)
    if "mounts" not in skip:
        results["mounts"] = run("bench_mounts", out=work / "mounts.json")

    figures = [
        report.Figure(**{k: v for k, v in f.items() if k != "ratio"})  # type: ignore[arg-type]
        for data in results.values()
        if data
        for f in data["figures"]  # type: ignore[attr-defined]
    ]
    machine = report.machine()
    date = time.strftime("%Y-%m-%d")
    print()
    print(
        f"{date}, devenv {commit()}: {machine['cpus']}-core {machine['arch']} ({machine['cpu']}), "
        f"{machine['os']}, Python {machine['python']}, guest accelerator {machine['accelerator']}"
    )
    print(report.table(figures))
    failed = [name for name, data in results.items() if data is None]
    if failed:
        print(f"\nno figures from: {', '.join(failed)} (see its output above)")
    args.out.mkdir(parents=True, exist_ok=True)
    dest = args.out / f"run-{date}-{commit()}.json"
    dest.write_text(json.dumps({"date": date, "commit": commit(), "machine": machine, "results": results}, indent=1))
    print(f"\nwritten: {dest}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
