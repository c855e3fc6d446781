"""The VM lifecycle, checked through each VM driver (the conformance suite): a real guest, real sshd, real docker.

Every test runs once per driver this host can run (tests/e2e/drivers.py; today
qemu, under TCG here). Tests run in file order and share one VM per driver; the
stop/start, crash and delete tests come last because they change its state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devenv import hostagent
from devenv.backends.drivers.qemuargs import TCG_KERNEL_ARGS, TCG_MODULE_BLACKLIST
from devenv.backends.drivers.qemuproc import host_tsc_khz
from devenv.guestagent import protocol
from devenv.provision.engines import LOCAL_IMAGE
from devenv.provision.userdata import ENV_SH
from tests.bytecode import FRESH_CHECK
from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase
from tests.ptyutil import read_until, set_winsize, spawn_on_pty

pytestmark = pytest.mark.e2e

VM = tuple[Devenv, str, subprocess.CompletedProcess[bytes]]


def test_start_shows_each_step(vm: VM, driver: DriverCase) -> None:
    _, name, started = vm
    err = started.stderr.decode()
    for step in (driver.boot_step, "guest's sshd", "guest ready", "pinned host key", "guest agent", "engine answers"):
        assert step in err, err
    assert f"instance `{name}` is running (backend {driver.backend})" in started.stdout.decode()


def test_exec_uname(vm: VM) -> None:
    d, name, _ = vm
    r = d.ok("exec", "-n", name, "--", "uname", "-a")
    assert r.stdout.startswith(b"Linux "), r.stdout


def test_exec_returns_the_remote_exit_code(vm: VM) -> None:
    d, name, _ = vm
    r = d.run("exec", "-n", name, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")


@pytest.mark.parametrize("path", ["host agent", "ssh"])
def test_exec_sets_env_and_workdir(vm: VM, path: str) -> None:
    """-e NAME=VALUE, -e NAME (the host's value; none: unset) and -w, through the agent and over plain SSH."""
    from devenv.cli.entry import AGENT_UNAVAILABLE_ENV

    d, name, _ = vm
    env = {**d.env, "FROM_HOST": "host's value"}
    env.pop("NOT_ON_HOST", None)
    if path == "ssh":
        env[AGENT_UNAVAILABLE_ENV] = "1"  # as after the launcher's "unavailable": Python's own SSH connection
    script = 'printf "%s|%s|%s|%s" "$A" "$FROM_HOST" "${NOT_ON_HOST-unset}" "$(pwd)"'
    flags = ["-e", "A=x 'y' $z", "-e", "FROM_HOST", "-e", "NOT_ON_HOST", "-w", "/tmp"]
    r = subprocess.run(
        [sys.executable, "-m", "devenv", "exec", "-n", name, *flags, "--", "sh", "-c", script],
        capture_output=True,
        env=env,
        cwd=d.project,
        timeout=120,
        check=False,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, b"x 'y' $z|host's value|unset|/tmp", b"")
    r = subprocess.run(
        [sys.executable, "-m", "devenv", "exec", "-n", name, "-w", "/no/such/dir", "--", "pwd"],
        capture_output=True,
        env=env,
        cwd=d.project,
        timeout=120,
        check=False,
    )
    assert (r.returncode, r.stdout) == (1, b"") and b"/no/such/dir" in r.stderr, r.stderr  # as `cd` fails, both paths


def test_stdin_is_binary_safe(vm: VM) -> None:
    d, name, _ = vm
    data = os.urandom(10 * 1024 * 1024)
    r = d.ok("exec", "-n", name, "--", "wc", "-c", input=data)
    assert r.stdout.split() == [str(len(data)).encode()]
    r = d.ok("exec", "-n", name, "--", "sha256sum", input=data)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_docker_runs_the_local_image_in_the_guest(vm: VM) -> None:
    d, name, _ = vm
    r = d.ok("exec", "-n", name, "--", "docker", "run", "--rm", LOCAL_IMAGE, "echo", "hi")
    assert r.stdout == b"hi\n"


def test_the_guest_boots_as_start_configured_it(vm: VM, driver: DriverCase) -> None:
    """What qemuargs, docker.sh and the agent's launch set for start's speed hold in the real guest, not only in text."""
    d, name, _ = vm
    cmdline = d.ok("exec", "-n", name, "--", "cat", "/proc/cmdline").stdout.decode()
    loaded = d.ok("exec", "-n", name, "--", "cat", "/proc/modules").stdout.decode()
    modules = {line.split()[0] for line in loaded.splitlines()}
    qemu = driver.backend == "qemu"  # the kernel command line is QEMU's (qemuargs); other drivers boot theirs
    if qemu and d.env["DEVENV_QEMU_ACCEL"] == "tcg":
        assert TCG_KERNEL_ARGS in cmdline, cmdline
        notests = d.ok("exec", "-n", name, "--", "cat", "/sys/module/cryptomgr/parameters/notests").stdout
        assert notests == b"Y\n"
        assert not modules & set(TCG_MODULE_BLACKLIST.split(",")), modules  # udev loaded none of them
    elif qemu:
        assert "cryptomgr.notests" not in cmdline, cmdline
    assert {"overlay", "bridge", "xfrm_user"} <= modules  # loaded at sysinit (and used by dockerd)

    def prop(unit: str, name_: str) -> str:
        return d.ok("exec", "-n", name, "--", "systemctl", "show", "--value", unit, "-p", name_).stdout.decode()

    assert prop("containerd.service", "Type") == "exec\n"  # dockerd starts beside it
    assert prop("containerd.service", "ExecStartPre").strip() == ""
    for unit in ("containerd.service", "docker.service"):  # both start as soon as systemd starts jobs
        after = set(prop(unit, "After").split())
        assert not after & {"basic.target", "sysinit.target", "network.target", "network-online.target"}, after
        assert prop(unit, "DefaultDependencies") == "no\n"
    assert "/usr/local/lib/devenv/resolv-stub.sh" in prop("docker.service", "ExecStartPre")
    plugins = d.ok("exec", "-n", name, "--", "sudo", "-n", "ctr", "plugins", "ls").stdout.decode()
    loaded = {tuple(line.split()[:2]) for line in plugins.splitlines()[1:]}
    assert ("io.containerd.snapshotter.v1", "overlayfs") in loaded, plugins
    assert ("io.containerd.grpc.v1", "cri") not in loaded, plugins
    assert not {p for p in loaded if p[1] in ("aufs", "btrfs", "zfs", "devmapper")}, plugins
    # the guest agent (exec's parent here) was imported from the bytecode provisioning compiled; it is a fork
    # of the process the agent's unit started at boot (`zygote`), so it carries that one's command line
    agent_argv = d.ok("exec", "-n", name, "--", "sh", "-c", 'tr "\\0" "\\n" < /proc/$PPID/cmdline').stdout
    assert agent_argv.decode().splitlines() == shlex.split("/usr/bin/" + protocol.GUEST_LAUNCH + " zygote")
    zygote = prop("devenv-guestagent.service", "MainPID").strip()
    agent = d.ok("exec", "-n", name, "--", "sh", "-c", "echo $PPID").stdout.decode().strip()
    assert zygote not in ("", "0", agent), (zygote, agent)  # the unit's own process runs, apart from the agent
    zygote_argv = d.ok("exec", "-n", name, "--", "sh", "-c", f'tr "\\0" "\\n" < /proc/{zygote}/cmdline').stdout
    assert zygote_argv == agent_argv
    fresh = d.ok("exec", "-n", name, "--", "python3", "-c", FRESH_CHECK, protocol.GUEST_PATH).stdout
    assert fresh == b"True\n", fresh
    # env.sh (the config's env and the host's proxies, whose URLs may hold a password): the guest user's alone
    perms = d.ok("exec", "-n", name, "--", "stat", "-c", "%a %U %G", ENV_SH).stdout
    assert perms == b"640 root devenv\n", perms
    d.ok("exec", "-n", name, "--", "cat", ENV_SH)
    as_nobody = d.run("exec", "-n", name, "--", "sudo", "-n", "-u", "nobody", "cat", ENV_SH)
    assert as_nobody.returncode != 0 and b"Permission denied" in as_nobody.stderr, as_nobody


def test_the_first_boot_found_docker_configured_and_the_local_image_imported(vm: VM) -> None:
    """The image came with both (docker.sh's image phase, devenv/images/bake.py): the first boot only checked."""
    d, name, _ = vm
    log = d.ok("exec", "-n", name, "--", "sudo", "-n", "cat", "/var/log/devenv-provision.log").stdout.decode()
    assert "configured and enabled when the image was built, by these same scripts" in log, log
    assert "devenv/busybox:latest exists" in log and "built devenv/busybox" not in log, log
    if not any(k.lower().endswith("_proxy") for k in d.env):  # a proxy drop-in would restart dockerd, rightly
        assert "reloading" not in log, log
    ids = d.ok("exec", "-n", name, "--", "docker", "image", "ls", "-q", "--no-trunc", LOCAL_IMAGE).stdout.split()
    assert len(ids) == 1, ids
    # the engine's identity (docker 20.10: from its trust key, which the bake removed) is this guest's own
    engine_id = d.ok("exec", "-n", name, "--", "docker", "info", "--format", "{{.ID}}").stdout.strip()
    assert len(engine_id) >= 32, engine_id
    d.ok("exec", "-n", name, "--", "sudo", "-n", "test", "-s", "/etc/docker/key.json")


def test_what_an_image_lacks_is_installed_from_the_mirror_and_what_it_has_is_left(vm: VM, driver: DriverCase) -> None:
    """install-missing.sh, as a pulled cloud image's first boot runs it, in a real guest against the real mirror.

    The built image has everything, so its first boot installed nothing; a pulled image lacks the engine
    and sshfs. Here a package no image has (`hello`) stands in for them: apt-get through the guest's own
    network and the distribution's mirror, as a pulled image's first boot does. One driver is enough.
    """
    if driver.backend != "qemu":
        pytest.skip("the guest side is the same under every driver; run once, on qemu")
    d, name, _ = vm
    script = "/usr/local/lib/devenv/install-missing.sh"
    kept = d.run("exec", "-n", name, "--", "sudo", "-n", "sh", script, "--for", "docker")
    assert (kept.returncode, kept.stdout) == (0, b""), kept  # a built image has all a pulled one lacks: no mirror
    d.run(
        "exec", "-n", name, "--", "sudo", "-n", "sh", "-c", "dpkg -s hello >/dev/null 2>&1 && apt-get -y -q purge hello"
    )
    got = d.run("exec", "-n", name, "--", "sudo", "-n", "sh", script, "hello", "hello", "hello", timeout=900)
    assert got.returncode == 0, got.stderr.decode()[-2000:]
    assert b"devenv: installing hello (apt-get; the image lacks them)" in got.stdout, got.stdout[-2000:]
    assert d.ok("exec", "-n", name, "--", "hello").stdout == b"Hello, world!\n"
    d.ok("exec", "-n", name, "--", "sudo", "-n", "apt-get", "-y", "-q", "purge", "hello")


def test_resolv_stub_makes_resolved_s_stub_readable_and_never_replaces_it(vm: VM) -> None:
    """What dockerd reads when it starts before systemd-resolved: run in a mount namespace of the real guest."""
    d, name, _ = vm
    script = (
        "mount -t tmpfs none /run/systemd/resolve; cat /etc/resolv.conf >/dev/null 2>&1 || echo unreadable;"
        " sh /usr/local/lib/devenv/resolv-stub.sh; grep nameserver /etc/resolv.conf;"
        " echo 'nameserver 192.0.2.1' > /run/systemd/resolve/stub-resolv.conf;"
        " sh /usr/local/lib/devenv/resolv-stub.sh; grep nameserver /etc/resolv.conf"
    )
    r = d.ok("exec", "-n", name, "--", "sudo", "-n", "unshare", "-m", "sh", "-c", script)
    assert r.stdout == b"unreadable\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n", r.stderr


def _nameservers(resolv_conf: bytes) -> list[str]:
    return [line.split()[1] for line in resolv_conf.decode().splitlines() if line.startswith("nameserver ")]


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(root.rglob("*")):
        mode = stat.S_IMODE(p.lstat().st_mode)
        out[str(p.relative_to(root))] = (mode, p.read_bytes() if p.is_file() else None)
    return out


def test_cp_a_folder_in_and_back_unchanged(vm: VM, tmp_path: Path) -> None:
    d, name, _ = vm
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "sub" / "run.sh").chmod(0o755)
    (src / "sub" / "deeper" / "blob.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "secret").write_text("s")
    (src / "sub" / "secret").chmod(0o600)
    d.ok("cp", str(src), f"{name}:/tmp/tree")
    r = d.ok("exec", "-n", name, "--", "sh", "-c", "cd /tmp/tree && ./sub/run.sh && stat -c %a sub/secret")
    assert r.stdout == b"run\n600\n"
    back = tmp_path / "back"
    d.ok("cp", f"{name}:/tmp/tree", str(back))
    assert _snapshot(back) == _snapshot(src)


def test_cp_to_a_missing_or_forbidden_place_says_so(vm: VM, tmp_path: Path) -> None:
    """The guest user may not write /root; a missing folder is not created: each a message, a hint, a code."""
    d, name, _ = vm
    (tmp_path / "f").write_text("x")
    for args, code, said in [
        ((str(tmp_path / "f"), f"{name}:/root/f"), 77, f"cannot copy {tmp_path / 'f'} to /root/f in the guest"),
        ((str(tmp_path / "f"), f"{name}:/no/such/dir/f"), 66, "to /no/such/dir/f in the guest: No such file"),
        ((f"{name}:/etc/hostname", str(tmp_path / "no" / "f")), 66, "cannot copy /etc/hostname in the guest to"),
    ]:
        r = d.run("cp", *args)
        err = r.stderr.decode()
        assert (r.returncode, said in err, "hint:" in err, "Traceback" in err) == (code, True, True, False), err
    assert not (tmp_path / "no").exists()


def test_plain_openssh_uses_ssh_config(vm: VM, tmp_path: Path) -> None:
    d, name, _ = vm
    cfg = tmp_path / "ssh_config"
    cfg.write_bytes(d.ok("ssh-config", "-n", name).stdout)
    r = subprocess.run(
        ["ssh", "-F", str(cfg), f"devenv-{name}", "echo", "via-openssh"], capture_output=True, timeout=120, check=False
    )
    assert (r.returncode, r.stdout) == (0, b"via-openssh\n"), r.stderr
    # The file start keeps current, reached as a user's ~/.ssh/config would: `Include` with a glob.
    kept = Path(json.loads(d.ok("status", "-n", name, "--json").stdout)["details"]["ssh_config"])
    assert kept.read_bytes() == cfg.read_bytes() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    user_config = tmp_path / "user_ssh_config"
    user_config.write_text(f'Include "{d.home}/instances/*/ssh.config"\n')
    r = subprocess.run(
        ["ssh", "-F", str(user_config), f"devenv-{name}", "echo", "via-include"], capture_output=True, timeout=120
    )
    assert (r.returncode, r.stdout) == (0, b"via-include\n"), r.stderr


def test_wrong_pinned_key_is_refused(vm: VM, tmp_path: Path) -> None:
    d, name, _ = vm
    cfg_text = d.ok("ssh-config", "-n", name).stdout.decode()
    fake_known = tmp_path / "known_hosts"
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], capture_output=True, check=True
    )
    assert other.returncode == 0
    fake_known.write_text(f"devenv-{name} " + (tmp_path / "k.pub").read_text())
    cfg = tmp_path / "ssh_config"
    known = next(line.split(None, 1)[1] for line in cfg_text.splitlines() if "UserKnownHostsFile" in line)
    cfg.write_text(cfg_text.replace(known, str(fake_known)))
    r = subprocess.run(["ssh", "-F", str(cfg), f"devenv-{name}", "true"], capture_output=True, timeout=120, check=False)
    assert r.returncode == 255
    assert b"Host key verification failed" in r.stderr


