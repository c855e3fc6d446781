"""Shared fixtures: an isolated DEVENV_HOME and an in-process CLI runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devenv.testing import use_fake_backend


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state root; the image cache is left alone so built images are reused."""
    root = tmp_path / "devenv-home"
    monkeypatch.setenv("DEVENV_HOME", str(root))
    monkeypatch.delenv("DEVENV_INSTANCE", raising=False)
    project = tmp_path / "work"
    project.mkdir()
    monkeypatch.chdir(project)  # no stray devenv.toml from the repo or a parent
    return root


@pytest.fixture(autouse=True)
def _no_guest_memory_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test's instances that were never stopped leave their guest memory files (fallocated, as big as the
    guest's RAM) in tmp_path, and pytest keeps the last three runs' tmp_paths: 15 GB a run, which filled this
    disk. Removed after the test; the instance folders stay for a look after a failure."""
    root: Path | None = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield  # asked for before the test, tmp_path is torn down after this
    for f in root.rglob("memory.ram") if root is not None else ():
        f.unlink(missing_ok=True)


@pytest.fixture
def fake() -> Iterator[None]:
    with use_fake_backend():
        yield


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str]) -> object:
    """Run the devenv CLI in this process: cli("start", "-n", "x") -> Ran."""
    from devenv.cli.entry import main

    def run(*argv: str) -> Ran:
        capfd.readouterr()
        code = main(list(argv))
        captured = capfd.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content, to prove a failed command changed nothing."""
    if not root.exists():
        return {}
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out
