"""A project's devenv.toml shares host folders beyond its own folder only once the user allows that file.

A devenv.toml arrives with a cloned repository; `[[mounts]] location = "~"`,
writable, would hand the guest (and every container in it) the user's whole
home. As direnv does with .envrc, such a file is used only after the user
allows it: a prompt on a terminal, or `--allow-mounts`. The allowance is kept
per file path with the sha256 of its content, in DEVENV_HOME's 0600
allowed-mounts.json, so an edited file (a `git pull`) asks again. Mounts of the
project folder or folders inside it need no allowance: devenv shares the
project folder anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from devenv import config, paths
from devenv.errors import PermissionProblem

STORE = "allowed-mounts.json"


def resolve_location(location: str, folder: Path) -> Path:
    """Where a mount's `location` is on the host: `~` expanded, a relative path from the project folder."""
    p = Path(os.path.expanduser(location))
    return Path(os.path.normpath(p if p.is_absolute() else folder / p))


def outside_mounts(project: Path, cfg: config.Config) -> list[tuple[int, config.Mount, Path]]:
    """The file's mounts that reach beyond its folder: (index in [[mounts]], mount, where it resolves on the host).

    Symlinks are followed: a link inside the project pointing at the home
    folder shares the home folder.
    """
    folder = Path(os.path.realpath(project.parent))
    out = []
    for i, m in enumerate(cfg.mounts):
        where = Path(os.path.realpath(resolve_location(m.location, project.parent)))
        if where != folder and folder not in where.parents:
            out.append((i, m, where))
    return out


def _digest(project: Path) -> str:
    return hashlib.sha256(project.read_bytes()).hexdigest()


def _store() -> Path:
    return paths.home() / STORE


def _allowed() -> dict[str, str]:
    try:
        data = json.loads(_store().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def allow(project: Path) -> None:
    from devenv.atomicfile import write_atomic

    allowed = _allowed()
    allowed[str(project.absolute())] = _digest(project)
    paths.ensure_private_dir(paths.home())
    write_atomic(_store(), (json.dumps(allowed, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def is_allowed(project: Path) -> bool:
    return _allowed().get(str(project.absolute())) == _digest(project)


def check(project: Path, cfg: config.Config, *, allow_flag: bool, ask: Callable[[str], bool] | None) -> None:
    """Return when the file's outside mounts may be used; PermissionProblem when the user has not allowed them.

    `ask` (a terminal is there) puts the question; None refuses outright.
    """
    outside = outside_mounts(project, cfg)
    if not outside or is_allowed(project):
        return
    listed = "; ".join(
        f"{config.line_of(project, 'mounts', i, 'location')}: {m.location} -> {where}"
        + (" (writable)" if m.writable else "")
        for i, m, where in outside
    )
    question = f"{project} shares host folders outside its project folder: {listed}"
    if allow_flag or (ask is not None and ask(question + "\nAllow this file's mounts? [y/N] ")):
        allow(project)
        return
    raise PermissionProblem(
        question,
        "if you trust this devenv.toml, run again with --allow-mounts (remembered until the file changes)",
    )