def test_shell_is_an_interactive_pty_in_the_guest(vm: VM) -> None:
    """`devenv shell` as a user types it: a login shell on a PTY in the guest that follows the window's size."""
    import termios

    d, name, _ = vm
    argv = [sys.executable, "-m", "devenv", "shell", "-n", name]
    child, master, slave = spawn_on_pty(argv, 30, 100, cwd=d.project, env={**d.env, "TERM": "xterm"})
    before = termios.tcgetattr(slave)
    buf = bytearray()
    try:
        os.write(master, b"echo READY-$((40+2)) $(id -un) $(tty) IN-$(pwd)-\r")
        assert read_until(master, b"READY-42", 120, buf), buf.decode(errors="replace")
        assert read_until(master, b"/dev/pts/", 10, buf), buf.decode(errors="replace")
        assert read_until(master, f"IN-{d.project}-".encode(), 10, buf), buf.decode(errors="replace")  # mounted
        os.write(master, b"stty size\r")
        assert read_until(master, b"30 100", 20, buf), buf.decode(errors="replace")
        set_winsize(master, 40, 120)  # SIGWINCH in the CLI -> a window-change request to the guest
        time.sleep(1)
        os.write(master, b"stty size; exit 3\r")
        code = child.wait(60)
        read_until(master, b"40 120", 2, buf)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    text = buf.decode(errors="replace")
    after = termios.tcgetattr(slave)
    os.close(slave)
    os.close(master)
    assert code == 3, text
    assert "READY-42 devenv /dev/pts/" in text, text
    assert "40 120" in text, text
    assert after == before  # raw mode undone: the user's terminal is as it was


