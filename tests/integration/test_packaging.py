"""What `pip install` makes the `devenv` command: the wheels the real build backend produces from this tree.

hatch_build.py decides at build time; these build real wheels with pip and
hatchling (no build isolation: the test venv has hatchling) from a copy of
the source, and read what an installer would install from them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devenv.launcher import build
from tests.launcher_build import require_toolchain

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "devenv.cli.entry:main"

pytestmark = pytest.mark.integration


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "hatch_build.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("devenv", "vmimages", "provisioning"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def _wheel(src: Path, out: Path, **env: str) -> tuple[str, dict[str, bytes], dict[str, int]]:
    """(wheel file name, {archive name: data}, {archive name: mode})."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("devenv-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return (
            wheel.name,
            {i.filename: z.read(i) for i in z.infolist()},
            {i.filename: i.external_attr >> 16 for i in z.infolist()},
        )


def _entry_points(files: dict[str, bytes]) -> str:
    (name,) = [n for n in files if n.endswith(".dist-info/entry_points.txt")]
    return files[name].decode()


def _needs_hatchling() -> None:
    try:
        import hatchling  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("hatchling is missing: the test extra (pip install -e '.[test]') brings it")
        pytest.skip("hatchling is not installed in this venv (the test extra brings it)")


def test_with_a_compiler_devenv_is_the_launcher_and_devenv_py_the_python_cli(tmp_path: Path) -> None:
    _needs_hatchling()
    require_toolchain()
    name, files, modes = _wheel(_source(tmp_path), tmp_path / "out")
    assert not name.endswith("-py3-none-any.whl"), name  # a binary inside: tagged for this platform
    assert f"devenv-py = {ENTRY}" in _entry_points(files)
    assert "\ndevenv = " not in _entry_points(files)
    (script,) = [n for n in files if n.endswith(".data/scripts/devenv")]
    assert files[script][:4] == b"\x7fELF" and modes[script] & 0o755 == 0o755


@pytest.mark.parametrize("env", [{"CC": "false"}, {build.OPT_OUT_ENV: "0"}], ids=["compiler-fails", "opted-out"])
def test_without_a_launcher_devenv_is_the_python_cli(tmp_path: Path, env: dict[str, str]) -> None:
    _needs_hatchling()
    name, files, _ = _wheel(_source(tmp_path), tmp_path / "out", **env)
    assert name.endswith("-py3-none-any.whl"), name
    assert f"devenv = {ENTRY}" in _entry_points(files) and "devenv-py" not in _entry_points(files)
    assert not [n for n in files if ".data/scripts/" in n]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_source_tree_still_installs(tmp_path: Path) -> None:
    _needs_hatchling()
    require_toolchain()
    src = _source(tmp_path)
    for d, _dirs, names in os.walk(src):
        for n in names:
            os.chmod(os.path.join(d, n), 0o444)
        os.chmod(d, 0o555)
    try:
        _, files, _ = _wheel(src, tmp_path / "out")
    finally:
        for d, _dirs, _names in os.walk(src):
            os.chmod(d, 0o755)
    assert [n for n in files if n.endswith(".data/scripts/devenv")]
