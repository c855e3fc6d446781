"""Build the native launcher for a test, or skip where this host cannot have one (fail in CI on Linux)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from devenv.launcher import build


def require_toolchain() -> None:
    """Skip where this host cannot build the launcher (fail in CI on Linux, where setup installs gcc)."""
    reason = build.wanted() or (None if build.compiler() else "no C compiler (cc, gcc, clang or $CC)")
    if reason is None:
        return
    if os.environ.get("CI") and sys.platform.startswith("linux"):
        pytest.fail(f"the native launcher cannot be built: {reason}; ci/setup-linux.sh installs gcc")
    pytest.skip(f"no native launcher on this host ({reason}): devenv is the Python CLI itself here")


def built_launcher(workdir: Path) -> Path:
    """launcher.c compiled into workdir/bin/devenv (nothing beside it: a hand-over to Python fails loudly)."""
    require_toolchain()
    built, why = build.build(workdir / "build")
    assert built is not None, why
    bindir = workdir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copy(built, bindir / "devenv")
    return bindir / "devenv"