def test_exec_t_runs_the_command_on_a_terminal_of_its_own(vm: VM) -> None:
    """`devenv exec -t` as `ssh -t`: a PTY of the window's size, raw mode undone after, the command's exit code."""
    import termios

    d, name, _ = vm
    script = 'printf \'T-%s-%s-\\n\' "$(tty)" "$(stty size)"; read line; echo GOT-$line; exit 5'
    argv = [sys.executable, "-m", "devenv", "exec", "-t", "-n", name, "--", "sh", "-c", script]
    child, master, slave = spawn_on_pty(argv, 25, 90, cwd=d.project, env={**d.env, "TERM": "xterm"})
    before = termios.tcgetattr(slave)
    buf = bytearray()
    try:
        assert read_until(master, b"T-/dev/pts/", 120, buf), buf.decode(errors="replace")
        assert read_until(master, b"-25 90-", 10, buf), buf.decode(errors="replace")
        os.write(master, b"typed\r")  # the terminal's input reaches the command
        assert read_until(master, b"GOT-typed", 20, buf), buf.decode(errors="replace")
        code = child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    after = termios.tcgetattr(slave)
    os.close(slave)
    os.close(master)
    assert code == 5
    assert after == before
    r = d.run("exec", "-t", "-n", name, "--", "true")  # no terminal here
    assert r.returncode == 64 and b"-t needs a terminal" in r.stderr


