#!/usr/bin/env python3
"""A stand-in wsl.exe for Linux: tests put it on PATH as `wsl.exe` to run the WSL2 driver for real without Windows.

What it replaces is only the Windows program. Its own messages are the
recorded ones (tests/fixtures/wsl, sources in index.json), written as
wsl.exe writes them: UTF-16LE unless WSL_UTF8=1 (or always, with
WSL_STAND_IN_IGNORE_UTF8=1, as an inbox wsl.exe does), and its failures
exit with -1, which a POSIX exit status shows as 255. The distros are real:

  --import NAME DIR TAR --version 2   unpacks TAR into DIR/rootfs (numeric owners)
  --list --verbose | --quiet [--running]
  --terminate NAME                    kills the distro's container at once, as WSL does
  --unregister NAME                   terminates it and deletes DIR/rootfs
  -d/--distribution NAME [-u/--user U] [--cd DIR] (--exec|-e|--) CMD...
                                      runs CMD in the distro, starting it first: a
                                      systemd-nspawn container of DIR/rootfs that boots
                                      systemd when its /etc/wsl.conf says systemd=true,
                                      on a network of its own whose listening ports this
                                      host's 127.0.0.1 reaches (socat), as WSL2's localhost
                                      forwarding does, and where an engine runs containers
                                      (writable cgroups, keyctl allowed), as in WSL2's VM

State lives in $WSL_STAND_IN_STATE (distros.json). Needs root, systemd-nspawn, nsenter and socat.
Not a WSL: no /mnt/c, no interop, no kernel of its own (the host's).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import IO

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "wsl"
STATE = Path(os.environ.get("WSL_STAND_IN_STATE", "/nonexistent"))
EXIT_FAILED = 255  # wsl.exe's -1 as a POSIX exit status
NSPAWN = os.environ.get("WSL_STAND_IN_NSPAWN", "systemd-nspawn")
BOOT_WAIT = 60.0


def recorded_text(name: str) -> str:
    """A fixture's text (it is replayed in the encoding this call asks for, as the real program would write it)."""
    data = (FIXTURES / name).read_bytes()
    if name.endswith(".utf16"):
        return data.removeprefix(b"\xff\xfe").decode("utf-16-le")
    return data.decode()


def say(text: str) -> None:
    utf8 = os.environ.get("WSL_UTF8") == "1" and os.environ.get("WSL_STAND_IN_IGNORE_UTF8") != "1"
    sys.stdout.buffer.write(text.encode("utf-8" if utf8 else "utf-16-le"))
    sys.stdout.buffer.flush()


def fail(text: str) -> int:
    say(text)
    return EXIT_FAILED


# -- state -------------------------------------------------------------------------------


