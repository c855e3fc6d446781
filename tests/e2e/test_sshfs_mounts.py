"""Reverse sshfs against a real guest: the mount kind CI's ordinary user never gets by itself.

The shared VM mounts with 9p when the guest user's uid is the host user's (as for
the CI user), so this module's own instance forces DEVENV_MOUNT_TYPE=sshfs and
both mount kinds run on every CI. One VM per driver for the module (the
conformance suite's `driver` fixture), deleted at its end.

What is tried here is what root in the guest can do: besides the files, it
can write its own SFTP requests into sshfs's channel (/proc/PID/fd/1 of the
sshfs process is the pipe to the host), as a compromised guest would. The
host refuses any that names a path outside the shared folder
(devenv/hostagent/sftpguard.py; every request kind, against the real
sftp-server: tests/integration/test_sftp_confinement.py).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv import hostagent
from devenv.provision.engines import LOCAL_IMAGE
from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase, guest_side_only

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
    guest_side_only,
]


# Root in the guest writes SFTP MKDIR requests straight into the channel of the sshfs serving argv[1].
INJECT = r"""
import glob, os, struct, sys
mount = ":" + sys.argv[1]
def serves(pid):
    try:
        return open(f"/proc/{pid}/comm").read().strip() == "sshfs" and mount.encode() in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
pid = next(p.split("/")[2] for p in glob.glob("/proc/[0-9]*") if serves(p.split("/")[2]))
def string(b): return struct.pack(">I", len(b)) + b
fd = os.open(f"/proc/{pid}/fd/1", os.O_WRONLY)
for i, path in enumerate(sys.argv[2:]):
    body = struct.pack(">BI", 14, 0x7FFF0000 + i) + string(path.encode()) + struct.pack(">I", 0)
    os.write(fd, struct.pack(">I", len(body)) + body)
