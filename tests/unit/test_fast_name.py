"""The hot path's instance-name reader agrees with config.resolve_name, or declines (None)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv import config, paths
from devenv.cli.entry import _quick_name


@pytest.mark.parametrize(
    "text",
    [
        'name = "web"\n',
        'name="web" # the project\ncpus = 2\n',
        'cpus = 2\nname = "a.b_c-1"\n',
        "cpus = 2\n",
        '[[mounts]]\nname = "not-top-level"\n',
        "",
    ],
)
def test_agrees_with_the_full_resolver(text: str, home: Path) -> None:
    Path("devenv.toml").write_text(text)
    project = config.find_project_config()
    assert _quick_name(None) == config.resolve_name(None, project)


@pytest.mark.parametrize("text", ["name = 'single'\n", 'name = "a/b"\n', 'namespace = "x"\n', 'name = "x" y\n'])
def test_declines_what_it_cannot_read_exactly(text: str, home: Path) -> None:
    Path("devenv.toml").write_text(text)
    assert _quick_name(None) is None


def test_explicit_and_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _quick_name("x1") == "x1"
    assert _quick_name("a/b") is None
    monkeypatch.setenv("DEVENV_INSTANCE", "fromenv")
    assert _quick_name(None) == "fromenv"


def test_str_paths_agree_with_paths(home: Path) -> None:
    assert paths.instance_dir_str("n") == str(paths.instance_dir("n"))
