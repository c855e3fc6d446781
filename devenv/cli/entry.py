"""The console script. Hot commands skip typer entirely.

`devenv --version`, `devenv list` and `devenv exec` are parsed here by hand so
their start-up costs only what they use (typer alone is ~35 ms, paramiko ~90 ms
more). Any other command, any --help, and shell completion go to the typer app,
which defines the same commands for help and completion.
"""

from __future__ import annotations

import os
import sys

from devenv.cli.boundary import guarded


def _fast(argv: list[str]) -> int | None:
    """Handle a hot command, or return None to hand argv to the full parser."""
    if any(k.startswith("_DEVENV_COMPLETE") for k in os.environ):
        return None
    if argv in (["--version"], ["-V"]):
        from devenv import __version__

        sys.stdout.write(f"devenv {__version__}\n")
        return 0
    if argv and argv[0] == "list" and set(argv[1:]) <= {"--json"}:
        from devenv.cli import commands

        return guarded(lambda: commands.list_instances("--json" in argv))
    if argv and argv[0] == "exec":
        return _fast_exec(argv[1:])
    return None


def _fast_exec(args: list[str]) -> int | None:
    name: str | None = None
    workdir: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            command = args[i + 1 :]
            break
        if a in ("-n", "--name", "-w", "--workdir") and i + 1 < len(args):
            if a in ("-n", "--name"):
                name = args[i + 1]
            else:
                workdir = args[i + 1]
            i += 2
            continue
        if a.startswith("--name="):
            name = a.partition("=")[2]
        elif a.startswith("--workdir="):
            workdir = a.partition("=")[2]
        else:
            return None  # --help, unknown flags, or a command without `--`: let typer explain
        i += 1
    else:
        command = []
    from devenv.cli import commands

    return guarded(lambda: commands.exec_(name, command, workdir))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    code = _fast(args)
    if code is not None:
        return code
    from devenv.cli.app import run

    return run(args)
