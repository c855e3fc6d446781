"""Compile launcher.c with the host's C compiler, or say why not.

Stdlib only and importable by file path: hatch_build.py runs this at install
time, before devenv or any of its dependencies is installed; the tests use it
to build the launcher they exercise.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("launcher.c")
OPT_OUT_ENV = "DEVENV_NATIVE_LAUNCHER"  # "0" at install: `devenv` is the Python CLI itself
PYTHON_CLI = "devenv-py"  # the Python CLI's console script beside the launcher (launcher.c's PY_CLI)
FLAGS = ["-std=c99", "-O2"]


def wanted() -> str | None:
    """Why no launcher is built on this host (None: try)."""
    if os.name == "nt":
        return "Windows: the Python CLI is `devenv`"
    if os.environ.get(OPT_OUT_ENV, "").strip() == "0":
        return f"{OPT_OUT_ENV}=0"
    return None


def compiler() -> list[str] | None:
    """$CC, else cc, gcc or clang from PATH; on macOS only with the developer tools installed.

    macOS's /usr/bin/cc without them opens an install dialog instead of compiling.
    """
    if sys.platform == "darwin":
        try:
            if subprocess.run(["xcode-select", "-p"], capture_output=True, timeout=10, check=False).returncode != 0:
                return None
        except (OSError, subprocess.TimeoutExpired):
            return None
    cc = os.environ.get("CC", "").strip()
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def build(out_dir: Path) -> tuple[Path | None, str]:
    """The compiled launcher in out_dir (reused while launcher.c is unchanged), or None and the reason."""
    reason = wanted()
    if reason is not None:
        return None, reason
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc, clang or $CC)"
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(cc + FLAGS).encode()).hexdigest()[:16]
    target = out_dir / digest / "devenv"
    if target.is_file() and _works(target):
        return target, f"built earlier with {cc[0]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name("devenv.tmp")
    try:
        r = subprocess.run([*cc, *FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{cc[0]} failed to run: {e}"
    if r.returncode != 0 or not tmp.is_file():
        return None, f"{cc[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}"
    if not _works(tmp):
        return None, "the compiled launcher does not run here"
    os.replace(tmp, target)
    return target, f"built with {cc[0]}"


def _works(path: Path) -> bool:
    try:
        r = subprocess.run([str(path), "--launcher-version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.startswith("devenv launcher ")
