"""Another local user is refused by an instance: its engine socket, the host agent's control socket, QMP.

ci/test.sh makes a second user (DEVENV_TEST_OTHER_USER) that the test user
may run commands as through sudo, and as no one else. As that user, a connect
to each of the shared instance's unix sockets fails with EACCES, while the
owner's own `docker` works through the same engine socket. The instance
folder is 0700 and every secret in it 0600, the guest's memory file too.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devenv import backends, config, hostagent, paths
from devenv.backends.base import InstanceRef
from devenv.backends.vm import VmBackend
from devenv.hostagent.wire import control_path, engine_path
from tests.e2e.conftest import Devenv

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts")

ENV = "DEVENV_TEST_OTHER_USER"

# run as the other user: connect to each path given, print one line per path: "ok" or the errno's name
PROBE = """
import errno, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        s.close()
"""


@pytest.fixture(scope="session")
def other_user() -> str:
    """The other user's name; asked before the shared VM boots, so a skip costs no boot."""
    user = os.environ.get(ENV, "")
    why = ""
    if not user:
        why = f"{ENV} names no other local user (ci/test.sh makes one as root)"
    elif shutil.which("sudo") is None:
        why = "sudo is not installed (ci/test.sh installs it)"
    elif subprocess.run(["sudo", "-n", "-u", user, "true"], capture_output=True, timeout=30).returncode != 0:
        why = f"this user may not run commands as {user} through sudo without a password (ci/test.sh allows it)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return user


def _as_other(user: str, *socks: Path) -> list[str]:
    ran = subprocess.run(
        ["sudo", "-n", "-u", user, "/usr/bin/python3", "-c", PROBE, *map(str, socks)],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.split()


def test_another_user_cannot_reach_the_instances_sockets(
    other_user: str, vm: tuple[Devenv, str, Any], tmp_path: Path
) -> None:
    d, name, _ = vm
    inst = d.home / "instances" / name
    # QMP where devenv runs QEMU itself (the qemu driver); libvirt keeps the monitor of the QEMU it runs
    qmp = [inst / paths.QMP_SOCK] if config.load_file(inst / paths.INSTANCE_CONFIG).backend == "qemu" else []
    socks = [engine_path(inst), control_path(inst), *qmp]
    for sock in socks:
        assert stat.S_ISSOCK(sock.stat().st_mode), sock
        assert not sock.stat().st_mode & 0o022, f"{sock} is writable by others: {oct(sock.stat().st_mode)}"
    assert _as_other(other_user, *socks) == ["EACCES"] * len(socks)

    # the owner, through the same engine socket
    env = {**os.environ, **hostagent.docker_env(inst), "DOCKER_CONFIG": str(tmp_path / "docker")}
    assert env["DOCKER_HOST"] == f"unix://{engine_path(inst)}"
    ran = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    # the refusal is the folders', not a socket gone: the owner's own probe connects to each
    probe = subprocess.run([sys.executable, "-c", PROBE, *map(str, socks)], capture_output=True, text=True)
    assert probe.stdout.split() == ["ok"] * len(socks)


def test_the_instance_folder_is_private_and_its_secrets_0600(vm: tuple[Devenv, str, Any]) -> None:
    d, name, _ = vm
    inst = d.home / "instances" / name
    assert stat.S_IMODE(inst.stat().st_mode) == 0o700
    assert stat.S_IMODE((inst / paths.SSH_DIR).stat().st_mode) == 0o700
    # the guest's memory file where the driver keeps one (QEMU's, for suspend): the driver names it
    cfg = config.load_file(inst / paths.INSTANCE_CONFIG)
    vm_backend = backends.load(cfg.backend)
    assert isinstance(vm_backend, VmBackend), cfg.backend
    memory_file = vm_backend.driver.agent_plan(InstanceRef(name, inst, cfg)).memory_file
    assert memory_file is not None or cfg.backend != "qemu"
    for rel in (paths.SSH_KEY, paths.SSH_HOST_KEY, paths.SSH_KNOWN_HOSTS, paths.CIDATA, *filter(None, [memory_file])):
        assert stat.S_IMODE((inst / rel).stat().st_mode) == 0o600, rel
    for sock in (engine_path(inst), control_path(inst)):
        if not sock.is_relative_to(inst):  # the short fallback folder for a long path: private as well
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700, sock.parent