"""


@dataclass
class Machine:
    d: Devenv
    name: str
    project: Path
    read_only: Path
    outside: Path

    @property
    def inst(self) -> Path:
        return self.d.home / "instances" / self.name

    def sh(self, script: str) -> subprocess.CompletedProcess[bytes]:
        return self.d.run("exec", "-n", self.name, "-w", "/", "--", "sh", "-c", script, timeout=300)

    def mounts(self) -> list[dict[str, Any]]:
        return list(hostagent.state(self.inst).get("mounts") or [])


@pytest.fixture(scope="module")
def machine(devenv_cli: Devenv, driver: DriverCase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    root = tmp_path_factory.mktemp("e2e-sshfs")
    project, read_only, outside = root / "project", root / "reference", root / "private"
    for folder in (project, read_only, outside):
        folder.mkdir()
    (read_only / "locked.txt").write_text("read me\n")
    (outside / "secret").write_text("token\n")
    name = f"{driver.instance}-sshfs"
    (project / "devenv.toml").write_text(
        f'name = "{name}"\nbackend = "{driver.backend}"\n\n[[mounts]]\nlocation = "{read_only}"\nwritable = false\n'
    )
    d = Devenv(devenv_cli.home, {**devenv_cli.env, **driver.environment(), "DEVENV_MOUNT_TYPE": "sshfs"}, project)
    d.ok("start", "--allow-mounts")  # the read-only folder is outside the project: allowed once, by hash
    m = Machine(d, name, project, read_only, outside)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        len(m.mounts()) == 2 and all(r["state"] in ("mounted", "failed") for r in m.mounts())
    ):
        time.sleep(0.5)
    yield m
    d.run("delete", "--force", "-n", name, timeout=300)


def test_both_folders_are_sshfs_mounts(machine: Machine) -> None:
    got = {(r["guest"], r["type"], r["writable"], r["state"]) for r in machine.mounts()}
    assert got == {
        (str(machine.project), "sshfs", True, "mounted"),
        (str(machine.read_only), "sshfs", False, "mounted"),
    }, (machine.mounts(), hostagent.log_tail(machine.inst))
    status = json.loads(machine.d.ok("status", "-n", machine.name, "--json").stdout)
    assert status["state"] == "running"


def test_the_project_folder_is_shared_both_ways_and_with_containers(machine: Machine) -> None:
    (machine.project / "from-host.txt").write_text("written on the host\n")
    p = shlex.quote(str(machine.project))
    r = machine.sh(f"cat {p}/from-host.txt && echo written in the guest > {p}/from-guest.txt")
    assert (r.returncode, r.stdout) == (0, b"written on the host\n"), r.stderr
    assert (machine.project / "from-guest.txt").read_text() == "written in the guest\n"
    # dockerd runs as root: the mount is allow_other, and root's writes land as the host user's files
    r = machine.sh(f"docker run --rm -v {p}:/w {LOCAL_IMAGE} sh -c 'cat /w/from-host.txt; echo c > /w/from-container'")
    assert (r.returncode, r.stdout) == (0, b"written on the host\n"), r.stderr
    assert (machine.project / "from-container").read_text() == "c\n"
    assert (machine.project / "from-container").stat().st_uid == os.getuid()


def test_an_edit_on_the_host_shows_in_the_guest_with_its_new_size_at_once(machine: Machine) -> None:
    """sshfs's stat cache held a file's old size for 20 s: a server in the guest sent the old length."""
    f = machine.project / "edited.txt"
    f.write_text("the first version, longer\n")
    q = shlex.quote(str(f))
    r = machine.sh(f"stat -c %s {q}; cat {q}")  # the guest has seen (and cached) the first version
    assert (r.returncode, r.stdout) == (0, b"26\nthe first version, longer\n"), r.stderr
    f.write_text("second\n")
    began = time.monotonic()
    r = machine.sh(f"for i in $(seq 30); do [ $(stat -c %s {q}) = 7 ] && break; sleep 0.1; done; stat -c %s {q}")
    assert r.stdout == b"7\n", (r.stdout, r.stderr)
    assert time.monotonic() - began < 8  # one exec (~1-3 s under TCG) and the 1 s cache, not sshfs's 20 s


def test_a_read_only_folder_refuses_writes_even_from_root(machine: Machine) -> None:
    ro = shlex.quote(str(machine.read_only))
    r = machine.sh(f"cat {ro}/locked.txt")
    assert (r.returncode, r.stdout) == (0, b"read me\n"), r.stderr
    for write in (f"echo x > {ro}/new.txt", f"echo x >> {ro}/locked.txt", f"rm {ro}/locked.txt", f"mkdir {ro}/d"):
        r = machine.sh(f"sudo -n sh -c {shlex.quote(write)}")
        assert r.returncode != 0, write
    assert sorted(os.listdir(machine.read_only)) == ["locked.txt"]
    assert (machine.read_only / "locked.txt").read_text() == "read me\n"


def test_root_in_the_guest_cannot_reach_host_files_outside_the_folder(machine: Machine) -> None:
    """A request written into sshfs's own channel: refused outside the folder, served inside it."""
    planted, made = machine.outside / "planted", machine.project / "made-by-injection"
    inject = ["sudo", "-n", "python3", "-c", INJECT, str(machine.project), str(planted), str(made)]
    r = machine.d.run("exec", "-n", machine.name, "-w", "/", "--", *inject, input=b"")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not made.is_dir():
        time.sleep(0.2)
    assert made.is_dir(), "the request inside the folder was served: the injection reaches the host"
    assert not planted.exists() and sorted(os.listdir(machine.outside)) == ["secret"]
    assert f"refused an SFTP request for {planted}" in (machine.inst / "hostagent.log").read_text()
    # the mount itself keeps serving
    r = machine.sh(f"ls {shlex.quote(str(machine.project))}")
    assert r.returncode == 0 and b"made-by-injection" in r.stdout, r.stderr
    assert {r["state"] for r in machine.mounts()} == {"mounted"}
