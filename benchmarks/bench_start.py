"""Start-to-ready: `devenv start` against raw QEMU + wait-for-SSH on the same disk.

Both boot the same provisioned instance disk with the same QEMU command line
(the one devenv recorded in qemu.argv), alternately, N rounds each; odd rounds
boot raw first and even rounds devenv first, so neither always follows the
other's teardown:

- raw:    QEMU on a throwaway overlay of the instance disk, then poll the SSH
          port every 0.2 s and log in once with OpenSSH (`ssh true`): the least
          a hand-written script could do to know the guest is usable.
- devenv: `devenv start` on the stopped instance, which also checks the guest
          agent and the engine socket.
- libvirt: (when libvirt-python and virsh are here, or `--libvirt on`) the same
          `devenv start` of a second instance, made from the same image with
          backend = "libvirt" on qemu:///session: the domain libvirt runs
          against the QEMU driver's process of devenv's own.

Each round boots every kind once, in an order that rotates each round.
Targets: devenv within 1.1x of raw (issue 4); libvirt within 1.15x of the
QEMU driver (issue 23).

    .venv/bin/python benchmarks/bench_start.py [--rounds 2] [--name bench-start] [--libvirt auto|on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

TARGET = 1.1
LIBVIRT_TARGET = 1.15  # the libvirt driver's start over the QEMU driver's
LIBVIRT_URI = "qemu:///session"


def devenv(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ}
    env.setdefault("LIBVIRT_DEFAULT_URI", LIBVIRT_URI)  # read by a libvirt instance only
    r = subprocess.run([sys.executable, "-m", "devenv", *args], capture_output=True, check=False, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"devenv {' '.join(args)} failed:\n{r.stderr.decode(errors='replace')}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def raw_boot(inst_dir: Path, ssh_config: str, name: str) -> float:
    argv: list[str] = json.loads((inst_dir / "qemu.argv").read_text())
    work = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    try:
        overlay = work / "raw.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(inst_dir / "disk.qcow2"), overlay],
            check=True,
        )
        port = free_port()
        old_port = next(a.split("127.0.0.1:")[1].split("-")[0] for a in argv if "hostfwd=tcp:127.0.0.1:" in a)
        mapping = {
            str(inst_dir / "disk.qcow2"): str(overlay),
            f"127.0.0.1:{old_port}-:22": f"127.0.0.1:{port}-:22",
            str(inst_dir / "serial.log"): str(work / "serial.log"),
            str(inst_dir / "qmp.sock"): str(work / "qmp.sock"),
            str(inst_dir / "qemu.pid"): str(work / "qemu.pid"),
        }
        raw_argv = []
        for a in argv:
            for old, new in mapping.items():
                a = a.replace(old, new)
            raw_argv.append(a)
        cfg = work / "ssh_config"
        cfg.write_text(re.sub(r"(?m)^(\s*Port) \d+$", rf"\g<1> {port}", ssh_config))
        t0 = time.perf_counter()
        quiet = subprocess.DEVNULL
        proc = subprocess.Popen(raw_argv, stdin=quiet, stdout=quiet, stderr=quiet)
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit("raw QEMU exited early")
                if time.perf_counter() - t0 > 600:
                    raise SystemExit(f"raw QEMU: no SSH login within 600 s (see {work / 'serial.log'})")
                if banner(port):
                    login = ["ssh", "-F", str(cfg), f"devenv-{name}", "true"]
                    r = subprocess.run(login, capture_output=True, check=False)
                    if r.returncode == 0:
                        break
                time.sleep(0.2)
            return time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def devenv_boot(name: str) -> float:
    t0 = time.perf_counter()
    devenv("start", "-n", name)
    took = time.perf_counter() - t0
    devenv("stop", "-n", name, "--shutdown")  # a cold start each round, not a resume
    return took


def libvirt_here() -> str | None:
    """None when this host can run the libvirt driver, else what it lacks."""
    import importlib.util

    if importlib.util.find_spec("libvirt") is None:
        return "libvirt-python is not installed (pip install 'devenv[libvirt]')"
    if shutil.which("virsh") is None:
        return "virsh is not installed (libvirt-clients)"
    return None


def provisioned(name: str, backend: str) -> None:
    """The instance made and provisioned once (its first boot is not measured), then stopped."""
    if devenv("status", "-n", name, check=False).returncode != 0:
        print(f"creating and provisioning instance {name} ({backend}; first boot, not measured)", file=sys.stderr)
        devenv("start", "-n", name, "--backend", backend)
    devenv("stop", "-n", name, "--shutdown")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="bench-start")
    ap.add_argument("--libvirt", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the instances afterwards")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/report.py's shape)")
    args = ap.parse_args()
    os.environ.setdefault("DEVENV_QEMU_ACCEL", "tcg")
    lacking = libvirt_here() if args.libvirt != "off" else "--libvirt off"
    if lacking and args.libvirt == "on":
        raise SystemExit(f"--libvirt on: {lacking}")
    if lacking:
        print(f"libvirt left out: {lacking}", file=sys.stderr)
    lv_name = f"{args.name}-lv"

    provisioned(args.name, "qemu")
    if not lacking:
        provisioned(lv_name, "libvirt")
    from devenv import paths

    inst_dir = paths.instance_dir(args.name)
    ssh_config = devenv("ssh-config", "-n", args.name).stdout.decode()

    raw: list[float] = []
    ours: list[float] = []
    lv: list[float] = []
    try:
        boots = {
            "raw": lambda: raw.append(raw_boot(inst_dir, ssh_config, args.name)),
            "devenv": lambda: ours.append(devenv_boot(args.name)),
        }
        if not lacking:
            boots["libvirt"] = lambda: lv.append(devenv_boot(lv_name))
        kinds = list(boots)
        for i in range(args.rounds):
            order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
            for kind in order:
                boots[kind]()
            line = f"round {i + 1} ({order[0]} first): raw {raw[-1]:.1f} s, devenv {ours[-1]:.1f} s"
            if lv:
                line += f", libvirt {lv[-1]:.1f} s"
            print(f"{line}, ratio {ours[-1] / raw[-1]:.2f}", file=sys.stderr)
    finally:
        if not args.keep:
            devenv("delete", "--force", "-n", args.name, check=False)
            devenv("delete", "--force", "-n", lv_name, check=False)

    r, o = statistics.median(raw), statistics.median(ours)
    accel = os.environ["DEVENV_QEMU_ACCEL"]
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, accelerator {accel}")
    print(f"{'start to ready (median of ' + str(args.rounds) + ')':<40} {'seconds':>8}")
    print(f"{'raw qemu + wait for ssh login':<40} {r:>8.1f}")
    print(f"{'devenv start':<40} {o:>8.1f}")
    ratio = o / r
    print(f"{'ratio devenv / raw':<40} {ratio:>8.2f}  target <= {TARGET} {'ok' if ratio <= TARGET else 'MISSED'}")
    per_round = statistics.median(a / b for a, b in zip(ours, raw, strict=True))
    print(f"{'median of the per-round ratios':<40} {per_round:>8.2f}")
    figures = [
        report.figure(
            "cold start to ready, a stopped instance",
            "s",
            ours,
            baseline="raw QEMU, same command line and disk, to the first OpenSSH login",
            baseline_median=r,
            target=f"<= {TARGET}x",
            met=ratio <= TARGET,
        )
    ]
    if lv:
        v = statistics.median(lv)
        lv_ratio = v / o
        print(f"{'devenv start, libvirt driver':<40} {v:>8.1f}")
        print(
            f"{'ratio libvirt / qemu driver':<40} {lv_ratio:>8.2f}  target <= {LIBVIRT_TARGET} "
            f"{'ok' if lv_ratio <= LIBVIRT_TARGET else 'MISSED'}"
        )
        figures.append(
            report.figure(
                f"cold start to ready, libvirt driver ({LIBVIRT_URI})",
                "s",
                lv,
                baseline="the QEMU driver's cold start, same image, same run",
                baseline_median=o,
                target=f"<= {LIBVIRT_TARGET}x",
                met=lv_ratio <= LIBVIRT_TARGET,
            )
        )
    if args.json:
        report.save(args.json, "start", figures, {"raw": raw, "devenv": ours, "libvirt": lv})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
