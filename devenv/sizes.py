"""Sizes as devenv.toml writes them ("2GiB", "2048MiB", "2G") and as devenv prints them.

Below config (which validates memory and disk with it) and images (whose
overlay errors print sizes), so neither imports the other for it.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: object) -> int:
    """ "2GiB" / "2048MiB" / "2G" -> bytes. Raises ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError('must be a size string such as "2GiB" or "2048MiB"')
    m = _SIZE_RE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f'must be a size such as "2GiB" or "2048MiB", not "{value}"')
    number = float(m.group(1))
    if number <= 0:
        raise ValueError(f'must be a positive size, not "{value}"')
    return int(number * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f}GiB"
    return f"{n}B"


def format_measured(n: int) -> str:
    """A measured size, to one decimal (612.3 MiB); format_size writes configured sizes exactly."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