def test_status_and_list_report_running(vm: VM) -> None:
    d, name, _ = vm
    st = json.loads(d.ok("status", "-n", name, "--json").stdout)
    assert st["state"] == "running", st
    assert st["details"]["ssh"].startswith("127.0.0.1:")
    rows = json.loads(d.ok("list", "--json").stdout)
    assert [(r["name"], r["state"]) for r in rows if r["name"] == name] == [(name, "running")]


def test_status_shows_what_the_instance_costs_the_host(vm: VM) -> None:
    """The VM-versus-container question per instance: last start, memory on both sides, disk really used."""
    d, name, _ = vm
    st = json.loads(d.ok("status", "-n", name, "--json").stdout)
    details = st["figures"]
    assert details["last_start_kind"] in ("first boot", "boot", "resume", "attach"), details
    assert 0 < details["last_start_seconds"] < 900
    assert 50 * 1024**2 < details["guest_used"] < st["memory"], details  # a booted guest with dockerd uses some
    assert details["host_rss"] > 50 * 1024**2, details  # QEMU holds at least what it touched
    assert 0 < details["disk_used"] < details["disk_virtual"], details  # the overlay holds only what was written
    text = d.ok("status", "-n", name).stdout.decode()
    assert "held on the host" in text and "used in the guest" in text and "host_rss" not in text, text
    listing = d.ok("list").stdout.decode().splitlines()
    assert listing[0].split()[5] == "RSS"
    row = next(line.split() for line in listing if line.split()[0] == name)
    assert row[6] in ("MiB", "GiB"), row  # "612.3 MiB": a measured size in the RSS column