@contextlib.contextmanager
def locked():  # type: ignore[no-untyped-def]
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load() -> dict[str, dict[str, object]]:
    try:
        data: dict[str, dict[str, object]] = json.loads((STATE / "distros.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def save(distros: dict[str, dict[str, object]]) -> None:
    tmp = STATE / "distros.json.new"
    tmp.write_text(json.dumps(distros, indent=1))
    os.replace(tmp, STATE / "distros.json")


def find(distros: dict[str, dict[str, object]], name: str) -> str | None:
    """WSL's names ignore case."""
    return next((n for n in distros if n.lower() == name.lower()), None)


def leader(d: dict[str, object]) -> int | None:
    """The container's PID 1 while it runs (its start time guards against a reused pid)."""
    pid = d.get("leader")
    if not isinstance(pid, int):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return pid if stat[0] != "Z" and stat[19] == d.get("leader_start") else None


# -- commands ----------------------------------------------------------------------------


def table(distros: dict[str, dict[str, object]]) -> str:
    """ListDistributionsHelper's format: "%s %-{W}s%-16s%s\\n", W = max(4, longest name) + 4."""
    width = max([4] + [len(n) for n in distros]) + 4
    out = "  " + "NAME".ljust(width) + "STATE".ljust(16) + "VERSION\r\n"
    for name, d in distros.items():
        state = "Running" if leader(d) else "Stopped"
        out += f"  {name.ljust(width)}{state.ljust(16)}2\r\n"
    return out


def cmd_list(args: list[str]) -> int:
    distros = load()
    running = "--running" in args
    shown = {n: d for n, d in distros.items() if not running or leader(d)}
    if "--quiet" in args or "-q" in args:
        if running and not shown:
            return fail(recorded_text("list-running-none.utf16"))
        say("".join(f"{n}\r\n" for n in shown))
        return 0
    if not distros:
        return fail(recorded_text("list-verbose-none.utf16"))
    say(table(distros))
    return 0


def cmd_import(args: list[str]) -> int:
    if len(args) != 5 or args[3:] != ["--version", "2"]:
        return fail(f"Invalid command line argument: {' '.join(args)}\r\n")
    name, folder, tarball = args[0], Path(args[1]), Path(args[2])
    with locked():
        distros = load()
        if find(distros, name):
            return fail(
                "A distribution with the supplied name already exists. Use --name to choose a different name.\r\n"
            )
        root = folder / "rootfs"
        root.mkdir(parents=True)
        say(recorded_text("import-ok.utf16").split("\n")[0] + "\n")
        with tarfile.open(tarball) as tar:
            tar.extractall(root, numeric_owner=True, filter="fully_trusted")
        distros[name] = {"root": str(root)}
        save(distros)
    say(recorded_text("import-ok.utf16").split("\n", 1)[1])
    return 0


def stop(d: dict[str, object]) -> None:
    pid = leader(d)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)  # PID 1 of the container: the kernel ends every process in it
        deadline = time.monotonic() + 10
        while leader(d) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    fwd = d.pop("forwarder", None)
    if isinstance(fwd, int):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(fwd, signal.SIGTERM)
    d.pop("leader", None)
    d.pop("leader_start", None)


def cmd_terminate(args: list[str], unregister: bool = False) -> int:
    with locked():
        distros = load()
        name = find(distros, args[0]) if args else None
        if name is None:
            return fail(recorded_text("distro-missing.utf8"))
        stop(distros[name])
        if unregister:
            shutil.rmtree(str(distros[name]["root"]), ignore_errors=True)
            del distros[name]
        save(distros)
    say(recorded_text("unregister-ok.utf8" if unregister else "terminate-ok.utf8"))
    return 0


def systemd_wanted(root: Path) -> bool:
    try:
        text = (root / "etc" / "wsl.conf").read_text()
    except OSError:
        return False
    return "systemd=true" in text.replace(" ", "").lower()


def writable_cgroups(leader: int, log: IO[bytes]) -> None:
    """The container's cgroup controllers made writable, as a WSL2 distro's are in its VM.

    WSL2 runs a distro on a kernel of its own, where an engine creates cgroups
    as on any Linux. On a host with cgroup v1 (these CI machines) nspawn mounts
    every controller read-only in the container, and runc could start no
    container ("mkdir /sys/fs/cgroup/cpuset/docker: read-only file system").
    """
    script = 'mount -o remount,rw /sys/fs/cgroup; for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw "$d"; done'
    subprocess.run(["nsenter", "-t", str(leader), "-m", "sh", "-c", script], stdout=log, stderr=log, check=False)


def boot(name: str, d: dict[str, object]) -> int:
    """Start the distro's container, as the first wsl.exe into a stopped distro starts its VM; its PID 1."""
    root = Path(str(d["root"]))
    machine = f"wsl-stand-in-{os.getpid()}"
    # a network of its own (an engine may make bridges there), reached on 127.0.0.1 through forward()
    # keyctl(2) too, which nspawn's seccomp filter refuses by default: runc puts each container in a session keyring
    argv = [NSPAWN, "-q", "-D", str(root), "-M", machine, "--register=no", "--keep-unit", "--private-network"]
    argv += ["--system-call-filter=@keyring"]
    argv += ["--boot"] if systemd_wanted(root) else ["--as-pid2", "sleep", "infinity"]
    log = open(STATE / f"{name}.console.log", "ab")  # noqa: SIM115 - the container keeps it
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + BOOT_WAIT
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        with contextlib.suppress(OSError, ValueError, IndexError):
            child = int(kids.read_text().split()[0])
            start = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[19]
            d["leader"], d["leader_start"] = child, start
            if not systemd_wanted(root) or _systemd_up(child):
                writable_cgroups(child, log)
                fwd = subprocess.Popen(
                    [sys.executable, __file__, "--stand-in-forward", str(child), start],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                )  # fmt: skip
                d["forwarder"] = fwd.pid
                return child
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(
        fail(f"stand-in: the container of {name} did not start (see {STATE / (name + '.console.log')})\r\n")
    )


def listening(pid: int) -> set[int]:
    """TCP ports listening on 0.0.0.0, 127.0.0.1, :: or ::1 in the network namespace of `pid`."""
    ports = set()
    for table, addresses in (("tcp", ("00000000", "0100007F")), ("tcp6", ("0" * 32, "0" * 24 + "01000000"))):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                address, _, port = f[1].partition(":")
                if f[3] == "0A" and address in addresses:
                    ports.add(int(port, 16))
    return ports


def forward(pid: int, start: str) -> int:
    """WSL2's localhost forwarding: each port the distro listens on answers on this host's 127.0.0.1 too.

    One socat per port, whose every connection enters the distro's network
    namespace (nsenter) to reach the port there; gone when the port closes
    or the distro stops.
    """
    relays: dict[int, subprocess.Popen[bytes]] = {}
    try:
        while leader({"leader": pid, "leader_start": start}) is not None:
            ports = listening(pid)
            for port in ports - set(relays):
                inner = f"nsenter -t {pid} -n socat STDIO TCP\\:127.0.0.1\\:{port}"  # socat's own \\: escapes
                relays[port] = subprocess.Popen(
                    ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inner}"],
                    stdin=subprocess.DEVNULL,
                )
            for port in set(relays) - ports:
                relays.pop(port).terminate()
            time.sleep(0.2)
    finally:
        for relay in relays.values():
            relay.terminate()
    return 0


