"""The state root as a plain string, importing only os and sys.

`devenv exec`'s warm path needs the instance directory before anything else and
pays for every import (pathlib ~3 ms, platformdirs ~12 ms); devenv.paths builds
its Path-based API on this. On systems other than Linux and macOS it returns
None and the caller asks platformdirs.
"""

from __future__ import annotations

import os
import sys

ENV_HOME = "DEVENV_HOME"
INSTANCES_DIR = "instances"


def home_str() -> str | None:
    """DEVENV_HOME, else platformdirs' user data dir for Linux and macOS, else None."""
    override = os.environ.get(ENV_HOME)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if sys.platform.startswith("linux"):
        xdg = os.environ.get("XDG_DATA_HOME", "").strip()
        return os.path.join(xdg if xdg else os.path.expanduser("~/.local/share"), "devenv")
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~/Library/Application Support"), "devenv")
    return None


def instance_dir(name: str) -> str:
    root = home_str()
    if root is None:
        from devenv import paths

        return str(paths.instance_dir(name))
    return os.path.join(root, INSTANCES_DIR, name)
