"""A cloned devenv.toml shares folders beyond its project only once the user allowed that exact file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from devenv import config, mounttrust
from devenv.errors import ExitCode, PermissionProblem

pytestmark = pytest.mark.usefixtures("fake")


@pytest.fixture
def project(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cwd the `home` fixture made, with a user home folder beside it."""
    user_home = home.parent / "userhome"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    return Path.cwd()


def instance_toml(home: Path, name: str) -> str:
    return (home / "instances" / name / "devenv.toml").read_text()


def test_a_mount_of_the_home_folder_waits_for_the_user(home: Path, project: Path, cli: Any) -> None:
    toml = project / "devenv.toml"
    toml.write_text('name = "web"\nbackend = "fake"\n\n[[mounts]]\nlocation = "~"\nwritable = true\n')
    ran = cli("start")
    assert ran.code == ExitCode.PERMISSION, ran.err
    assert f"{toml}:5: ~ -> {os.environ['HOME']} (writable)" in ran.err
    assert "--allow-mounts" in ran.err
    assert not (home / "instances" / "web").exists()  # nothing made before the answer

    ran = cli("start", "--allow-mounts")
    assert ran.code == 0, ran.err
    store = home / mounttrust.STORE
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert json.loads(store.read_text()) == {str(toml): mounttrust._digest(toml)}
    assert f'location = "{os.environ["HOME"]}"' in instance_toml(home, "web")  # kept resolved

    assert cli("delete", "-n", "web", "--force").code == 0
    assert cli("start").code == 0  # the same file: remembered
    assert cli("delete", "-n", "web", "--force").code == 0
    toml.write_text(toml.read_text() + "# a git pull later\n")
    assert cli("start").code == ExitCode.PERMISSION  # another file now: asked again


def test_mounts_inside_the_project_need_no_allowance(home: Path, project: Path, cli: Any) -> None:
    (project / "sub").mkdir()
    (project / "devenv.toml").write_text('name = "web"\nbackend = "fake"\n\n[[mounts]]\nlocation = "sub"\n')
    ran = cli("start")
    assert ran.code == 0, ran.err
    assert f'location = "{project / "sub"}"' in instance_toml(home, "web")  # the project's, not the cwd's


def test_a_symlink_in_the_project_to_outside_counts_as_outside(home: Path, project: Path) -> None:
    (project / "h").symlink_to(os.environ["HOME"])
    toml = project / "devenv.toml"
    toml.write_text('[[mounts]]\nlocation = "h"\n')
    outside = mounttrust.outside_mounts(toml, config.load_file(toml))
    assert [(i, str(where)) for i, _, where in outside] == [(0, os.path.realpath(os.environ["HOME"]))]


def test_a_yes_on_the_terminal_allows_and_a_no_refuses(home: Path, project: Path) -> None:
    toml = project / "devenv.toml"
    toml.write_text('[[mounts]]\nlocation = "/"\n')
    cfg = config.load_file(toml)
    asked: list[str] = []
    with pytest.raises(PermissionProblem, match="outside its project folder"):
        mounttrust.check(toml, cfg, allow_flag=False, ask=lambda q: asked.append(q) or False)
    assert asked and "Allow this file's mounts? [y/N]" in asked[0]
    mounttrust.check(toml, cfg, allow_flag=False, ask=lambda q: True)
    assert mounttrust.is_allowed(toml)
