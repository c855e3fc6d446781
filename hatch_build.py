"""Install-time choice of what the `devenv` command is (see devenv/launcher).

Where launcher.c compiles (Linux, macOS with a C compiler), `devenv` is that
native program and the Python CLI is the console script `devenv-py` beside
it; elsewhere `devenv` is the Python CLI's console script. The metadata hook
names the console script, the build hook adds the launcher as a script of
the wheel; both ask build.py, which compiles once into build/launcher.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

ENTRY = "devenv.cli.entry:main"


def _build_module(root: str) -> ModuleType:
    path = Path(root) / "devenv" / "launcher" / "build.py"
    spec = importlib.util.spec_from_file_location("_devenv_launcher_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launcher(root: str) -> tuple[Path | None, str]:
    """The compiled launcher (or None) and the Python CLI's console script name."""
    build = _build_module(root)
    path, why = build.build(Path(root) / "build" / "launcher")
    print(f"devenv: native launcher: {path if path else 'not built'} ({why})", file=sys.stderr)
    return path, build.PYTHON_CLI


class LauncherMetadataHook(MetadataHookInterface):
    def update(self, metadata: dict[str, Any]) -> None:
        path, python_cli = launcher(self.root)
        metadata["scripts"] = {python_cli if path else "devenv": ENTRY}


class LauncherBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if "devenv" in self.metadata.core.scripts:
            return  # the metadata made the Python CLI `devenv`: no launcher, whatever a rebuild would say now
        path, _ = launcher(self.root)
        if path is None:  # the metadata promised one: a wheel without any `devenv` must not be made
            raise RuntimeError("the native launcher was built for the metadata but cannot be built again")
        build_data["shared_scripts"][str(path)] = "devenv"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
