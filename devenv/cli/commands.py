"""What each command does, independent of how its arguments were parsed.

Both the typer app and the fast path call these, so a command behaves the
same whichever parser ran. Each function calls into the package and renders.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv import config, instance, paths
from devenv.cli.ui import Steps
from devenv.errors import UsageError
from devenv.sizes import format_measured, format_size

if TYPE_CHECKING:
    from devenv.backends.base import Status


def _out(text: str) -> None:
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))


def _out_json(data: Any, **options: Any) -> None:
    import json  # only for --json: `devenv list` without it is a hot path

    _out(json.dumps(data, indent=2, **options))


def _warn(text: str) -> None:
    sys.stderr.write(f"devenv: warning: {text}\n")


def name_of(explicit: str | None) -> tuple[str, Path | None]:
    project = config.find_project_config()
    return config.resolve_name(explicit, project), project


def overrides(
    backend: str | None = None,
    image: str | None = None,
    cpus: int | None = None,
    memory: str | None = None,
    disk: str | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    if backend is not None:
        from devenv import backends

        backends.entry(backend)  # unknown names fail here, with a did-you-mean
    return {"backend": backend, "image": image, "cpus": cpus, "memory": memory, "disk": disk, "runtime": runtime}


def check_mounts(n: str, project: Path | None, allow_mounts: bool) -> None:
    """Before a new instance uses a project file's mounts beyond its folder: the user allowed that file."""
    if project is None or instance.exists(n) or config.peek_name(project) not in (None, n):
        return
    from devenv import mounttrust

    def ask(question: str) -> bool:
        sys.stderr.write(question)
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    mounttrust.check(project, config.load_file(project), allow_flag=allow_mounts, ask=ask if interactive else None)


def create(name: str | None, flags: dict[str, Any], allow_mounts: bool = False) -> int:
    n, project = name_of(name)
    check_mounts(n, project, allow_mounts)
    cfg = instance.resolve_config(n, flags, project)
    with Steps() as step:
        inst = instance.create(n, cfg, step)
    _out(f"created instance `{inst.name}` (backend {inst.config.backend}); start it with `devenv start -n {n}`")
    return 0


def start(name: str | None, flags: dict[str, Any], allow_mounts: bool = False) -> int:
    n, project = name_of(name)
    check_mounts(n, project, allow_mounts)
    with Steps() as step:
        inst, warnings = instance.start(n, flags, project, step)
    for w in warnings:
        _warn(w)
    _out(f"instance `{inst.name}` is running (backend {inst.config.backend})")
    return 0


def stop(name: str | None, force: bool, *, suspend: bool = False, shutdown: bool = False) -> int:
    if suspend and (shutdown or force):
        raise UsageError(
            f"--suspend and {'--shutdown' if shutdown else '--force'} ask for opposite things",
            "choose one: --suspend saves the guest, --shutdown (or --force) powers it off",
        )
    n, _ = name_of(name)
    with Steps() as step:
        inst, now = instance.stop(n, force, step, "suspend" if suspend else "shutdown" if shutdown else None)
    resumes = f"; `devenv start -n {inst.name}` resumes it" if now == "suspended" else ""
    _out(f"instance `{inst.name}` is {now}{resumes}")
    return 0


def restart(name: str | None) -> int:
    """A real reboot, whatever devenv.toml's `stop` says: restoring the same guest would change nothing."""
    n, project = name_of(name)
    with Steps() as step:
        instance.stop(n, False, step, "shutdown")
        instance.start(n, {}, project, step)
    _out(f"instance `{n}` is running")
    return 0


def delete(name: str | None, force: bool) -> int:
    n, _ = name_of(name)
    with Steps() as step:
        instance.delete(n, force, step)
    _out(f"instance `{n}` deleted")
    return 0


def _row(inst: instance.Instance, st: Status | None = None) -> dict[str, Any]:
    if st is None:
        st = inst.status()
    c = inst.config
    return {
        "name": inst.name,
        "state": st.state,
        "reason": st.reason,
        "backend": c.backend,
        "image": c.image,
        "cpus": c.cpus,
        "memory": c.memory,
        "disk": c.disk,
        "runtime": c.runtime,
        "dir": str(inst.dir),
        **({"host_rss": st.figures["host_rss"]} if "host_rss" in st.figures else {}),
    }


