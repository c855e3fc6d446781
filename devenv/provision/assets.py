"""Find the provisioning/ data folder in a source checkout and in an installed wheel.

The wheel force-includes provisioning/ as devenv/_data/provisioning (see
pyproject.toml); an editable install or a checkout reads the top-level folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from devenv.errors import DevenvError

_PACKAGE = Path(__file__).resolve().parent.parent  # .../devenv


@lru_cache(maxsize=1)
def provisioning_dir() -> Path:
    for candidate in (_PACKAGE / "_data" / "provisioning", _PACKAGE.parent / "provisioning"):
        if (candidate / "cloud-init").is_dir():
            return candidate
    raise DevenvError(
        f"devenv's provisioning files are missing (looked in {_PACKAGE / '_data'} and {_PACKAGE.parent})",
        "reinstall devenv",
    )


def read_text(relative: str) -> str:
    return (provisioning_dir() / relative).read_text(encoding="utf-8")
