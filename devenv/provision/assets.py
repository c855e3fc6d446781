"""Find the provisioning/ data folder in a source checkout and in an installed wheel.

The wheel force-includes provisioning/ as devenv/_data/provisioning (see
pyproject.toml); an editable install or a checkout reads the top-level folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from devenv import paths
from devenv.errors import DevenvError


@lru_cache(maxsize=1)
def provisioning_dir() -> Path:
    found = paths.packaged_dir("provisioning")
    if found is None or not (found / "cloud-init").is_dir():
        package = Path(__file__).resolve().parent.parent
        raise DevenvError(
            f"devenv's provisioning files are missing (looked in {package / '_data'} and {package.parent})",
            "reinstall devenv",
        )
    return found


def read_text(relative: str) -> str:
    return (provisioning_dir() / relative).read_text(encoding="utf-8")
