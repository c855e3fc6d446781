"""Sockets whose natural path is too long live in the shared temp dir: only in folders of this user's.

Another user is played by making os.getuid() answer another uid, so the test
means the same run as root or as an ordinary user.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.errors import PermissionProblem
from devenv.hostagent import client, wire
from devenv.hostagent.forward import bind_unix
from devenv.paths import HOSTAGENT_SOCK

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.name == "nt", reason="unix sockets")


@pytest.fixture
def deep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An instance dir whose sockets cannot fit sun_path; the temp dir a fresh, short one of the test's."""
    shared = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # short: pytest's own tmp paths may not fit
    os.chmod(shared, 0o1777)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(shared))
    inst = tmp_path / ("d" * 60) / ("e" * 60) / "inst"
    inst.mkdir(parents=True, mode=0o700)
    yield inst
    shutil.rmtree(shared, ignore_errors=True)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_the_agent_makes_the_short_folders_0700_and_a_0600_socket(deep: Path) -> None:
    path = wire.control_path(deep)
    assert not str(path).startswith(str(deep))  # the short path, in the temp dir
    s = bind_unix(path)
    try:
        assert mode(wire.short_socket_base()) == 0o700 and mode(path.parent) == 0o700 and mode(path) == 0o600
        assert path.parent.parent == wire.short_socket_base()
    finally:
        s.close()


def test_a_folder_of_ours_left_open_by_an_older_devenv_is_closed(deep: Path) -> None:
    base = wire.short_socket_base()
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    bind_unix(wire.control_path(deep)).close()
    assert mode(base) == 0o700


@pytest.mark.parametrize("open_mode", [0o777, 0o1777, 0o775, 0o757])
def test_a_folder_of_ours_others_could_write_in_is_refused_and_left_as_it_is(deep: Path, open_mode: int) -> None:
    base = wire.short_socket_base()
    base.mkdir(mode=0o700)
    os.chmod(base, open_mode)
    with pytest.raises(PermissionProblem) as e:
        bind_unix(wire.control_path(deep))
    assert f"{base} is writable by other users (mode {open_mode:04o})" in e.value.message
    assert f"rm -r {base}" in e.value.hint
    assert mode(base) == open_mode and list(base.iterdir()) == []


def test_another_users_folder_is_refused_by_the_agent_and_by_a_client(
    deep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = wire.control_path(deep)
    bind_unix(path).close()  # made by "them": the uid that ran this
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 4242)
    monkeypatch.setattr(wire, "short_socket_base", lambda: path.parent.parent)  # the same folder, for "us"
    with pytest.raises(PermissionProblem) as e:
        bind_unix(path)
    assert f"{path.parent.parent} belongs to another user (uid {real})" in e.value.message
    assert "rm -r" in e.value.hint
    with pytest.raises(PermissionProblem):
        client.connect(deep)  # never a request to a socket someone else's folder holds


def test_a_symlink_in_place_of_the_folder_is_refused(deep: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    wire.short_socket_base().symlink_to(elsewhere)
    with pytest.raises(PermissionProblem) as e:
        bind_unix(wire.control_path(deep))
    assert "is not a directory (a symlink or a file)" in e.value.message
    assert list(elsewhere.iterdir()) == []


def test_a_natural_path_in_the_instance_dir_is_unchanged(tmp_path: Path) -> None:
    inst = tmp_path / "i"
    inst.mkdir(mode=0o700)
    path = wire.socket_path(inst, HOSTAGENT_SOCK)
    assert path == inst / HOSTAGENT_SOCK
    bind_unix(path).close()
    assert mode(inst) == 0o700 and mode(path) == 0o600