def test_a_deleted_file_gives_its_disk_space_back_to_the_host(vm: VM) -> None:
    """The overlay is attached with discard: what the guest trims is punched out of the host's qcow2 file.

    The reclaim timer trims when the guest is idle; `reclaim.sh --now` is that run, whatever the load.
    """
    d, name, _ = vm

    def disk_used() -> int:
        return int(json.loads(d.ok("status", "-n", name, "--json").stdout)["figures"]["disk_used"])

    d.ok("exec", "-n", name, "--", "sh", "-c", "dd if=/dev/urandom of=$HOME/big bs=1M count=1024 status=none; sync")
    full = disk_used()
    out = d.ok(
        "exec", "-n", name, "--", "sh", "-c", "rm $HOME/big; sync; sudo -n sh /usr/local/lib/devenv/reclaim.sh --now"
    )
    assert b"trimmed" in out.stdout, out.stdout
    freed = full - disk_used()
    assert freed > 900 * 1024**2, (full, freed)  # most of the GiB


def test_second_instance_runs_beside_the_first(vm: VM, driver: DriverCase) -> None:
    """Also the one instance on microvm (virtio-mmio, no PCI) that opts out of guest ASLR, beside the default one.

    Where microvm cannot boot (under TCG on a host that does not tell its TSC rate, or an image
    without its own kernel) this instance is q35.
    """
    d, name, _ = vm
    project = d.project / "second"
    project.mkdir()
    qemu = driver.backend == "qemu"
    tcg = qemu and d.env["DEVENV_QEMU_ACCEL"] == "tcg"
    image = json.loads((d.home / "instances" / name / "image.json").read_text()) if qemu else {}  # the same image
    # microvm: x86_64, an image QEMU boots directly, and under TCG the host's TSC rate
    microvm = (
        qemu and bool(image.get("kernel")) and image["arch"] == "x86_64" and (not tcg or host_tsc_khz() is not None)
    )
    machine = 'machine = "microvm"\n' if microvm else ""
    (project / "devenv.toml").write_text(f'name = "second"\nbackend = "{driver.backend}"\n{machine}aslr = false\n')
    (project / "for-second.txt").write_text("over 9p\n")
    # 9p, which a host user whose uid the guest user shares gets (the shared VM, as root here, has sshfs)
    ninep = Devenv(d.home, {**d.env, "DEVENV_MOUNT_TYPE": "9p"}, project)
    ninep.ok("start", "--memory", "1GiB", "--cpus", "1")
    inst = d.home / "instances" / "second"
    try:
        assert d.ok("exec", "-n", "second", "--", "hostname").stdout.strip() == b"second"
        if microvm:
            argv = json.loads((inst / "qemu.argv").read_text())
            assert "microvm,acpi=on,memory-backend=ram0" in argv and not [
                a for a in argv if a.endswith("-pci") or "-pci," in a
            ], argv
            pci = d.ok("exec", "-n", "second", "--", "sh", "-c", "ls /sys/bus/pci/devices 2>/dev/null | wc -l")
            assert pci.stdout == b"0\n"  # the disk, network and seed all arrived over virtio-mmio
        if microvm and tcg:
            clock = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
            assert d.ok("exec", "-n", "second", "--", "cat", clock).stdout == b"tsc\n"  # not 4 ms jiffies
        st = json.loads(d.ok("status", "-n", "second", "--json").stdout)
        assert ninep.ok("exec", "--", "cat", "for-second.txt").stdout == b"over 9p\n"
        if qemu:  # the driver that offers 9p
            assert f"{project} (9p, mounted)" in st["details"]["mounts"], st["details"]
            sudo_log = d.ok("exec", "-n", "second", "--", "sudo", "-n", "journalctl", "-b", "_COMM=sudo", "-o", "cat")
            ran = [c for c in sudo_log.stdout.splitlines() if b"COMMAND=" in c and b"journalctl" not in c]
            if image.get("kernel"):  # mounted by the guest at boot, named on the kernel command line: no sudo
                assert ran == [], ran
                unit = ["sudo", "-n", "journalctl", "-b", "-u", "devenv-mounts.service", "-o", "cat"]
                booted = d.ok("exec", "-n", "second", "--", *unit).stdout
                assert f"mounted devenv0 at {project}".encode() in booted, booted
            else:
                assert len(ran) == 1 and b"mount -t 9p" in ran[0], ran  # one sudo prepared and mounted it
        assert d.ok("exec", "-n", name, "--", "hostname").stdout.strip() == name.encode()
        aslr = ["cat", "/proc/sys/kernel/randomize_va_space"]
        assert d.ok("exec", "-n", "second", "--", *aslr).stdout == b"0\n"
        assert d.ok("exec", "-n", name, "--", *aslr).stdout == b"2\n"  # the default keeps it
        states = {r["name"]: r["state"] for r in json.loads(d.ok("list", "--json").stdout)}
        assert states == {name: "running", "second": "running"}
        t0 = time.monotonic()
        d.ok("stop", "--shutdown", "-n", "second", timeout=300)
        # a clean ACPI power-off (microvm's GED power button), not the quit/kill fallback after the wait
        assert time.monotonic() - t0 < 60
        if qemu:
            assert b"Power down" in (inst / "serial.log").read_bytes()
    finally:
        d.ok("delete", "--force", "-n", "second", timeout=300)
    assert not inst.exists()


