"""The typer app: every command's flags, help and completion; no logic here.

Each command hands its parsed arguments to devenv.cli.commands inside the
error boundary. The exit code a command returns is kept aside, so that a
command's own code (exec returning 2, say) is never mistaken for the parser's
usage-error exit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from devenv.cli import commands
from devenv.cli.boundary import guarded
from devenv.errors import ExitCode

app = typer.Typer(
    name="devenv",
    help="The same Linux container environment on Windows, macOS and Linux.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(help="Guest images: list, pull, build, remove.", no_args_is_help=True)
app.add_typer(image_app, name="image")
snapshot_app = typer.Typer(
    help="Named copies of an instance's disk: create, list, restore, delete (qemu, libvirt and hyperv backends).",
    no_args_is_help=True,
)
app.add_typer(snapshot_app, name="snapshot")

_result: list[int] = []


def _run(fn: Callable[[], int | None]) -> None:
    code = guarded(fn)
    _result.append(code)
    raise typer.Exit(code)


def _complete_names(incomplete: str) -> list[str]:
    from devenv import paths

    root = paths.instances_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.startswith(incomplete) and not p.name.startswith("."))


Name = Annotated[
    str | None,
    typer.Option(
        "-n",
        "--name",
        help="Instance name (default: devenv.toml's name, $DEVENV_INSTANCE, or `default`).",
        autocompletion=_complete_names,
    ),
]
Backend = Annotated[str | None, typer.Option("--backend", help="native, qemu, libvirt, wsl2 or hyperv.")]
Image = Annotated[str | None, typer.Option("--image", help="Image name (debian-12) or a qcow2 path.")]
Cpus = Annotated[int | None, typer.Option("--cpus", help="Virtual CPUs.")]
Memory = Annotated[str | None, typer.Option("--memory", help='Memory, e.g. "4GiB".')]
Disk = Annotated[str | None, typer.Option("--disk", help='Disk size, e.g. "40GiB".')]
Runtime = Annotated[str | None, typer.Option("--runtime", help="docker, podman or containerd.")]
Force = Annotated[bool, typer.Option("--force", "-f")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AllowMounts = Annotated[
    bool,
    typer.Option(
        "--allow-mounts",
        help="Allow devenv.toml's mounts of host folders outside the project (remembered until the file changes).",
    ),
]


def _version(value: bool) -> None:
    if value:
        _run(commands.version)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """The same Linux container environment on Windows, macOS and Linux."""


@app.command()
def create(
    name: Name = None,
    backend: Backend = None,
    image: Image = None,
    cpus: Cpus = None,
    memory: Memory = None,
    disk: Disk = None,
    runtime: Runtime = None,
    allow_mounts: AllowMounts = False,
) -> None:
    """Create an instance without starting it."""
    _run(lambda: commands.create(name, commands.overrides(backend, image, cpus, memory, disk, runtime), allow_mounts))


@app.command()
def start(
    name: Name = None,
    backend: Backend = None,
    image: Image = None,
    cpus: Cpus = None,
    memory: Memory = None,
    disk: Disk = None,
    runtime: Runtime = None,
    allow_mounts: AllowMounts = False,
) -> None:
    """Start an instance, creating it first when it does not exist."""
    _run(lambda: commands.start(name, commands.overrides(backend, image, cpus, memory, disk, runtime), allow_mounts))


@app.command()
def stop(
    name: Name = None,
    force: Force = False,
    suspend: Annotated[bool, typer.Option("--suspend", help="save the running guest; start restores it")] = False,
    shutdown: Annotated[bool, typer.Option("--shutdown", help="power the guest off")] = False,
) -> None:
    """Stop an instance: suspend it, or shut it down (devenv.toml's `stop` says which; --force: no clean shutdown)."""
    _run(lambda: commands.stop(name, force, suspend=suspend, shutdown=shutdown))


@app.command()
def restart(name: Name = None) -> None:
    """Stop, then start an instance."""
    _run(lambda: commands.restart(name))


@app.command()
def delete(name: Name = None, force: Force = False) -> None:
    """Delete an instance and its disk (--force: even while running)."""
    _run(lambda: commands.delete(name, force))


@app.command("list")
def list_(as_json: Json = False) -> None:
    """List instances and their state."""
    _run(lambda: commands.list_instances(as_json))


@app.command()
def status(name: Name = None, as_json: Json = False) -> None:
    """Show an instance's state, derived now from its processes and probes."""
    _run(lambda: commands.status(name, as_json))


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    command: Annotated[list[str] | None, typer.Argument(help="The command, after `--`.")] = None,
    name: Name = None,
    workdir: Annotated[str | None, typer.Option("-w", "--workdir", help="Working directory.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("-e", "--env", help="Set NAME=VALUE for the command; NAME alone passes the host's value."),
    ] = None,
    tty: Annotated[
        bool, typer.Option("-t", "--tty", help="Run it on a terminal of its own (editors, top, a REPL), as ssh -t.")
    ] = False,
) -> None:
    """Run a command in the instance: devenv exec [-e NAME=VALUE]... -- CMD ARGS..."""
    _run(lambda: commands.exec_(name, list(command or []), workdir, list(env or []), tty=tty))


@app.command("up", context_settings={"allow_interspersed_args": False})
def up(
    command: Annotated[list[str] | None, typer.Argument(help="With --exec: the command, after `--`.")] = None,
    name: Name = None,
    workspace: Annotated[
        str | None, typer.Option("--workspace-folder", help="The folder with the dev container (default: here).")
    ] = None,
    run: Annotated[bool, typer.Option("--exec", help="Run the command in the dev container (up first).")] = False,
    allow_mounts: AllowMounts = False,
) -> None:
    """Bring the folder's dev container up in the instance (Dev Containers CLI); --exec -- CMD runs CMD in it."""
    _run(lambda: commands.up(name, workspace, list(command or []), run, allow_mounts))


@app.command()
def code(
    folder: Annotated[str | None, typer.Argument(help="A host folder mounted in the instance (default: here).")] = None,
    name: Name = None,
) -> None:
    """Open the folder in the instance with VS Code's Remote-SSH (or print the command when `code` is missing)."""
    _run(lambda: commands.code(name, folder))


@app.command()
def shell(name: Name = None) -> None:
    """Open an interactive shell in the instance."""
    _run(lambda: commands.shell(name))


@app.command()
def cp(src: str, dst: str) -> None:
    """Copy files in or out; NAME:/path names the guest side."""
    _run(lambda: commands.cp(src, dst))


@app.command("ssh-config")
def ssh_config(name: Name = None) -> None:
    """Print an OpenSSH config block for plain ssh and editors."""
    _run(lambda: commands.ssh_config(name))


@app.command()
def logs(name: Name = None, follow: Annotated[bool, typer.Option("--follow", "-f")] = False) -> None:
    """Show the instance's event log and console log."""
    _run(lambda: commands.logs(name, follow))


@app.command()
def doctor(as_json: Json = False) -> None:
    """Check every backend on this host and say how to fix what is missing."""
    _run(lambda: commands.doctor(as_json))


@app.command("docker-env")
def docker_env(
    name: Name = None,
    shell: Annotated[str, typer.Option("--shell", help="sh, fish or powershell.")] = "sh",
) -> None:
    """Print the environment that points the docker CLI at the instance's engine."""
    _run(lambda: commands.docker_env(name, shell))


@image_app.command("list")
def image_list(as_json: Json = False) -> None:
    """List known images and whether each is cached."""
    _run(lambda: commands.image_list(as_json))


@image_app.command("pull")
def image_pull(image: str, arch: Annotated[str | None, typer.Option("--arch")] = None) -> None:
    """Download an image and verify its checksum."""
    _run(lambda: commands.image_pull(image, arch))


@image_app.command("build")
def image_build(
    image: str,
    mirror: Annotated[str | None, typer.Option("--mirror", help="Package mirror URL.")] = None,
    arch: Annotated[str | None, typer.Option("--arch")] = None,
) -> None:
    """Build an image offline from the distribution's package mirror."""
    _run(lambda: commands.image_build(image, mirror, arch))


@image_app.command("export")
def image_export(
    image: str,
    fmt: Annotated[str, typer.Option("--format", help="wsl: a rootfs tarball for `wsl.exe --import`.")] = "wsl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of the cache.")] = None,
    arch: Annotated[str | None, typer.Option("--arch")] = None,
) -> None:
    """Export an image's root filesystem in another form (the WSL2 backend imports it)."""
    _run(lambda: commands.image_export(image, fmt, output, arch))


