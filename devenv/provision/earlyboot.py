"""First boot of an image devenv built, in the guest, before sshd: cloud-init's job, done in ~1 s.

Runs in the guest as root (stdlib only, Python 3.8+), never on the host. The
image's devenv-seed.service (vmimages/builders/debian/configure.sh) mounts the
instance's cidata ISO and runs this file from it with the ISO's
devenv-seed.json, which devenv/provision/seed.py writes from the same inputs
as cloud-init's user-data. Why not cloud-init: under TCG its four stages took
~22 s of a first boot, and each `systemctl enable` it led to ~2 s more (a
daemon-reload each); this does the same work in one process, before sshd
starts, so sshd never has to re-read a host key and the engine starts beside
the rest of the boot. Pulled cloud images keep cloud-init.

What it does, each step named in a failure: write the files (engine and
agent scripts, units, the user's provision scripts), create the user (key
login only, passwordless sudo, in the engine's group), run `firstboot.sh
early` (the engine configured and started), install the pinned host key, set
the hostname and time zone, compile the guest agent, grow the root filesystem
to the disk, enable the devenv units and start them in one systemctl run,
among them devenv-provision.service, which runs the rest of firstboot.sh after
the network is up. A failure is written to
/var/lib/devenv/failed and announced on the console as firstboot.sh does.
Every step is idempotent: a crash before the end runs them all again.

Each process started here costs ~0.1 s of a first boot under TCG, a systemctl
run ~0.4 s, and the boot is CPU-bound: what the engine (which the host waits
for last) does not get, the first start pays. So enabling a unit is its
symlinks written here (`systemctl enable` does no more for these units), the
user gets the engine's group at useradd (no usermod), and firstboot.sh learns
which units' files the seed changed (DEVENV_CHANGED_UNITS) instead of asking
systemd.
"""

from __future__ import annotations

import contextlib
import json
import os
import py_compile
import socket
import subprocess
import sys

STATE = "/var/lib/devenv"
SEEDED = STATE + "/seeded"
LOG = "/var/log/devenv-provision.log"
CONSOLES = ("/dev/virtio-ports/io.devenv.0", "/dev/console", "/dev/ttyS0", "/dev/ttyAMA0", "/dev/hvc0")
PROVISION_UNIT = "devenv-provision.service"
UNIT_DIR = "/etc/systemd/system"


class StepFailed(Exception):
    def __init__(self, step: str, rc: int) -> None:
        super().__init__(step)
        self.step, self.rc = step, rc


def run(step: str, argv: list[str], root: str, env: dict[str, str] | None = None) -> None:
    if root != "/":  # tests: a folder stands in for the guest; commands are recorded (env as env(1) would take it)
        recorded = ["env", *(f"{k}={v}" for k, v in env.items()), *argv] if env else argv
        with open(os.path.join(root, "commands.log"), "a", encoding="utf-8") as f:
            f.write(json.dumps(recorded) + "\n")
        return
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # root only: scripts may print secrets
    with os.fdopen(fd, "ab") as log:
        rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if rc != 0:
        raise StepFailed(step, rc)