def _forwarded(inst: Path, ports: tuple[int, ...], wait: float = 30) -> dict[int, str]:
    """Each guest port answering HTTP through its host forward: how status says it goes ("via")."""
    deadline = time.monotonic() + wait
    for port in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError as e:
                assert time.monotonic() < deadline, f"no forward of guest port {port}: {e}"
                time.sleep(0.5)
    rows = hostagent.state(inst)["forwards"]
    return {int(f["host_port"]): str(f.get("via")) for f in rows if f["host_port"] in ports}


def test_suspend_then_start_resumes_the_same_running_guest(vm: VM, driver: DriverCase) -> None:
    """devenv.toml's default `stop` saves the guest: the same boot runs on, with its memory, its containers,
    the engine socket, its forwards and a clock set from the host's."""
    d, name, _ = vm
    if driver.backend != "qemu":
        pytest.skip(f"{driver.backend} cannot suspend")
    before = d.ok(
        "exec", "-n", name, "--", "sh", "-c", "cat /proc/sys/kernel/random/boot_id; echo in-ram > /dev/shm/kept"
    )
    d.ok("exec", "-n", name, "--", "docker", "run", "-d", "--name", "survivor", LOCAL_IMAGE, "sleep", "3600")
    # a port on every guest address and one on loopback alone: QEMU's rules (and the bridge) are made anew
    servers = (
        "cd /tmp && (setsid nohup python3 -m http.server 9143 </dev/null >/dev/null 2>&1 &"
        " setsid nohup python3 -m http.server --bind 127.0.0.1 9144 </dev/null >/dev/null 2>&1 &) && echo ok"
    )
    d.ok("exec", "-n", name, "--", "sh", "-c", servers)
    inst = d.home / "instances" / name
    vias = _forwarded(inst, (9143, 9144))
    agent_pid = (inst / "hostagent.pid").read_text()
    stop = d.ok("stop", "-n", name, timeout=120)
    assert b"is suspended" in stop.stdout and b"save the guest" in stop.stderr, stop.stderr
    status = json.loads(d.ok("status", "-n", name, "--json").stdout)
    assert status["state"] == "suspended" and status["details"]["machine"].startswith("pc-q35-"), status
    assert "host_rss" not in status["figures"] and status["figures"]["disk_used"] > 0, status  # no VM process now
    r = d.run("exec", "-n", name, "--", "true")
    assert r.returncode == 67 and b"is suspended" in r.stderr
    again = d.ok("stop", "-n", name, timeout=120)  # a plain stop of a suspended guest keeps it as it is
    assert b"is suspended" in again.stdout and b"restore" not in again.stderr, again.stderr
    time.sleep(3)  # the guest's clock stands still meanwhile: resume must set it
    start = d.ok("start", "-n", name, timeout=120)
    assert b"restore the suspended guest" in start.stderr and b"waiting for the guest's sshd" not in start.stderr
    # the host agent and its SSH session (over the relay port) lived through the save: no new login
    why = (start.stderr.decode(), (inst / "events.jsonl").read_text().splitlines()[-6:])  # what the agent said
    assert b"resume the host agent's SSH session" in start.stderr and b"log in with" not in start.stderr, why
    assert (inst / "hostagent.pid").read_text() == agent_pid
    events = [json.loads(line) for line in (inst / "events.jsonl").read_text().splitlines() if line.strip()]
    resumed_event = [e for e in events if e["event"] == "agent-resumed"][-1]
    assert resumed_event["kept_session"] is True and resumed_event["vm_replaced"] is True, resumed_event
    assert any(e["event"] == "clock-resync" and e.get("via") == "relay" for e in events), events[-5:]
    after = d.ok("exec", "-n", name, "--", "sh", "-c", "cat /proc/sys/kernel/random/boot_id /dev/shm/kept; date +%s.%N")
    boot_id, kept, guest_now = after.stdout.decode().split()
    assert boot_id == before.stdout.decode().strip() and kept == "in-ram", after.stdout
    assert abs(float(guest_now) - time.time()) < 2.0, (guest_now, time.time())
    ps = d.ok("exec", "-n", name, "--", "docker", "ps", "--filter", "name=survivor", "--format", "{{.Status}}")
    assert ps.stdout.startswith(b"Up"), ps.stdout
    sock = inst / "sock" / "docker.sock"
    host_docker = subprocess.run(
        ["docker", "-H", f"unix://{sock}", "ps", "--format", "{{.Names}}"], capture_output=True
    )
    assert b"survivor" in host_docker.stdout, host_docker.stderr  # the engine socket is back on the host
    d.ok("exec", "-n", name, "--", "docker", "rm", "-f", "survivor")
    assert _forwarded(inst, (9143, 9144)) == vias == {9143: driver.fast_via, 9144: driver.loopback_via}
    d.run("exec", "-n", name, "--", "pkill", "-f", "http.server 914[34]")
    resumed = json.loads(d.ok("status", "-n", name, "--json").stdout)
    assert resumed["state"] == "running" and resumed["figures"]["last_start_kind"] == "resume", resumed
    assert resumed["figures"]["last_start_seconds"] < 60


