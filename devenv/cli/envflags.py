"""`devenv exec -e NAME=VALUE` and `-e NAME`, read as `docker run -e` reads them.

`-e NAME=VALUE` sets NAME; `-e NAME` passes the host's own value of NAME and is
dropped when the host has none, so a script can name a variable it may not
have. Later flags win, and every flag wins over devenv.toml's `env` table.

Imported on the warm exec path, so it uses no `re` (~5 ms); the launcher
(devenv/launcher/launcher.c: env_name_ok, env_entry) applies the same rules.
"""

from __future__ import annotations

TYPE_CHECKING = False  # collections.abc (~1.3 ms) and typing (~7 ms) only for the type checker: hot path
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_REST = _FIRST | frozenset("0123456789")


def valid_name(name: str) -> bool:
    """A POSIX shell variable name: the guest exports it, so nothing else will do."""
    return bool(name) and name[0] in _FIRST and set(name) <= _REST


def parse(flags: Iterable[str], host_env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The variables the flags set, and the flags whose name is not a variable name."""
    env: dict[str, str] = {}
    bad: list[str] = []
    for flag in flags:
        name, eq, value = flag.partition("=")
        if not valid_name(name):
            bad.append(flag)
        elif eq:
            env[name] = value
        elif name in host_env:
            env[name] = host_env[name]
    return env, bad
