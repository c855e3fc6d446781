"""Every unix socket devenv makes fits macOS's 104-byte sun_path, or lives in the checked short folder.

The worst case on a Mac: a 40-character user name, the state root under
~/Library/Application Support/devenv, a 32-character instance name. None of
the natural paths fits there; each socket must then be in a 0700 folder of
this user's in the per-user temp dir macOS gives every user (never the shared
/tmp), checked before anyone binds or connects. The Mac's paths are computed
here, not made: the folders that are made and checked are in
tests/unit/test_socket_dirs.py and at the end of this file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv import paths
from devenv.backends.drivers import qemuproc
from devenv.backends.drivers.qmp import Qmp
from devenv.errors import PermissionProblem
from devenv.hostagent import wire
from devenv.hostagent.forward import bind_unix
from devenv.hostagent.relay import RelayStream

USER = "u" * 40
NAME = "n" * 32
MAC_HOME = f"/Users/{USER}/Library/Application Support/devenv"
MAC_TMPDIR = "/var/folders/3g/j5mz1h8d5ls2q8p3rk5xcpxr0000gn/T/"  # confstr(_CS_DARWIN_USER_TEMP_DIR)'s form
MAC_UID = 502


def test_every_socket_paths_py_names_is_one_socket_path_places() -> None:
    """A socket added to paths.py without socket_path() placing it would escape the limit: this fails first."""
    named = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str) and v.endswith(".sock")}
    assert named == set(wire.INSTANCE_SOCKETS) == {"hostagent.sock", "sock/docker.sock", "qmp.sock", "relay.sock"}
    assert len({os.path.basename(s) for s in wire.INSTANCE_SOCKETS}) == 4  # one short folder holds them all


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> str:
    """A Mac's state root and temp dir, as strings (nothing is made)."""
    monkeypatch.setenv(paths.ENV_HOME, MAC_HOME)
    monkeypatch.setattr(wire, "user_temp_dir", lambda system=None: MAC_TMPDIR)
    monkeypatch.setattr(os, "getuid", lambda: MAC_UID)
    return paths.instance_dir_str(NAME)


def test_on_a_mac_with_the_longest_names_every_socket_is_in_the_short_folder(mac: str) -> None:
    assert mac == f"/Users/{USER}/Library/Application Support/devenv/instances/{NAME}"
    digest = hashlib.sha256(os.fsencode(mac)).hexdigest()[:16]
    folder = f"{MAC_TMPDIR}devenv-{MAC_UID}/{digest}"
    expected = {
        "hostagent.sock": f"{folder}/hostagent.sock",
        "sock/docker.sock": f"{folder}/docker.sock",
        "qmp.sock": f"{folder}/qmp.sock",
        "relay.sock": f"{folder}/relay.sock",
    }
    got = {rel: wire.socket_str(mac, rel) for rel in wire.INSTANCE_SOCKETS}
    assert got == expected
    for rel, path in got.items():
        natural = os.path.join(mac, rel)
        assert len(os.fsencode(natural)) >= paths.SUN_PATH_MAX, natural  # the case this test is for
        assert len(os.fsencode(path)) < paths.SUN_PATH_MAX, path
        assert wire.in_short_dir(path)
    assert max(len(p) for p in got.values()) == 91  # hostagent.sock; 12 bytes to spare (a 10-digit uid takes 7)


def test_each_user_of_a_socket_asks_the_one_placement(mac: str) -> None:
    """The host agent, its clients, QEMU's argv and the QEMU driver's QMP and relay reads all go through it."""
    from devenv import hostagent
    from devenv.backends.base import InstanceRef
    from devenv.backends.drivers.qemu import QemuDriver
    from devenv.config import Config

    inst = Path(mac)
    assert hostagent.control_path(inst) == wire.socket_path(inst, paths.HOSTAGENT_SOCK)
    assert hostagent.docker_env(inst)["DOCKER_HOST"] == f"unix://{wire.socket_str(mac, paths.ENGINE_SOCK)}"
    assert qemuproc.qmp_socket(inst) == wire.socket_path(inst, paths.QMP_SOCK)
    assert qemuproc.relay_socket(inst) == wire.socket_path(inst, paths.RELAY_SOCK)
    plan = QemuDriver().agent_plan(InstanceRef(NAME, inst, Config(name=NAME)))
    assert plan.relay_socket == wire.socket_path(inst, paths.RELAY_SOCK)


def test_a_short_state_root_keeps_every_socket_in_the_instance_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.ENV_HOME, "/Users/dev/.devenv")
    inst = paths.instance_dir_str("dev")
    assert [wire.socket_str(inst, rel) for rel in wire.INSTANCE_SOCKETS] == [
        f"{inst}/hostagent.sock",
        f"{inst}/sock/docker.sock",
        f"{inst}/qmp.sock",
        f"{inst}/relay.sock",
    ]


def test_macos_sockets_go_to_the_users_own_temp_dir_never_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """confstr(_CS_DARWIN_USER_TEMP_DIR) first (what launchd sets TMPDIR to), even when TMPDIR says /tmp."""
    asked: list[int] = []

    def confstr(name: int) -> str:
        asked.append(name)
        return MAC_TMPDIR

    monkeypatch.setattr(os, "confstr", confstr)
    monkeypatch.setenv("TMPDIR", "/tmp")
    assert wire.user_temp_dir("darwin") == MAC_TMPDIR
    assert asked == [65537]

    def no_confstr(name: int) -> str:
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(os, "confstr", no_confstr)
    monkeypatch.setenv("TMPDIR", MAC_TMPDIR)
    assert wire.user_temp_dir("darwin") == MAC_TMPDIR  # then launchd's TMPDIR
    monkeypatch.setattr(tempfile, "tempdir", "/somewhere/else")
    assert wire.user_temp_dir("linux") == "/somewhere/else"  # elsewhere the temp dir, checked as shared


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short, world-writable temp dir standing in for one other users could write to."""
    d = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))
    os.chmod(d, 0o1777)
    monkeypatch.setattr(wire, "user_temp_dir", lambda system=None: str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


pytestmark_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.name == "nt", reason="unix sockets")


@pytestmark_unix
def test_the_qemu_sockets_short_folder_is_made_0700_and_another_users_is_refused(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = tmp_path / ("d" * 60) / ("e" * 60) / NAME
    inst.mkdir(parents=True, mode=0o700)
    qmp, relay = qemuproc.qmp_socket(inst), qemuproc.relay_socket(inst)
    assert qmp.parent == relay.parent == wire.short_socket_dir(inst)
    for sock in (qmp, relay):  # what QemuDriver._launch does before QEMU binds them
        wire.secure_socket_dirs(sock, create=True)
    assert stat.S_IMODE(os.lstat(qmp.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(wire.short_socket_base()).st_mode) == 0o700
    bind_unix(qmp).close()  # stands in for QEMU's listener
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 4242)  # now "we" are another user, who must not trust it
    monkeypatch.setattr(wire, "short_socket_base", lambda: qmp.parent.parent)
    with pytest.raises(PermissionProblem) as e:
        Qmp(qmp).connect()
    assert e.value.message == (
        f"the socket folder {qmp.parent.parent} belongs to another user (uid {real}):"
        " devenv will not put its sockets there"
    )
    with pytest.raises(PermissionProblem):
        RelayStream(relay, wait=0.1)
