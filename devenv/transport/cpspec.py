"""Parse the two arguments of `devenv cp SRC DST`.

`NAME:/path` names a path inside instance NAME; anything else is a host path.
Exactly one side must be a guest path, so the direction is never ambiguous.
Kept free of paramiko so the CLI can validate arguments before connecting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from devenv.errors import UsageError

# Same rule as devenv.config.NAME_RE (not imported: config pulls in tomllib and
# difflib, and this module sits on the CLI's argument-parsing path).
_INSTANCE_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*):(.*)$", re.DOTALL)
# `C:\x`, `C:/x` and `C:`: a Windows drive, never an instance named C.
_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")

Direction = Literal["to_guest", "from_guest"]


@dataclass(frozen=True)
class CopyEndpoint:
    """One side of a copy: `instance` is None for a host path."""

    instance: str | None
    path: str

    @property
    def is_guest(self) -> bool:
        return self.instance is not None

    def __str__(self) -> str:
        return f"{self.instance}:{self.path}" if self.instance is not None else self.path


@dataclass(frozen=True)
class CopyPlan:
    """A validated `devenv cp`: which instance, which way, and both paths."""

    instance: str
    direction: Direction
    host_path: str
    guest_path: str


def parse_endpoint(arg: str) -> CopyEndpoint:
    """Split `NAME:path` into (NAME, path); return a host endpoint for anything else.

    Host paths win every ambiguity: absolute or ./ ../ ~ paths, Windows drive
    paths (a one-letter prefix followed by a slash, backslash or nothing), and
    strings whose part before the first colon is not a valid instance name.
    `NAME:` alone means the guest user's home directory.
    """
    if not arg:
        raise UsageError("an empty path was given", "give a host path or NAME:/path for a path in an instance")
    if arg.startswith(("/", "\\", "./", "../", ".\\", "..\\", "~")) or arg in (".", ".."):
        return CopyEndpoint(None, arg)
    if _DRIVE.match(arg):
        return CopyEndpoint(None, arg)
    m = _INSTANCE_PREFIX.match(arg)
    if m is None:
        return CopyEndpoint(None, arg)
    return CopyEndpoint(m.group(1), m.group(2) or ".")


def parse_copy_args(src: str, dst: str) -> CopyPlan:
    """Turn `devenv cp SRC DST` into a plan; exactly one side must name an instance."""
    a, b = parse_endpoint(src), parse_endpoint(dst)
    if a.instance is not None and b.instance is not None:
        raise UsageError(
            f"both `{src}` and `{dst}` are paths inside an instance",
            "copy between the host and one instance: one side must be a host path",
        )
    if a.instance is not None:
        return CopyPlan(instance=a.instance, direction="from_guest", host_path=b.path, guest_path=a.path)
    if b.instance is not None:
        return CopyPlan(instance=b.instance, direction="to_guest", host_path=a.path, guest_path=b.path)
    hint = "write the guest side as NAME:/path, e.g. `devenv cp ./src default:/tmp/src`"
    if _DRIVE.match(src) or _DRIVE.match(dst):
        hint += "; a single letter before `:/` or `:\\` is read as a Windows drive"
    raise UsageError(f"neither `{src}` nor `{dst}` is a path inside an instance", hint)
