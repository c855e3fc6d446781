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


def test_exec_skips_an_agent_the_launcher_already_asked(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native launcher got "unavailable" (after the agent's wait): Python goes straight to SSH."""
    import os

    from devenv.cli import commands, entry

    asked: list[object] = []
    slow_path: list[bool] = []
    monkeypatch.setattr(entry, "_exec_through_agent", lambda *a: asked.append(a) or 0)
    monkeypatch.setattr(
        commands, "exec_", lambda name, command, workdir, env_flags, ask_agent: slow_path.append(ask_agent) or 5
    )
    monkeypatch.setenv(entry.AGENT_UNAVAILABLE_ENV, "1")
    assert entry.main(["exec", "-n", "x", "--", "true"]) == 5
    assert asked == [] and entry.AGENT_UNAVAILABLE_ENV not in os.environ  # not passed on to anything else
    assert slow_path == [False]  # nor does the backend ask the agent again (and wait out its timeout twice)
    assert entry.main(["exec", "-n", "x", "--", "true"]) == 0
    assert len(asked) == 1


def test_leaving_early_flushes_what_python_buffered_and_keeps_the_exit_code() -> None:
    """_leave skips the interpreter's teardown: stdio still gets out, and 300 becomes 44 as sys.exit(300) would."""
    import subprocess
    import sys

    code = (
        "import sys; from devenv.cli.entry import _leave; sys.stdout.write('out'); sys.stderr.write('err'); _leave(300)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (300 & 0xFF, b"out", b"err")