def path_in(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def write(root: str, path: str, content: str, mode: int, append: bool = False) -> bool:
    """Whether the file changed: one with these bytes and mode is left as it is.

    As put_file in provisioning/engines/common.sh: systemd counts a unit as
    changed (a daemon-reload due) when its file's mtime moves, even to the same bytes.
    """
    full = path_in(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    if append:  # at most once: a rerun after a crash must not add the lines again
        if os.path.exists(full):
            with open(full, encoding="utf-8") as f:
                if content in f.read():
                    return False
        with open(full, "a", encoding="utf-8") as f:
            f.write(content)
        os.chmod(full, mode)  # as cloud-init's append does: the file may hold secrets now
        return True
    with contextlib.suppress(OSError):
        if os.stat(full).st_mode & 0o7777 == mode:
            with open(full, encoding="utf-8", newline="") as f:
                if f.read() == content:
                    return False
    tmp = full + ".devenv-new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, full)
    return True


KEEP_ROOT_SIZE = "DEVENV_KEEP_ROOT_SIZE"  # set by a boot whose root filesystem is sized by its host (WSL's)


def grow_root(root: str) -> None:
    """The host grew the overlay to the configured size; the base's filesystem is ~2 GiB."""
    if os.environ.get(KEEP_ROOT_SIZE) == "1":
        return
    device = ""
    with open(path_in(root, "/proc/mounts"), encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "/" and fields[0].startswith("/dev/"):
                device = fields[0]
    if device:
        run("disk", ["resize2fs", device], root)


def set_hostname(root: str, name: str) -> None:
    write(root, "/etc/hostname", name + "\n", 0o644)
    hosts = path_in(root, "/etc/hosts")
    lines = []
    if os.path.exists(hosts):
        with open(hosts, encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if not line.startswith("127.0.1.1")]
    lines.insert(1 if lines else 0, "127.0.1.1\t" + name)
    write(root, "/etc/hosts", "\n".join(lines) + "\n", 0o644)
    if root == "/":
        socket.sethostname(name)


def set_timezone(root: str, zone: str | None) -> None:
    if not zone or not os.path.exists(path_in(root, "/usr/share/zoneinfo/" + zone)):
        return
    link = path_in(root, "/etc/localtime")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink("/usr/share/zoneinfo/" + zone, link)
    write(root, "/etc/timezone", zone + "\n", 0o644)


def make_user(root: str, user: dict[str, object]) -> None:
    name, uid = str(user["name"]), int(str(user["uid"]))
    home = "/home/" + name
    if not user_exists(root, name):
        # -U: a group of its own; the password stays locked ("!"), so key login only. The engine's
        # group when the image has it already (else firstboot.sh's engine step makes it and adds the user).
        groups = [g for g in user.get("groups", ()) if group_exists(root, str(g))]  # type: ignore[attr-defined]
        with_groups = ["-G", ",".join(groups)] if groups else []
        argv = ["useradd", "-m", "-U", "-u", str(uid), *with_groups, "-s", "/bin/bash", "-c", name, name]
        run("user", argv, root)
    write(root, "/etc/sudoers.d/90-devenv", name + " ALL=(ALL) NOPASSWD:ALL\n", 0o440)
    ssh_dir = path_in(root, home + "/.ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    keys = "".join(str(k).strip() + "\n" for k in user["authorized_keys"])  # type: ignore[attr-defined]
    write(root, home + "/.ssh/authorized_keys", keys, 0o600)
    if root == "/":
        for path in (ssh_dir, os.path.join(ssh_dir, "authorized_keys")):
            os.chown(path, uid, gid_of(name, uid))
        os.chmod(ssh_dir, 0o700)


def user_exists(root: str, name: str) -> bool:
    passwd = path_in(root, "/etc/passwd")
    if not os.path.exists(passwd):
        return False
    with open(passwd, encoding="utf-8") as f:
        return any(line.split(":", 1)[0] == name for line in f)


def group_exists(root: str, name: str) -> bool:
    group = path_in(root, "/etc/group")
    if not os.path.exists(group):
        return False
    with open(group, encoding="utf-8") as f:
        return any(line.split(":", 1)[0] == name for line in f)


def gid_of(name: str, default: int) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return default


def install_host_key(root: str, private: str, public: str) -> None:
    """Only the key the host pinned: any other would make the host's known_hosts refuse the guest."""
    ssh = path_in(root, "/etc/ssh")
    if os.path.isdir(ssh):
        for entry in os.listdir(ssh):
            if entry.startswith("ssh_host_"):
                os.unlink(os.path.join(ssh, entry))
    write(root, "/etc/ssh/ssh_host_ed25519_key", private if private.endswith("\n") else private + "\n", 0o600)
    write(root, "/etc/ssh/ssh_host_ed25519_key.pub", public.strip() + "\n", 0o644)


def write_files(root: str, files: list[dict[str, object]]) -> list[str]:
    """The paths whose files changed."""
    changed = []
    for f in files:
        path = str(f["path"])
        if write(root, path, str(f["content"]), int(str(f["permissions"]), 8), bool(f.get("append"))):
            changed.append(path)
    return changed


def units_of(paths: list[str]) -> list[str]:
    """The systemd units those files belong to: a unit file, or a drop-in in UNIT.d/."""
    units = []
    for path in paths:
        if not path.startswith(UNIT_DIR + "/"):
            continue
        first = path[len(UNIT_DIR) + 1 :].split("/", 1)[0]
        unit = first[: -len(".d")] if first.endswith(".d") else first
        if unit not in units:
            units.append(unit)
    return units


def install_targets(root: str, unit: str) -> list[str]:
    """The targets a unit's [Install] section names (WantedBy=)."""
    targets: list[str] = []
    section = ""
    with open(path_in(root, UNIT_DIR + "/" + unit), encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Install]" and line.startswith("WantedBy="):
                targets += line[len("WantedBy=") :].split()
            elif section == "[Install]" and line and not line.startswith(("#", ";")):
                raise ValueError(f"{unit}: [Install] {line.split('=', 1)[0]} is not handled here")
    return targets


def enable(root: str, units: list[str]) -> None:
    """`systemctl enable --no-reload` for units whose [Install] has WantedBy= only: the symlinks it would make."""
    for unit in units:
        target_path = UNIT_DIR + "/" + unit
        for target in install_targets(root, unit):
            link = path_in(root, f"{UNIT_DIR}/{target}.wants/{unit}")
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if os.path.islink(link) and os.readlink(link) == target_path:
                continue
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target_path, link)


def compile_agent(root: str, agent: str) -> None:
    """As root, once: the agent runs as the devenv user, who cannot write its bytecode cache."""
    try:
        py_compile.compile(path_in(root, agent), doraise=True)
    except py_compile.PyCompileError:
        raise StepFailed("guestagent", 1) from None


def apply(seed: dict[str, object], root: str = "/") -> None:
    """In the order that starts the engine soonest: it is what the host waits for last.

    Each step is printed as it begins: the journal's timestamps then say where a first boot's time went.
    """
    step = "seed"

    def begin(name: str) -> str:
        print(f"devenv first boot: {name}", flush=True)
        return name

    try:
        step = begin("files")
        changed = units_of(write_files(root, seed["files"]))  # type: ignore[arg-type]
        step = begin("user")
        make_user(root, seed["user"])  # type: ignore[arg-type]
        # the engine, started without waiting for it;
        # firstboot.sh reports its own failures (console and /var/lib/devenv/failed)
        begin("firstboot-early")
        early_env = {"DEVENV_CHANGED_UNITS": " ".join(changed)}
        run("firstboot-early", ["/bin/sh", str(seed["firstboot"]), "early"], root, early_env)
        step = begin("host-key")
        host_key: dict[str, str] = seed["host_key"]  # type: ignore[assignment]
        install_host_key(root, host_key["private"], host_key["public"])
        step = begin("hostname")
        set_hostname(root, str(seed["hostname"]))
        step = begin("timezone")
        set_timezone(root, seed.get("timezone"))  # type: ignore[arg-type]
        begin("compile the guest agent")
        compile_agent(root, str(seed["agent"]))
        step = begin("disk")
        grow_root(root)
        # new files systemd has not loaded yet: started without a daemon-reload (~2 s under TCG)
        step = begin("units")
        units: dict[str, list[str]] = seed["units"]  # type: ignore[assignment]
        enable(root, units["enable"])
        run("units", ["systemctl", "start", "--no-block", *units["start"]], root)
        write(root, SEEDED, str(seed["instance_id"]) + "\n", 0o644)
    except StepFailed:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        print(f"devenv first boot: step {step}: {e}", file=sys.stderr)
        raise StepFailed(step, 1) from None


def announce(line: str) -> None:
    for dev in CONSOLES:
        try:
            fd = os.open(dev, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, (line + "\n").encode())
        except OSError:
            pass
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: earlyboot.py SEED.json [ROOT]", file=sys.stderr)
        return 2
    root = argv[2] if len(argv) == 3 else "/"
    try:
        with open(argv[1], encoding="utf-8") as f:
            seed = json.load(f)
        apply(seed, root)
    except (OSError, ValueError) as e:
        print(f"devenv first boot: cannot read the seed {argv[1]}: {e}", file=sys.stderr)
        return fail(root, "seed", 1)
    except StepFailed as e:
        if e.step == "firstboot-early":  # firstboot.sh has written and announced it
            return e.rc
        return fail(root, e.step, e.rc)
    return 0


def fail(root: str, step: str, rc: int) -> int:
    line = f"step={step} rc={rc} log={LOG}"
    with contextlib.suppress(OSError):
        write(root, STATE + "/failed", line + "\n", 0o644)
    if root == "/":
        announce("DEVENV-FAILED " + line)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
