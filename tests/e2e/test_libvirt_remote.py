"""The libvirt driver on a daemon of "another host": qemu+ssh://root@127.0.0.1:PORT/system.

A second sshd on 127.0.0.1 (ci/remote-libvirt-host.sh, started by ci/test.sh
as root) stands in for the other host: devenv reaches its libvirtd through
libvirt's ssh transport and the guest through it (`ssh -W`), as it would a
build box. Everything SSH reads comes from the test's own files: an `ssh`
first on PATH runs the real one with the test's ssh_config (the key, and a
known_hosts that pins that sshd's host key), so ~/.ssh is never read or
written. Never StrictHostKeyChecking=no: the first test shows that an
unpinned host is refused, and its known_hosts left as it was.

Skipped, with the reason, where no such sshd was set up (a run by hand
without the root preamble); in CI it must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devenv import hostagent
from tests.e2e.conftest import Devenv
from tests.e2e.drivers import LIBVIRT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
]

NAME = "e2e-remote"


@dataclass
class Remote:
    d: Devenv
    uri: str
    known_hosts: Path
    pinned: str  # the known_hosts line of the stand-in host


def _provided() -> tuple[str, Path, Path]:
    names = ("DEVENV_TEST_LIBVIRT_REMOTE", "DEVENV_TEST_LIBVIRT_REMOTE_KEY", "DEVENV_TEST_LIBVIRT_REMOTE_HOST_KEY")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        why = f"{', '.join(missing)} not set: ci/test.sh sets them up as root (ci/remote-libvirt-host.sh)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    lacking = LIBVIRT.missing()
    if lacking:
        pytest.fail(f"the libvirt driver cannot run here: {lacking}") if os.environ.get("CI") else pytest.skip(lacking)
    return os.environ[names[0]], Path(os.environ[names[1]]), Path(os.environ[names[2]])


@pytest.fixture(scope="module")
def remote(devenv_cli: Devenv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    dest, key, host_key = _provided()
    userhost, _, port = dest.rpartition(":")
    host = userhost.rpartition("@")[2]
    ssh_dir = tmp_path_factory.mktemp("remote-ssh")
    known = ssh_dir / "known_hosts"
    pinned = f"[{host}]:{port} {host_key.read_text().strip()}\n"
    config = ssh_dir / "ssh_config"
    config.write_text(
        f"Host {host}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
        f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
    )
    bin_dir = ssh_dir / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    real = shutil.which("ssh")
    assert real, "the OpenSSH client is missing; ci/setup-linux.sh installs it"
    wrapper.write_text(f'#!/bin/sh\nexec {real} -F {config} "$@"\n')
    wrapper.chmod(0o755)
    project = tmp_path_factory.mktemp("e2e-remote")
    uri = f"qemu+ssh://{userhost}:{port}/system"
    (project / "devenv.toml").write_text(f'name = "{NAME}"\nbackend = "libvirt"\nlibvirt_uri = "{uri}"\n')
    env = {**devenv_cli.env, **LIBVIRT.environment(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("LIBVIRT_DEFAULT_URI", None)
    d = Devenv(devenv_cli.home, env, project)
    yield Remote(d, uri, known, pinned)
    known.write_text(pinned)
    d.run("delete", "--force", "-n", NAME, timeout=300)


def virsh(r: Remote, *args: str) -> str:
    done = subprocess.run(
        ["virsh", "-c", r.uri + "?no_tty=1", *args], capture_output=True, text=True, env=r.d.env, timeout=120
    )
    assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_an_unpinned_host_is_refused_and_its_key_never_accepted(remote: Remote) -> None:
    remote.known_hosts.write_text("")
    r = remote.d.run("start", timeout=300)
    assert r.returncode != 0
    err = r.stderr.decode()
    host_port = remote.pinned.split()[0]
    assert (
        f"libvirt ({remote.uri}): the SSH host key of {host_port} is not in your known_hosts,"
        " and devenv never accepts one by itself" in err
    ), err
    assert "ssh-keyscan -p" in err
    assert remote.known_hosts.read_text() == ""  # nothing was added behind the user's back


def test_a_remote_system_daemon_boots_execs_and_deletes(remote: Remote) -> None:
    remote.known_hosts.write_text(remote.pinned)
    d = remote.d
    started = d.ok("start", timeout=1500)
    steps = started.stderr.decode()
    assert f"(qemu, {remote.uri})" in steps and "DHCP lease on the NAT network `default`" in steps, steps
    inst_dir = d.home / "instances" / NAME
    address = (inst_dir / "libvirt.address").read_text().strip()
    assert address.startswith("192.168.122."), address
    assert not (inst_dir / "libvirt.pid").exists()  # the QEMU of another host is no process of this one
    r = d.run("exec", "--", "sh", "-c", "read x; echo got $x; hostname -I; exit 7", input=b"line\n")
    assert r.returncode == 7, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith("got line\n") and address in out, out
    # the project folder: reverse sshfs through the host agent's session (no 9p for another host's QEMU)
    (d.project / "from-the-host.txt").write_text("over sshfs, through the other host\n")
    seen = d.ok("exec", "--", "cat", str(d.project / "from-the-host.txt")).stdout  # exec waits for mounts
    assert seen == b"over sshfs, through the other host\n"
    mounts = [(m["guest"], m["type"], m["state"]) for m in hostagent.state(inst_dir).get("mounts") or []]
    assert mounts == [(str(d.project), "sshfs", "mounted")], (mounts, hostagent.log_tail(inst_dir))
    config = d.ok("ssh-config").stdout.decode()
    assert (
        f"HostName {address}" in config and "ProxyCommand ssh -o BatchMode=yes -o StrictHostKeyChecking=yes" in config
    )
    domains = virsh(remote, "list", "--all", "--name").split()
    ours = [n for n in domains if n.startswith(f"devenv-{NAME}-")]
    assert len(ours) == 1, domains
    d.ok("delete", "--force", timeout=300)
    assert ours[0] not in virsh(remote, "list", "--all", "--name").split()
    assert f"{ours[0]}.qcow2" not in virsh(remote, "vol-list", "devenv")
    assert not inst_dir.exists()


def test_an_instance_made_again_where_one_was_deleted_gets_its_own_lease(remote: Remote) -> None:
    """Same name, same folder: same domain name and MAC, and the deleted guest's lease still on the network.

    The new guest asks with another client id (a new machine-id) and gets another
    address. devenv once took the old lease, read first, and `start` hung on an
    address nobody held (libvirtnet.leases_now).
    """
    remote.known_hosts.write_text(remote.pinned)
    d = remote.d
    inst_dir = d.home / "instances" / NAME
    d.ok("start", timeout=1500)
    first = (inst_dir / "libvirt.address").read_text().strip()
    d.ok("delete", "--force", timeout=300)
    d.ok("start", timeout=900)
    try:
        again = (inst_dir / "libvirt.address").read_text().strip()
        r = d.run("exec", "--", "hostname", "-I")
        assert r.returncode == 0 and again in r.stdout.decode().split(), (first, again, r.stderr.decode())
    finally:
        d.ok("delete", "--force", timeout=300)
