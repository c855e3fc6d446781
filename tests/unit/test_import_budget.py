"""Hot commands must not import typer or paramiko (principle 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("typer", "paramiko", "rich", "pydantic")


def imported_modules(args: list[str], env: dict[str, str]) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "devenv", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("args", [["--version"], ["list"], ["list", "--json"], ["exec", "-n", "ghost", "--", "true"]])
def test_hot_paths_stay_light(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "DEVENV_HOME": str(tmp_path)}
    mods = imported_modules(args, env)
    assert "devenv" in mods
    assert not (mods & set(HEAVY)), f"{args} imported {sorted(mods & set(HEAVY))}"


def test_other_commands_do_use_typer(tmp_path: Path) -> None:
    env = {**os.environ, "DEVENV_HOME": str(tmp_path)}
    assert "typer" in imported_modules(["status", "-n", "ghost"], env)
