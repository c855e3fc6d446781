"""The console script. Hot commands skip typer entirely.

`devenv --version`, `devenv list` and `devenv exec` are parsed here by hand so
their start-up costs only what they use (typer alone is ~35 ms, paramiko ~90 ms
more). Any other command, any --help, and shell completion go to the typer app,
which defines the same commands for help and completion.
"""

from __future__ import annotations

import os
import sys

AGENT_UNAVAILABLE_ENV = "_DEVENV_AGENT_UNAVAILABLE"  # set by devenv/launcher/launcher.c (ASKED_ENV)


def _fast(argv: list[str], whole_process: bool = False) -> int | None:
    """Handle a hot command, or return None to hand argv to the full parser.

    `whole_process`: this call is the process's program (the console script),
    so a finished warm exec may leave without the interpreter's teardown.
    """
    if any(k.startswith("_DEVENV_COMPLETE") for k in os.environ):
        return None
    if argv in (["--version"], ["-V"]):
        from devenv import __version__

        sys.stdout.write(f"devenv {__version__}\n")
        return 0
    if argv and argv[0] == "list" and set(argv[1:]) <= {"--json"}:
        from devenv.cli import commands
        from devenv.cli.boundary import guarded

        return guarded(lambda: commands.list_instances("--json" in argv))
    if argv and argv[0] == "exec":
        return _fast_exec(argv[1:], whole_process)
    return None


def _fast_exec(args: list[str], whole_process: bool = False) -> int | None:
    name: str | None = None
    workdir: str | None = None
    env_flags: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            command = args[i + 1 :]
            break
        if a in ("-n", "--name", "-w", "--workdir", "-e", "--env") and i + 1 < len(args):
            if a in ("-n", "--name"):
                name = args[i + 1]
            elif a in ("-e", "--env"):
                env_flags.append(args[i + 1])
            else:
                workdir = args[i + 1]
            i += 2
            continue
        if a.startswith("--name="):
            name = a.partition("=")[2]
        elif a.startswith("--workdir="):
            workdir = a.partition("=")[2]
        elif a.startswith("--env="):
            env_flags.append(a.partition("=")[2])
        else:
            return None  # --help, unknown flags, or a command without `--`: let typer explain
        i += 1
    else:
        command = []
    # The native launcher asked this instance's agent already and it could not run the command.
    asked = os.environ.pop(AGENT_UNAVAILABLE_ENV, None) is not None
    if command and not asked:
        from devenv.cli import envflags

        env, bad = envflags.parse(env_flags, os.environ)
        relative = workdir is not None and workdir != "" and not workdir.startswith("/")
        code = None if bad or relative else _exec_through_agent(name, command, workdir or None, env)
        if code is not None:
            if whole_process:
                _leave(code)
            return code
    from devenv.cli import commands
    from devenv.cli.boundary import guarded

    return guarded(lambda: commands.exec_(name, command, workdir, env_flags, ask_agent=not asked))


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _plain_name(value: str) -> bool:
    """config.NAME_RE without importing re (5 ms on the hot path)."""
    return 0 < len(value) <= 63 and value[0] not in "._-" and set(value) <= _NAME_CHARS


def _name_line(line: str) -> str | None:
    """`name = "value"` (optionally with a comment) -> value, else None."""
    key, eq, rest = line.partition("=")
    if not eq or key.strip() != "name":
        return None
    rest = rest.strip()
    if not rest.startswith('"'):
        return None
    value, close, tail = rest[1:].partition('"')
    tail = tail.strip()
    if not close or (tail and not tail.startswith("#")) or not _plain_name(value):
        return None
    return value


def _quick_name(explicit: str | None) -> str | None:
    """The instance name as config.resolve_name would find it, or None when unsure.

    Reads devenv.toml's top-level `name = "..."` with a regular expression instead
    of tomllib (which costs ~10 ms); anything unusual returns None so the full
    path decides, and errors are reported there.
    """
    if explicit is not None:
        return explicit if _plain_name(explicit) else None
    here = os.path.abspath(os.getcwd())
    while True:
        candidate = os.path.join(here, "devenv.toml")
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except OSError:
                return None
            for line in lines:
                if line.lstrip().startswith("["):
                    break  # tables begin: no top-level name
                if line.lstrip().startswith("name"):
                    return _name_line(line)
            break
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    env = os.environ.get("DEVENV_INSTANCE")
    if env:
        return env if _plain_name(env) else None
    return "default"


def _exec_through_agent(name: str | None, command: list[str], workdir: str | None, env: dict[str, str]) -> int | None:
    """The warm path: the running instance's host agent runs the command; None to fall back."""
    resolved = _quick_name(name)
    if resolved is None:
        return None
    from devenv import paths
    from devenv.hostagent import client

    try:
        try:
            here: str | None = os.getcwd()
        except OSError:  # deleted under us: no host folder to map, the guest home (or -w) it is
            here = None
        return client.exec(paths.instance_dir_str(resolved), command, env, here, workdir=workdir)
    except KeyboardInterrupt:
        return 130


def _leave(code: int) -> None:
    """End the process now: the interpreter's teardown would add ~6 ms to every warm exec.

    Only after an exec through the host agent, which leaves nothing behind to
    close: its socket is closed, its threads are daemons, no atexit handler is
    registered on that path, and its output went to the fds directly (the
    flush is for anything written through sys.stdout/sys.stderr all the same).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed reader or stream: nothing to deliver, as at a normal exit
            continue  # (contextlib.suppress would cost this path its import)
    os._exit(code & 0xFF)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    code = _fast(args, whole_process=argv is None)
    if code is not None:
        return code
    from devenv.cli.app import run

    return run(args)
