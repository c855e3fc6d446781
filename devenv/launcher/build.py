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
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("launcher.c")
OPT_OUT_ENV = "DEVENV_NATIVE_LAUNCHER"  # "0" at install: `devenv` is the Python CLI itself
PYTHON_CLI = "devenv-py"  # the Python CLI's console script beside the launcher (launcher.c's PY_CLI)
FLAGS = ["-std=c99", "-O2"]
# Linux: linked statically where the C library allows, so a wheel carried to another machine (an older
# glibc, musl) still has a `devenv` that starts; else dynamically, for this machine.
LINUX_STATIC = ["-static"]


def native_platform() -> bool:
    """Linux and macOS: where launcher.c is written for (its own path, fd passing, the data dir)."""
    return sys.platform.startswith("linux") or sys.platform == "darwin"


def wanted() -> str | None:
    """Why no launcher is built on this host (None: try)."""
    if not native_platform():
        return f"{sys.platform}: the Python CLI is `devenv` here"
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
    """The compiled launcher in out_dir (reused while launcher.c is unchanged), or None and the reason.

    Never raises: a launcher that cannot be built leaves the Python CLI as `devenv`.
    A read-only out_dir (a read-only source tree) builds in a temporary folder instead.
    """
    reason = wanted()
    if reason is not None:
        return None, reason
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc, clang or $CC)"
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(cc + FLAGS).encode()).hexdigest()[:16]
    try:
        target = out_dir / digest / "devenv"
        if target.is_file() and _works(target):
            return target, f"built earlier with {cc[0]}"
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        target = Path(tempfile.mkdtemp(prefix="devenv-launcher-")) / "devenv"
    tmp = target.with_name("devenv.tmp")
    attempts = [FLAGS + LINUX_STATIC, FLAGS] if sys.platform.startswith("linux") else [FLAGS]
    why = ""
    for flags in attempts:
        try:
            r = subprocess.run([*cc, *flags, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{cc[0]} failed to run: {e}"
        if r.returncode == 0 and tmp.is_file() and _works(tmp):
            try:
                os.replace(tmp, target)
            except OSError as e:
                return None, f"cannot keep the launcher: {e}"
            return target, f"built with {cc[0]} {' '.join(flags)}"
        why = f"{cc[0]} {' '.join(flags)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}"
    return None, why or "the compiled launcher does not run here"


def _works(path: Path) -> bool:
    try:
        r = subprocess.run([str(path), "--launcher-version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.startswith("devenv launcher ")