@app.command()
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
    as_json: Json = False,
) -> None:
    """Remove cached images no instance uses, and say how much space that frees."""
    _run(lambda: commands.prune(dry_run, as_json))


@image_app.command("rm")
def image_rm(image: str, arch: Annotated[str | None, typer.Option("--arch")] = None) -> None:
    """Remove a cached image (refused while an instance uses it)."""
    _run(lambda: commands.image_rm(image, arch))


def _complete_snapshots(ctx: typer.Context, incomplete: str) -> list[str]:
    """The instance's snapshot names (the instance from -n when it came first, else the default one)."""
    from devenv import snapshot
    from devenv.errors import DevenvError

    try:
        name, _ = commands.name_of(ctx.params.get("name"))
        return [s.name for s in snapshot.listing(name) if s.name.startswith(incomplete)]
    except (DevenvError, OSError):  # completion offers nothing rather than an error
        return []


SnapName = Annotated[
    str,
    typer.Argument(
        metavar="SNAPNAME", help="The snapshot's name, e.g. before-upgrade.", autocompletion=_complete_snapshots
    ),
]
NewSnapName = Annotated[str, typer.Argument(metavar="SNAPNAME", help="A name for it, e.g. before-upgrade.")]


@snapshot_app.command("create")
def snapshot_create(snapshot: NewSnapName, name: Name = None) -> None:
    """Save the disk of a shut-down instance under a name."""
    _run(lambda: commands.snapshot_create(name, snapshot))


@snapshot_app.command("list")
def snapshot_list(name: Name = None, as_json: Json = False) -> None:
    """List an instance's snapshots, oldest first."""
    _run(lambda: commands.snapshot_list(name, as_json))


@snapshot_app.command("restore")
def snapshot_restore(snapshot: SnapName, name: Name = None) -> None:
    """Put a shut-down instance's disk back as it was at the snapshot (later changes are lost)."""
    _run(lambda: commands.snapshot_restore(name, snapshot))


@snapshot_app.command("delete")
def snapshot_delete(snapshot: SnapName, name: Name = None) -> None:
    """Delete a snapshot (the instance's disk stays as it is)."""
    _run(lambda: commands.snapshot_delete(name, snapshot))


def run(argv: list[str]) -> int:
    _result.clear()
    try:
        app(argv, prog_name="devenv")
    except SystemExit as e:
        if _result:
            return _result[-1]
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return int(ExitCode.USAGE) if code == 2 else code
    return _result[-1] if _result else 0