def test_a_reboot_from_inside_is_followed_and_everything_comes_back(vm: VM) -> None:
    """`sudo reboot` in the guest: status says so meanwhile; then the session (over the relay), the engine
    socket, the project mount and automatic forwards come back without a devenv command."""
    d, name, _ = vm
    inst = d.home / "instances" / name
    before = d.ok("exec", "-n", name, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
    d.run("exec", "-n", name, "--", "sudo", "-n", "systemctl", "reboot")  # may lose its own connection

    def status() -> dict[str, Any]:
        return dict(json.loads(d.ok("status", "-n", name, "--json").stdout))

    seen: list[str] = []
    deadline = time.monotonic() + 600
    while True:
        st = status()
        seen.append(f"{st['state']}: {st['reason']}")
        if st["state"] == "running" and len(seen) > 1:
            now = d.run("exec", "-n", name, "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
            if now and now != before:
                break
        assert time.monotonic() < deadline, seen
        time.sleep(2)
    assert any("the guest is rebooting (from inside)" in line for line in seen), seen
    assert st["details"]["ssh_via"] == "relay", st  # waited for the relay, not fallen back to the network
    (d.project / "after-reboot.txt").write_text("from the host\n")
    shown = d.ok("exec", "-n", name, "--", "cat", str(d.project / "after-reboot.txt")).stdout
    assert shown == b"from the host\n"  # the project folder is mounted again
    sock = inst / "sock" / "docker.sock"
    host_docker = subprocess.run(["docker", "-H", f"unix://{sock}", "version"], capture_output=True)
    assert host_docker.returncode == 0, host_docker.stderr  # the engine socket answers again
    # ports opened after the reboot are forwarded automatically again: the agent watches the new boot's
    started = "cd /tmp && setsid nohup python3 -m http.server 9141 </dev/null >/dev/null 2>&1 & echo ok"
    d.ok("exec", "-n", name, "--", "sh", "-c", started)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:9141/", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError as e:
                assert time.monotonic() < deadline, f"no forward of guest port 9141 after the reboot: {e}"
                time.sleep(1)
    finally:
        d.run("exec", "-n", name, "--", "pkill", "-f", "http.server 9141")


def test_a_poweroff_from_inside_is_stopped_and_start_boots_it(vm: VM) -> None:
    """`sudo poweroff` in the guest: status says stopped (not broken), the host agent goes, start boots it."""
    d, name, _ = vm
    inst = d.home / "instances" / name
    d.ok("exec", "-n", name, "--", "sh", "-c", "echo before poweroff > ~/poweroff.txt && sync")
    d.run("exec", "-n", name, "--", "sudo", "-n", "systemctl", "poweroff")  # may lose its own connection
    deadline = time.monotonic() + 300
    while (st := json.loads(d.ok("status", "-n", name, "--json").stdout))["state"] != "stopped":
        assert st["state"] != "broken", st
        assert time.monotonic() < deadline, st
        time.sleep(2)
    deadline = time.monotonic() + 30
    while hostagent.is_running(inst):  # it saw the guest go and left
        assert time.monotonic() < deadline, hostagent.log_tail(inst)
        time.sleep(0.5)
    d.ok("start", "-n", name)
    assert d.ok("exec", "-n", name, "--", "sh", "-c", "cat ~/poweroff.txt").stdout == b"before poweroff\n"
    assert json.loads(d.ok("status", "-n", name, "--json").stdout)["state"] == "running"


def test_stop_then_start_keeps_the_disk(vm: VM) -> None:
    d, name, _ = vm
    d.ok("exec", "-n", name, "--", "sh", "-c", "echo persisted > ~/keep.txt && sync")
    ssh_config = d.ok("ssh-config", "-n", name).stdout
    d.ok("stop", "--shutdown", "-n", name, timeout=300)
    assert json.loads(d.ok("status", "-n", name, "--json").stdout)["state"] == "stopped"
    r = d.run("exec", "-n", name, "--", "true")
    assert r.returncode == 67 and b"is stopped" in r.stderr
    d.ok("start", "-n", name)
    assert d.ok("exec", "-n", name, "--", "sh", "-c", "cat ~/keep.txt").stdout == b"persisted\n"
    # dockerd started before systemd-resolved in this boot: containers still get the guest's upstream DNS
    upstream = _nameservers(d.ok("exec", "-n", name, "--", "cat", "/run/systemd/resolve/resolv.conf").stdout)
    in_container = d.ok("exec", "-n", name, "--", "docker", "run", "--rm", LOCAL_IMAGE, "cat", "/etc/resolv.conf")
    assert upstream and _nameservers(in_container.stdout) == upstream, in_container.stdout
    dockerd_log = d.ok("exec", "-n", name, "--", "sudo", "-n", "journalctl", "-b", "-u", "docker.service", "-o", "cat")
    assert b"detected 127.0.0.53 nameserver" in dockerd_log.stdout  # its own choice, made when it started
    # The same port again: a block pasted into ~/.ssh/config (or an editor's remote host) still works.
    assert d.ok("ssh-config", "-n", name).stdout == ssh_config


def _start_until_the_vm_runs(d: Devenv, name: str, driver: DriverCase) -> subprocess.Popen[bytes]:
    """`devenv start` of the stopped VM, once the VM runs and the wait for the guest's sshd begins."""
    d.ok("stop", "--shutdown", "-n", name, timeout=300)
    proc = subprocess.Popen(
        [sys.executable, "-m", "devenv", "start", "-n", name],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a terminal's ^C: a CI run started as a background job would hand down SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = b""
    while f"✓ {driver.boot_step}".encode() not in seen:
        line = proc.stderr.readline()
        assert line, f"devenv start ended early: {seen!r}"
        seen += line
    return proc


def test_ctrl_c_mid_start_is_explained_and_start_recovers(vm: VM, driver: DriverCase) -> None:
    d, name, _ = vm
    proc = _start_until_the_vm_runs(d, name, driver)
    st = json.loads(d.ok("status", "-n", name, "--json").stdout)
    assert st["state"] == "starting" and f"`devenv start` (pid {proc.pid}) is waiting for it" in st["reason"], st
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    st = json.loads(d.ok("status", "-n", name, "--json").stdout)
    assert st["state"] == "starting", st
    assert "no `devenv start` is waiting for it any more" in str(st["reason"]), st  # the truth: none runs now
    d.ok("start", "-n", name)
    assert json.loads(d.ok("status", "-n", name, "--json").stdout)["state"] == "running"


def test_a_stop_during_a_start_interrupts_it_and_shuts_the_guest_down_cleanly(vm: VM, driver: DriverCase) -> None:
    """The user gives up on a start from another terminal: stop wins at once, the guest powers itself off.

    The guest is in early boot, before anything listens for the power button;
    stop presses it again until it is heard. Before: the start relaunched the
    host agent behind stop's back and failed, stopping the agent took 10 s and
    the single press waited out 90 s.
    """
    d, name, _ = vm
    proc = _start_until_the_vm_runs(d, name, driver)
    began = time.monotonic()
    stop = d.ok("stop", "-n", name, timeout=300).stderr.decode()
    took = time.monotonic() - began
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # interrupted, as by a Ctrl-C
    assert f"✓ interrupt `devenv start` (pid {proc.pid})" in stop, stop
    agent = re.search(r"✓ stop the host agent\s+([\d.]+)s", stop)
    assert agent is not None and float(agent.group(1)) < 3.0, stop
    assert "✓ ACPI power-down" in stop and "QEMU quit" not in stop, stop  # it shut itself down: a clean disk
    assert took < 90, stop
    assert json.loads(d.ok("status", "-n", name, "--json").stdout)["state"] == "stopped"
    d.ok("start", "-n", name)
    assert json.loads(d.ok("status", "-n", name, "--json").stdout)["state"] == "running"


def test_a_killed_vm_is_explained_and_start_recovers(vm: VM, driver: DriverCase) -> None:
    d, name, _ = vm
    pid = int((d.home / "instances" / name / driver.vm_pid_file).read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    st: dict[str, object] = {}
    while time.monotonic() < deadline:
        st = json.loads(d.ok("status", "-n", name, "--json").stdout)
        if st["state"] == "broken":
            break
        time.sleep(0.5)
    assert st["state"] == "broken", st
    assert "VM process is gone" in str(st["reason"]) and "devenv start" in str(st["reason"])
    d.ok("start", "-n", name)
    assert d.ok("exec", "-n", name, "--", "sh", "-c", "cat ~/keep.txt").stdout == b"persisted\n"


def test_delete_removes_the_instance_dir_and_nothing_else(vm: VM) -> None:
    d, name, _ = vm
    inst_dir = d.home / "instances" / name
    base = json.loads((inst_dir / "image.json").read_text())["base"]  # the image record every disk driver keeps
    r = d.run("delete", "-n", name)
    assert r.returncode == 67, "deleting a running instance needs --force"
    d.ok("stop", "-n", name, timeout=300)
    from devenv import paths

    cache = paths.cache_dir()  # the test runs with the CLI's environment
    assert Path(base).resolve().is_relative_to(cache.resolve())
    others = {root: _listing(root, skip=inst_dir) for root in (d.home, cache, d.project)}
    base_digest = hashlib.sha256(Path(base).read_bytes()).hexdigest()
    d.ok("delete", "-n", name)
    assert not inst_dir.exists()
    assert (d.home / "instances").is_dir()
    for root, before in others.items():  # the rest of devenv's home, the image cache, the mounted project
        assert _listing(root, skip=inst_dir) == before, f"delete changed something under {root}"
    assert hashlib.sha256(Path(base).read_bytes()).hexdigest() == base_digest, "the cached base image stays as it was"


def _listing(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under root but `skip`, with its mode and (for files) size."""
    out: dict[str, tuple[int, int]] = {}
    for p in root.rglob("*"):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size if stat.S_ISREG(st.st_mode) else 0)
    return out
