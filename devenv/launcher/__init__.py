"""The native `devenv` front door (launcher.c) and how it is built.

On Linux and macOS, where a C compiler exists at install time, the `devenv`
command is a small C program: it serves a warm `devenv exec` itself (one
request to the host agent, ~1 ms instead of a Python start of ~15-20 ms) and
runs the Python CLI, installed as `devenv-py`, for everything else. Without a
compiler, on Windows, or with DEVENV_NATIVE_LAUNCHER=0 at install, `devenv` is
the Python CLI itself. Both behave the same; `devenv doctor` says which one
this install has.
"""

from __future__ import annotations

import os
import sys

from devenv.launcher.build import PYTHON_CLI, native_platform

NATIVE_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")  # ELF, Mach-O 64-bit, universal


def installed() -> dict[str, str | None]:
    """Which `devenv` command this install has: {"kind": "native" | "python", "path", "fix"}."""
    dirs = []
    if os.path.basename(sys.argv[0]) in ("devenv", PYTHON_CLI):
        dirs.append(os.path.dirname(os.path.realpath(sys.argv[0])))
    import sysconfig

    dirs.append(sysconfig.get_path("scripts"))
    for d in dirs:
        path = os.path.join(d, "devenv")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError:
            continue
        if magic in NATIVE_MAGIC and os.path.exists(os.path.join(d, PYTHON_CLI)):
            return {"kind": "native", "path": path, "fix": None}
        return {"kind": "python", "path": path, "fix": _fix()}
    return {"kind": "python", "path": None, "fix": _fix()}


def _fix() -> str | None:
    if not native_platform():
        return None  # the Python CLI is `devenv` there
    return "install a C compiler (cc), then: pip install --force-reinstall --no-deps --no-cache-dir devenv"
