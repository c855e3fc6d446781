"""Warm `devenv exec -- true` beside OpenSSH with a ControlMaster already connected, same guest.

Target (issue 4): `devenv exec` at most 0.5x the OpenSSH time. Rows, median and min of N runs:

- openssh-controlmaster: `ssh -F <(devenv ssh-config) -o ControlPath=... HOST true`
  with the master started before timing (`ssh -fN -o ControlMaster=yes`).
- hostagent-client: `python -m devenv.hostagent.client INSTANCE_DIR -- true`, i.e.
  the process the CLI fast path becomes once it calls hostagent.client.exec():
  a fresh interpreter, the stdlib-only client, fds passed to the host agent,
  which runs the command through the guest agent already running in the guest.
- devenv-py-exec: `devenv-py exec -n NAME -- true`, the Python CLI's own fast
  path (what `devenv` is where no C compiler was there at install, and on
  Windows): the console script pip wrote (pip >= 26 writes one that does not
  import re), then the client above.
- devenv-exec: `devenv exec -n NAME -- true`, the command a user types. Where
  the install built it, that is the native launcher (devenv/launcher), which
  sends the same request without starting Python. The target is judged on
  this row.

All three run with stdin from /dev/null. devenv's modules should be compiled
(ci/setup-linux.sh runs compileall: an editable install has no .pyc files, and
with PYTHONDONTWRITEBYTECODE set every call would compile them again).

Needs a running instance; `devenv start` launches its host agent if none runs.

    DEVENV_HOME=... .venv/bin/python benchmarks/bench_exec.py -n NAME [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

from devenv import hostagent, launcher, paths
from devenv.launcher import build


def timed(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        out.append((time.perf_counter() - t0) * 1000)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-300:]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--name", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/report.py's shape)")
    args = ap.parse_args()
    inst = paths.instance_dir(args.name)
    devenv = [str(Path(sys.executable).with_name("devenv"))]
    python_cli = Path(sys.executable).with_name(build.PYTHON_CLI)
    kind = launcher.installed()["kind"]
    # a running instance's start only (re)launches its host agent, with the options its driver gives it
    subprocess.run([sys.executable, "-m", "devenv", "start", "-n", args.name], check=True, capture_output=True)
    st = hostagent.state(inst)
    if st.get("state") != "connected":
        raise SystemExit(f"the host agent is not connected: {st}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    cfg = tmp / "ssh_config"
    cfg.write_text(
        subprocess.run([*devenv, "ssh-config", "-n", args.name], capture_output=True, text=True, check=True).stdout
    )
    host = f"devenv-{args.name}"
    cp = str(tmp / "cm")
    ssh = ["ssh", "-F", str(cfg), "-o", f"ControlPath={cp}"]
    subprocess.run([*ssh, "-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-fN", host], check=True)
    try:
        rows = {}
        for _ in range(2):  # interleaved rounds: the TCG guest's load drifts
            for label, argv in (
                ("openssh-controlmaster", [*ssh, host, "true"]),
                ("hostagent-client", [sys.executable, "-m", "devenv.hostagent.client", str(inst), "--", "true"]),
                *(
                    [("devenv-py-exec", [str(python_cli), "exec", "-n", args.name, "--", "true"])]
                    if kind == "native"
                    else []
                ),
                ("devenv-exec", [*devenv, "exec", "-n", args.name, "--", "true"]),
            ):
                timed(argv, 2)  # warm caches
                rows.setdefault(label, []).extend(timed(argv, args.runs))
    finally:
        subprocess.run([*ssh, "-O", "exit", host], capture_output=True)
    base = statistics.median(rows["openssh-controlmaster"])
    print(f"warm exec of `true` in {args.name} ({len(rows['openssh-controlmaster'])} runs each, ms; devenv is {kind})")
    print(f"{'path':<24}{'median':>9}{'min':>9}{'x openssh':>11}")
    for label, xs in rows.items():
        med = statistics.median(xs)
        print(f"{label:<24}{med:>9.1f}{min(xs):>9.1f}{med / base:>11.2f}")
    ratio = statistics.median(rows["devenv-exec"]) / base
    print(f"target: devenv-exec <= 0.50x openssh: {'met' if ratio <= 0.5 else 'NOT met'} ({ratio:.2f}x)")
    if args.json:
        ssh_base = {"baseline": "OpenSSH ControlMaster `ssh host true`", "baseline_median": base}
        figures = [
            report.figure(
                f"warm `devenv exec -- true` ({kind} `devenv`)",
                "ms",
                rows["devenv-exec"],
                **ssh_base,
                target="<= 0.5x",
                met=ratio <= 0.5,
            )
        ]
        if "devenv-py-exec" in rows:
            py = statistics.median(rows["devenv-py-exec"]) / base
            figures.append(
                report.figure(
                    "the same through the Python CLI (`devenv-py`)",
                    "ms",
                    rows["devenv-py-exec"],
                    **ssh_base,
                    target="<= 0.5x",
                    met=py <= 0.5,
                )
            )
        report.save(args.json, "exec", figures, rows)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
