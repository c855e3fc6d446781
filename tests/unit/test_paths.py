"""paths.home(): DEVENV_HOME, else exactly what platformdirs says."""

from __future__ import annotations

from pathlib import Path

import pytest
from platformdirs import user_data_path

from devenv import paths


@pytest.mark.parametrize("xdg", [None, "", "  ", "/srv/data"])
def test_home_agrees_with_platformdirs(xdg: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVENV_HOME", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert paths.home() == user_data_path("devenv", appauthor=False)


def test_devenv_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "x"))
    assert paths.home() == tmp_path / "x"
    assert paths.instance_dir("a") == tmp_path / "x" / "instances" / "a"