def list_instances(as_json: bool) -> int:
    rows: list[dict[str, Any]] = []
    for item in instance.all_instances():
        if isinstance(item, tuple):
            name, err = item
            rows.append({"name": name, "state": "broken", "reason": str(err), "backend": "?"})
        else:
            rows.append(_row(item))
    if as_json:
        _out_json(rows)
        return 0
    if not rows:
        _out("no instances; create one with `devenv start`")
        return 0
    # RSS: what the running VM holds in the host's RAM now, beside the MEMORY it was given
    header = ("NAME", "STATE", "BACKEND", "CPUS", "MEMORY", "RSS", "DISK", "RUNTIME")
    table = [header] + [
        (
            r["name"],
            r["state"],
            r["backend"],
            str(r.get("cpus", "")),
            format_size(r["memory"]) if "memory" in r else "",
            format_measured(r["host_rss"]) if "host_rss" in r else "",
            format_size(r["disk"]) if "disk" in r else "",
            r.get("runtime", ""),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _guest_arch(inst: instance.Instance) -> str:
    """devenv.toml's `arch`; for auto, the host's (what every backend but an emulating QEMU runs)."""
    if inst.config.arch != "auto":
        return inst.config.arch
    from devenv.hostos import current

    return current().arch


def status(name: str | None, as_json: bool) -> int:
    n, _ = name_of(name)
    inst = instance.get(n)
    st = inst.status()  # once: a VM's status probes its sshd and asks its host agent and guest
    row = _row(inst, st) | {"arch": _guest_arch(inst), "state": st.state, "reason": st.reason, "details": st.details}
    if st.figures:
        row["figures"] = st.figures
    if as_json:
        _out_json(row, default=str)
        return 0
    _out(f"{inst.name}: {st.state}" + (f" ({st.reason})" if st.reason else ""))
    for key in ("backend", "image", "arch", "runtime", "cpus"):
        _out(f"  {key}: {row[key]}")
    _out(f"  memory: {format_size(row['memory'])}")
    _out(f"  disk: {format_size(row['disk'])}")
    for key, value in st.details.items():
        _out(f"  {key}: {value}")
    return 0


def exec_(
    name: str | None,
    argv: list[str],
    workdir: str | None = None,
    env_flags: Sequence[str] = (),
    ask_agent: bool = True,
    tty: bool = False,
) -> int:
    from devenv.cli import envflags

    env, bad = envflags.parse(env_flags, os.environ)
    if bad:
        raise UsageError(
            f"-e {bad[0]}: `{bad[0].partition('=')[0]}` is not an environment variable name",
            "names are letters, digits and _, not starting with a digit: -e NAME=VALUE, or -e NAME for the host's",
        )
    if workdir and not workdir.startswith("/"):
        raise UsageError(
            f"-w {workdir}: the working directory must be an absolute path in the instance",
            f"for example: -w /{workdir.lstrip('./~')}; without -w the command runs where you are (when mounted)",
        )
    if not argv:
        raise UsageError("exec needs a command after `--`", "for example: devenv exec -- uname -a")
    if tty and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("-t needs a terminal on stdin and stdout", "run it from a terminal, or drop -t to pipe data")
    n, _ = name_of(name)
    inst = instance.get(n)
    instance.require_running(inst)
    from devenv.backends.base import ExecRequest

    return inst.backend().exec(inst.ref, ExecRequest(argv, env, workdir or None, ask_agent=ask_agent, tty=tty))


def shell(name: str | None) -> int:
    n, _ = name_of(name)
    inst = instance.get(n)
    instance.require_running(inst)
    return inst.backend().shell(inst.ref)


def cp(src: str, dst: str) -> int:
    from devenv.transport.cpspec import parse_copy_args

    plan = parse_copy_args(src, dst)
    inst = instance.get(plan.instance)
    instance.require_running(inst)
    if plan.direction == "to_guest":
        if not Path(plan.host_path).exists():
            raise UsageError(f"{plan.host_path}: no such file or folder on the host", "check the path")
        inst.backend().copy_in(inst.ref, Path(plan.host_path), plan.guest_path)
    else:
        inst.backend().copy_out(inst.ref, plan.guest_path, Path(plan.host_path))
    return 0


def ssh_config(name: str | None) -> int:
    n, _ = name_of(name)
    inst = instance.get(n)
    _out(inst.backend().ssh_config(inst.ref))
    return 0


def up(name: str | None, workspace: str | None, command: list[str], run: bool, allow_mounts: bool = False) -> int:
    """The dev container of a folder up in the instance (starting the instance first); with --exec, a command in it."""
    from devenv import devcontainer, hostagent

    if command and not run:
        raise UsageError(f"unexpected argument {command[0]!r}", "to run a command in it: devenv up --exec -- CMD")
    if run and not command:
        raise UsageError("up --exec needs a command", "for example: devenv up --exec -- make test")
    folder = Path(workspace or os.getcwd()).resolve()
    devcontainer.find_config(folder)
    cli = devcontainer.find_cli()
    docker = shutil.which("docker")
    if docker is None:
        from devenv.errors import BackendUnavailable

        raise BackendUnavailable(
            "the docker CLI is not installed: the Dev Containers CLI drives the engine through it",
            "install the docker CLI (on Debian and Ubuntu: apt install docker.io; Homebrew: brew install docker)",
        )
    n, project = name_of(name)
    cfg = instance.get(n).config if instance.exists(n) else instance.resolve_config(n, {}, project)
    devcontainer.require_same_path(cfg, n, folder)  # before anything starts
    check_mounts(n, project, allow_mounts)
    with Steps() as step:
        inst, warnings = instance.start(n, {}, project, step)
    for w in warnings:
        _warn(w)
    backend = inst.backend()
    if backend.features.vm:
        devcontainer.require_mounted(hostagent.state(inst.dir), str(folder), n)
    env = backend.docker_env(inst.ref)
    code, result = devcontainer.run_up(devcontainer.up_argv(cli, folder, docker), env, quiet=run)
    if code != 0:
        return code
    if backend.features.vm:
        _forward_dev_container_ports(inst, cli, folder, docker, env, str(result.get("containerId") or ""))
    if not run:
        return 0
    return devcontainer.run_cli(devcontainer.exec_argv(cli, folder, docker, command), env)


def _forward_dev_container_ports(
    inst: instance.Instance, cli: str, folder: Path, docker: str, env: dict[str, str], container: str
) -> None:
    """forwardPorts: 127.0.0.1:PORT on the host to the dev container's PORT, as VS Code forwards them.

    The Dev Containers CLI leaves forwardPorts to the editor; with the engine
    in a VM the host would otherwise not reach them at all.
    """
    from devenv import devcontainer, hostagent

    ports, skipped = devcontainer.forward_ports(devcontainer.read_configuration(cli, folder, docker, env))
    for entry in skipped:
        _warn(f"forwardPorts entry {entry!r} is not forwarded: only port numbers of the dev container are")
    if not ports:
        return
    address = devcontainer.container_address(docker, env, container) if container else None
    if address is None:
        _warn(f"the dev container's address is unknown: forwardPorts {ports} are not forwarded")
        return
    for port in ports:
        row = hostagent.add_forward(inst.dir, port, address, port, "devcontainer")
        if row.get("status") == "active":
            sys.stderr.write(f"devenv: forwarded 127.0.0.1:{port} to the dev container's port {port}\n")
        else:
            _warn(f"forwardPorts {port} is not forwarded: {row.get('reason')}")


def code(name: str | None, folder: str | None) -> int:
    """Open a folder of the instance in VS Code over SSH (Remote-SSH), or print the command that would."""
    from devenv import devcontainer
    from devenv.transport.sshconfig import host_alias

    n, _ = name_of(name)
    inst = instance.get(n)
    if not inst.backend().features.ssh:
        from devenv.errors import NotSupported

        raise NotSupported(inst.config.backend, "code", "there is no guest: open the folder with `code` itself")
    host = Path(folder or os.getcwd()).resolve()
    guest = devcontainer.guest_folder(inst.config, n, host)
    if guest is None:
        raise UsageError(
            f"{host} is not mounted in instance `{n}`",
            f"run `devenv code` in a mounted folder (`devenv status -n {n}` lists them), or name one",
        )
    inst.backend().ssh_config(inst.ref)  # says "not started yet" when there is no endpoint to open
    return devcontainer.open_editor(devcontainer.code_argv(host_alias(n), guest), inst.dir / paths.SSH_CONFIG)


def logs(name: str | None, follow: bool) -> int:
    n, _ = name_of(name)
    inst = instance.get(n)
    files = [inst.dir / paths.EVENTS_LOG, *inst.backend().log_files(inst.ref)]
    files = [f for f in files if f.exists()]
    for f in files:
        if len(files) > 1:
            _out(f"==> {f} <==")
        sys.stdout.write(f.read_text(encoding="utf-8", errors="replace"))
    if not follow:
        return 0
    sys.stdout.flush()
    positions = {f: f.stat().st_size for f in files}
    while True:  # ended by Ctrl-C, reported as an interruption by the boundary
        for f in files:
            size = f.stat().st_size if f.exists() else 0
            if size > positions[f]:
                with open(f, encoding="utf-8", errors="replace") as fh:
                    fh.seek(positions[f])
                    sys.stdout.write(fh.read())
                    sys.stdout.flush()
                positions[f] = size
        time.sleep(0.5)


def docker_env(name: str | None, shell_kind: str) -> int:
    n, _ = name_of(name)
    inst = instance.get(n)
    env = inst.backend().docker_env(inst.ref)
    for key, value in env.items():
        if shell_kind == "fish":
            _out(f"set -gx {key} {value!r};")
        elif shell_kind == "powershell":
            _out(f'$Env:{key} = "{value}"')
        else:
            _out(f"export {key}={shlex.quote(value)}")  # macOS's socket paths may hold a space
    return 0


def doctor(as_json: bool) -> int:
    from devenv import backends
    from devenv.backends.availability import CHECKS, launch_accelerator
    from devenv.errors import UsageError
    from devenv.hostos import current, default_backend
    from devenv.launcher import installed

    host = current()
    launcher = installed()
    rows: list[dict[str, Any]] = []
    for name in backends.names():
        check = CHECKS.get(name)
        if check is None:
            continue  # a test double registered at run time has no host requirements
        probe = check(host)
        rows.append({"backend": name, "available": probe.ok, "detail": probe.detail, "fix": probe.fix})
    try:
        qemu_accelerator: str | None = launch_accelerator(host)[0]
    except UsageError:  # the qemu row says why
        qemu_accelerator = None
    info: dict[str, Any] = {
        "host": {"system": host.system, "arch": host.arch, "wsl": host.is_wsl},
        "default_backend": default_backend(host),
        "qemu_accelerator": qemu_accelerator,
        "backends": rows,
        "launcher": launcher,
    }
    if host.system == "macos":
        from devenv.backends.availability import macos

        info["macos"] = [{"check": n, "ok": p.ok, "detail": p.detail, "fix": p.fix} for n, p in macos(host)]
    if as_json:
        _out_json(info)
        return 0
    wsl = " (inside WSL)" if host.is_wsl else ""
    _out(f"host: {host.system} {host.arch}{wsl}; default backend: {info['default_backend']}")
    width = max(len(r["backend"]) for r in rows)
    for r in rows:
        mark = "ok " if r["available"] else "no "
        _out(f"  {mark} {r['backend'].ljust(width)}  {r['detail']}")
        if r["fix"]:  # an available row has one when it works around something (a fallback)
            _out(f"      {''.ljust(width)}  fix: {r['fix']}")
    for check in info.get("macos", []):
        _out(f"  {'ok ' if check['ok'] else 'no '} {check['check']}: {check['detail']}")
        if check["fix"]:
            _out(f"      fix: {check['fix']}")
    if launcher["kind"] == "native":
        _out(f"launcher: native ({launcher['path']}): a warm `devenv exec` starts no Python")
    else:
        _out("launcher: python: every `devenv` call starts Python (~15-20 ms more for a warm `devenv exec`)")
        if launcher["fix"]:
            _out(f"  fix: {launcher['fix']}")
    return 0


def version() -> int:
    from devenv import __version__

    _out(f"devenv {__version__}")
    return 0


def image_list(as_json: bool) -> int:
    from devenv.images import catalog

    rows = catalog.list_images()
    if as_json:
        data = [
            {
                "name": r.name,
                "arch": r.arch,
                "description": r.description,
                "cached": r.cached,
                "source": r.source,
                "size": r.size,
                "buildable": r.buildable,
                "disk": str(r.disk) if r.disk else None,
            }
            for r in rows
        ]
        _out_json(data)
        return 0
    table = [("NAME", "ARCH", "SIZE", "SOURCE", "CACHED", "DESCRIPTION")]
    for r in rows:
        size = f"{r.size / 1024**2:.0f}MiB" if r.size else "-"
        table.append((r.name, r.arch, size, r.source or "-", "yes" if r.cached else "no", r.description))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def image_pull(image: str, arch: str | None) -> int:
    from devenv.images import download
    from devenv.progress import DownloadProgress

    record = download.pull(image, arch, progress=DownloadProgress(f"pulling {image}"))
    sys.stderr.write("\n" if sys.stderr.isatty() else "")
    _out(f"{record.name} ({record.arch}) is cached: {record.disk} ({record.size / 1024**2:.0f} MiB)")
    return 0


def image_build(image: str, mirror: str | None, arch: str | None) -> int:
    from devenv.images import build

    with Steps() as step:
        record = build.build(image, arch, mirror=mirror, progress=step)
    _out(f"{record.name} ({record.arch}) is cached: {record.disk} ({record.size / 1024**2:.0f} MiB)")
    return 0


def image_export(image: str, fmt: str, output: Path | None, arch: str | None) -> int:
    from devenv.images import catalog, wslexport
    from devenv.progress import DownloadProgress

    if fmt != "wsl":
        raise UsageError(f"unknown export format `{fmt}`", "the one format so far is `--format wsl`")
    record = catalog.resolve(image, arch, progress=DownloadProgress(f"pulling {image}"))
    with Steps() as step:
        tarball = wslexport.export(record.disk, output.absolute() if output else None, step=step)
    _out(f"{record.name} ({record.arch}) as a WSL rootfs: {tarball} ({tarball.stat().st_size / 1024**2:.0f} MiB)")
    return 0


def prune(dry_run: bool, as_json: bool) -> int:
    from devenv.images import catalog

    found = catalog.prune(dry_run)
    total = sum(freed for _, freed in found)
    if as_json:
        images = [{"name": r.name, "arch": r.arch, "source": r.source, "freed": freed} for r, freed in found]
        _out_json({"dry_run": dry_run, "images": images, "freed": total})
        return 0
    verb = "would remove" if dry_run else "removed"
    for record, freed in found:
        _out(f"{verb} {record.name} ({record.arch}, {record.source}): {format_measured(freed)}")
    if not found:
        _out("no cached image is unused: nothing to remove")
    else:
        _out(f"{'would free' if dry_run else 'freed'} {format_measured(total)}")
    return 0


def image_rm(image: str, arch: str | None) -> int:
    from devenv.images import catalog

    removed = catalog.remove(image, arch)
    _out(f"removed {image}: {len(removed)} file(s)")
    return 0


def snapshot_create(name: str | None, snap: str) -> int:
    from devenv import snapshot

    n, _ = name_of(name)
    with Steps() as step:
        snapshot.create(n, snap, step)
    _out(f"instance `{n}`: snapshot `{snap}` created; `devenv snapshot restore {snap} -n {n}` goes back to it")
    return 0


def snapshot_list(name: str | None, as_json: bool) -> int:
    from datetime import UTC, datetime

    from devenv import snapshot

    n, _ = name_of(name)
    rows = [
        {"name": s.name, "created": datetime.fromtimestamp(s.created, UTC).isoformat(timespec="seconds")}
        for s in snapshot.listing(n)
    ]
    if as_json:
        _out_json(rows)
        return 0
    if not rows:
        _out(f"instance `{n}` has no snapshots; `devenv snapshot create NAME -n {n}` takes one")
        return 0
    width = max(len("NAME"), *(len(r["name"]) for r in rows))
    _out(f"{'NAME'.ljust(width)}  CREATED")
    for r in rows:
        _out(f"{r['name'].ljust(width)}  {r['created']}")
    return 0


def snapshot_restore(name: str | None, snap: str) -> int:
    from devenv import snapshot

    n, _ = name_of(name)
    with Steps() as step:
        snapshot.restore(n, snap, step)
    _out(f"instance `{n}`: disk restored to snapshot `{snap}`; `devenv start -n {n}` boots it")
    return 0


def snapshot_delete(name: str | None, snap: str) -> int:
    from devenv import snapshot

    n, _ = name_of(name)
    with Steps() as step:
        snapshot.delete(n, snap, step)
    _out(f"instance `{n}`: snapshot `{snap}` deleted")
    return 0