def _systemd_up(pid: int) -> bool:
    """systemd answers on its bus in the container (WSL runs the command once systemd is there)."""
    r = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-p", "--", "systemctl", "is-system-running"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() in ("initializing", "starting", "running", "degraded")


def ids(root: Path, user: str) -> tuple[int, int, str]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user or f[2] == user:
            return int(f[2]), int(f[3]), f[5]
    raise SystemExit(fail(f"stand-in: no user {user} in the distro\r\n"))


def cmd_run(args: list[str]) -> int:
    name, user, cwd, command = "", "", "", []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-d", "--distribution"):
            name, i = args[i + 1], i + 2
        elif a in ("-u", "--user"):
            user, i = args[i + 1], i + 2
        elif a == "--cd":
            cwd, i = args[i + 1], i + 2
        elif a in ("-e", "--exec"):
            command = args[i + 1 :]
            break
        elif a == "--":
            command = ["/bin/sh", "-c", " ".join(args[i + 1 :])]  # wsl.exe hands the joined words to the shell
            break
        else:
            return fail(f"Invalid command line argument: {a}\r\n")
    with locked():
        distros = load()
        found = find(distros, name)
        if found is None:
            return fail(recorded_text("distro-missing.utf8"))
        d = distros[found]
        pid = leader(d) or boot(found, d)
        save(distros)
    root = Path(str(d["root"]))
    uid, gid, home = ids(root, user or "root")
    argv = [
        "nsenter",
        "-t",
        str(pid),
        "-m",
        "-u",
        "-i",
        "-p",
        "-r",
        f"--wd={cwd or home}",
        "-S",
        str(uid),
        "-G",
        str(gid),
    ]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home, "TERM": "dumb"}
    env["USER"] = env["LOGNAME"] = user or "root"
    os.execvpe("nsenter", [*argv, "--", *(command or ["/bin/sh"])], env)


def main(args: list[str]) -> int:
    if not args:
        return fail("stand-in: no arguments\r\n")
    if args[0] == "--stand-in-forward":
        return forward(int(args[1]), args[2])
    if args[0] in ("-l", "--list"):
        return cmd_list(args[1:])
    if args[0] == "--import":
        return cmd_import(args[1:])
    if args[0] in ("-t", "--terminate"):
        return cmd_terminate(args[1:])
    if args[0] == "--unregister":
        return cmd_terminate(args[1:], unregister=True)
    if args[0] in ("-d", "--distribution"):
        return cmd_run(args)
    if args[0] == "--status":
        say(recorded_text("status-ok.utf16"))
        return 0
    return fail(f"Invalid command line argument: {args[0]}\r\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
