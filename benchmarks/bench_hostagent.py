"""The host agent's forwards beside the reference paths, against the same running guest in one run.

Figures (issue 5 targets):
- `docker version` through devenv's engine socket vs through OpenSSH's own
  unix-socket forward (`ssh -N -L host.sock:/var/run/docker.sock`, as Lima and
  Colima do it): median of N runs; target within 1.2x.
- Port-forward throughput: a guest TCP server streams N MiB to the host, read
  through devenv's automatic 127.0.0.1 forward vs through a QEMU user-net
  hostfwd added here over QMP (`hostfwd_add`); target at least 50%. devenv
  hands a port that listens on every guest address to QEMU's user-mode net
  itself (what users get for docker -p and most servers); a port bound to
  the guest's loopback only goes through SSH direct-tcpip, measured too.

    DEVENV_HOME=... .venv/bin/python benchmarks/bench_hostagent.py -n NAME [--runs 15] [--mib 64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

from devenv import hostagent, paths
from devenv.backends.drivers.qmp import Qmp

GUEST_PORT = 47001  # listens on 0.0.0.0
LOOPBACK_PORT = 47002  # listens on the guest's 127.0.0.1 only
SERVER = (
    "import socket,sys\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('%s',%d));s.listen(4)\n"
    "buf=b'\\0'*262144\n"
    "while True:\n"
    "    c,_=s.accept();n=int(c.recv(32))\n"
    "    while n>0:\n"
    "        c.sendall(buf[:min(n,len(buf))]);n-=len(buf)\n"
    "    c.close()\n"
)


def docker_version(host: str, runs: int) -> list[float]:
    env = {**os.environ, "DOCKER_HOST": host}
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["docker", "version"], env=env, capture_output=True, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pull(port: int, nbytes: int) -> float:
    """MiB/s reading nbytes from the guest server through 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        t0 = time.perf_counter()
        c.sendall(str(nbytes).encode().ljust(32))
        got = 0
        while got < nbytes:
            data = c.recv(1 << 20)
            if not data:
                break
            got += len(data)
        dt = time.perf_counter() - t0
    if got < nbytes:
        raise SystemExit(f"short read through port {port}: {got} of {nbytes}")
    return nbytes / dt / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--name", required=True)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks/report.py's shape)")
    args = ap.parse_args()
    inst = paths.instance_dir(args.name)
    # a running instance's start only (re)launches its host agent, with the options its driver gives it
    subprocess.run([sys.executable, "-m", "devenv", "start", "-n", args.name], check=True, capture_output=True)
    st = hostagent.state(inst)
    if st.get("state") != "connected":
        raise SystemExit(f"the host agent is not connected: {st}")
    devenv = str(Path(sys.executable).with_name("devenv"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ha-"))
    cfg = tmp / "ssh_config"
    cfg.write_text(
        subprocess.run([devenv, "ssh-config", "-n", args.name], capture_output=True, text=True, check=True).stdout
    )
    fwd_sock = tmp / "docker.sock"
    ssh_argv = ["ssh", "-F", str(cfg), "-N", "-o", "StreamLocalBindUnlink=yes"]
    ssh = subprocess.Popen([*ssh_argv, "-L", f"{fwd_sock}:/var/run/docker.sock", f"devenv-{args.name}"])
    servers: list[subprocess.Popen[bytes]] = []
    hostfwd = free_port()
    try:
        deadline = time.monotonic() + 30
        while not fwd_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"docker version, median/min of {args.runs} runs (ms), the two paths alternating run by run")
        rows: dict[str, list[float]] = {}
        paths_ = (
            ("devenv engine socket", hostagent.docker_env(inst)["DOCKER_HOST"]),
            ("openssh -L unix forward", f"unix://{fwd_sock}"),
        )
        for _, host in paths_:
            docker_version(host, 2)  # warm-up
        for _ in range(args.runs):
            for label, host in paths_:
                rows.setdefault(label, []).extend(docker_version(host, 1))
        base = statistics.median(rows["openssh -L unix forward"])
        for label, xs in rows.items():
            print(f"  {label:<26}{statistics.median(xs):>8.1f}{min(xs):>8.1f}  {statistics.median(xs) / base:.2f}x")

        # The guest server starts only now: its start-up would load the guest during the timings above.
        servers = [
            subprocess.Popen(
                [devenv, "exec", "-n", args.name, "-w", "/", "--", "python3", "-c", SERVER % (addr, port)],
                stdout=subprocess.DEVNULL,
            )
            for addr, port in (("0.0.0.0", GUEST_PORT), ("127.0.0.1", LOOPBACK_PORT))
        ]
        with Qmp(inst / paths.QMP_SOCK) as q:
            q.command(
                "human-monitor-command", **{"command-line": f"hostfwd_add net0 tcp:127.0.0.1:{hostfwd}-:{GUEST_PORT}"}
            )
        deadline = time.monotonic() + 30
        via: dict[int, str] = {}
        while time.monotonic() < deadline and len(via) < 2:
            via = {
                f["host_port"]: f.get("via", "ssh")
                for f in hostagent.state(inst)["forwards"]
                if f["host_port"] in (GUEST_PORT, LOOPBACK_PORT)
            }
            time.sleep(0.2)
        nbytes = args.mib * 2**20
        speeds: dict[str, list[float]] = {}
        runs = (
            (f"devenv forward (via {via.get(GUEST_PORT)})", GUEST_PORT),
            (f"devenv forward (via {via.get(LOOPBACK_PORT)})", LOOPBACK_PORT),
            ("qemu hostfwd", hostfwd),
        )
        for _ in range(3):
            for label, port in runs:
                speeds.setdefault(label, []).append(pull(port, nbytes))
        print(f"port-forward throughput, guest -> host, {args.mib} MiB, best of 3 (MiB/s)")
        ref = max(speeds["qemu hostfwd"])
        for label, xs in speeds.items():
            print(f"  {label:<26}{max(xs):>8.1f}  {max(xs) / ref:.2f}x")
        if args.json:
            sock = rows["devenv engine socket"]
            ratio = statistics.median(sock) / base
            hostfwd_median = statistics.median(speeds["qemu hostfwd"])
            figures = [
                report.figure(
                    "host `docker version` through the engine socket",
                    "ms",
                    sock,
                    baseline="OpenSSH `-L` forward of the socket",
                    baseline_median=base,
                    target="<= 1.2x",
                    met=ratio <= 1.2,
                )
            ]
            for (label, port), kind in zip(
                runs[:2], ("a port on every guest address", "a loopback-only port"), strict=True
            ):
                xs = speeds[label]
                figures.append(
                    report.figure(
                        f"forward throughput, {kind} (via {via.get(port)}), {args.mib} MiB",
                        "MiB/s",
                        xs,
                        baseline="QEMU hostfwd",
                        baseline_median=hostfwd_median,
                        target=">= 0.5x",
                        met=statistics.median(xs) >= 0.5 * hostfwd_median,
                    )
                )
            report.save(args.json, "hostagent", figures, {"docker_version_ms": rows, "throughput_mib_s": speeds})
    finally:
        with contextlib.suppress(Exception), Qmp(inst / paths.QMP_SOCK) as q:
            q.command("human-monitor-command", **{"command-line": f"hostfwd_remove net0 tcp:127.0.0.1:{hostfwd}"})
        for p in [*servers, ssh]:
            p.terminate()
        for p in [*servers, ssh]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        subprocess.run(
            [devenv, "exec", "-n", args.name, "-w", "/", "--", "pkill", "-f", "s.listen\\(4\\)"],
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
