"""Instances: records on disk and the lifecycle that drives a backend.

An instance is a directory holding its resolved devenv.toml. Everything else
about it (running or not, healthy or not) is derived each time from files,
sockets and the backend, so a crash can never leave a stale "running" behind.
Creation builds the directory under a temporary name and renames it into place,
so a failed or interrupted create leaves nothing that looks like an instance.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv import backends, config, hostdisk, oplock, paths
from devenv.backends.base import Backend, InstanceRef, Status, StepReporter
from devenv.config import Config
from devenv.errors import ConfigError, DevenvError, InstanceNotFound, StateError, debugging

# What an instance's own files take before its guest writes anything: the seed ISO (~0.25 MiB),
# the overlay's qcow2 tables (~0.2 MiB), keys and records. A VM's disk then grows as the guest writes.
CREATE_ROOM = 1024**2


@dataclass
class Instance:
    name: str
    dir: Path
    config: Config

    @property
    def ref(self) -> InstanceRef:
        return InstanceRef(self.name, self.dir, self.config)

    def backend(self) -> Backend:
        return backends.load(self.config.backend)

    def status(self) -> Status:
        try:
            return self.backend().status(self.ref)
        except (DevenvError, OSError) as e:  # a backend that cannot tell is a status, not a crash
            return Status("broken", str(e))
        except Exception as e:
            # A bug in devenv: shown as one. DEVENV_DEBUG lets it reach the CLI's boundary, which prints
            # its traceback; otherwise list and status go on and say what it was.
            if debugging():
                raise
            return Status(
                "broken",
                f"internal error (a bug in devenv): {type(e).__name__}: {e}; "
                "DEVENV_DEBUG=1 shows its traceback, please report it",
            )

    def event(self, kind: str, **fields: Any) -> None:
        """Into the same log as the host agent's events, by the same writer (one append per record)."""
        from devenv.hostagent.events import EventLog

        EventLog(self.dir / paths.EVENTS_LOG).emit(kind, **fields)


def exists(name: str) -> bool:
    return (paths.instance_dir(name) / paths.INSTANCE_CONFIG).is_file()


def get(name: str) -> Instance:
    config.validate_name(name)
    d = paths.instance_dir(name)
    cfg_file = d / paths.INSTANCE_CONFIG
    if not cfg_file.is_file():
        raise InstanceNotFound(
            f"instance `{name}` does not exist",
            f"create it with `devenv start -n {name}`, or see `devenv list`",
        )
    try:
        cfg = config.load_file(cfg_file)
    except ConfigError as e:
        raise ConfigError(
            e.problems, f"the instance's own config is damaged; fix it or `devenv delete -n {name}`"
        ) from None
    return Instance(name, d, cfg)


def all_instances() -> list[Instance | tuple[str, Exception]]:
    root = paths.instances_root()
    if not root.is_dir():
        return []
    out: list[Instance | tuple[str, Exception]] = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / paths.INSTANCE_CONFIG).is_file():
            continue
        try:
            out.append(get(d.name))
        except Exception as e:
            out.append((d.name, e))
    return out


def resolve_config(name: str, overrides: dict[str, Any], project: Path | None) -> Config:
    """Defaults <- the project's devenv.toml (when it names this instance or none) <- flags."""
    cfg = Config()
    from dataclasses import replace

    if project is not None and config.peek_name(project) in (None, name):
        from devenv.mounttrust import resolve_location

        cfg = config.load_file(project)
        # kept absolute: a relative location is the project's, not the folder a later command runs in
        located = [replace(m, location=str(resolve_location(m.location, project.parent))) for m in cfg.mounts]
        cfg = replace(cfg, mounts=tuple(located))
    cfg = config.with_overrides(cfg, overrides)

    cfg = replace(cfg, name=name)
    if cfg.backend == "auto":
        from devenv.hostos import current, default_backend

        cfg = replace(cfg, backend=default_backend(current(), cfg.arch))
    _check_arch(cfg, project)
    folder = project.parent if project is not None else Path.cwd()
    if backends.load(cfg.backend).features.vm:
        cfg = with_project_mount(cfg, folder)
    return cfg


def _check_arch(cfg: Config, project: Path | None) -> None:
    """Only QEMU runs a guest of another architecture than the host's: the others use the host's CPU."""
    from devenv.hostos import current

    host_arch = current().arch
    if cfg.arch in ("auto", host_arch) or cfg.backend == "qemu":
        return
    where = config.line_of(project, "arch") if project is not None else "arch"
    raise ConfigError(
        [f"{where}: field `arch` = {cfg.arch!r} needs the qemu backend, not {cfg.backend!r}"],
        f'set backend = "qemu" (it emulates {cfg.arch} on this {host_arch} host), or remove `arch`',
    )


def with_project_mount(cfg: Config, folder: Path) -> Config:
    """Share the project folder (devenv.toml's folder, else the current one) at the same path, writable.

    Like Colima and Lima, the user's files appear in the guest where they are on
    the host. A folder a configured mount already covers, the root, the home
    folder of root, and system folders are not added: the folder's path is the
    share's guest path, so config.mount_point_problem is the rule.
    """
    from dataclasses import replace

    folder = folder.absolute()
    if config.mount_point_problem(folder.as_posix()) is not None:
        return cfg
    for m in cfg.mounts:
        host = Path(os.path.expanduser(m.location)).absolute()
        if folder == host or host in folder.parents:
            return cfg
    return replace(cfg, mounts=(*cfg.mounts, config.Mount(location=str(folder), writable=True)))


def create(name: str, cfg: Config, step: StepReporter) -> Instance:
    """Make the instance directory and let the backend prepare it; all or nothing."""
    import shutil
    import tempfile

    config.validate_name(name)
    if exists(name):
        raise StateError(f"instance `{name}` already exists", f"start it with `devenv start -n {name}`")
    backend = backends.load(cfg.backend)
    what = f"creating instance `{name}`"
    final = paths.instance_dir(name)
    hostdisk.ensure_free(final, CREATE_ROOM, what)
    with hostdisk.translated(final, CREATE_ROOM, what, name_file=False):
        root = paths.ensure_private_dir(paths.instances_root())
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".creating", dir=root))
    try:
        with hostdisk.translated(final, CREATE_ROOM, what, name_file=False):
            os.chmod(tmp, 0o700)
            (tmp / paths.INSTANCE_CONFIG).write_text(cfg.to_toml(), encoding="utf-8")
            backend.create(InstanceRef(name, tmp, cfg), step)
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    inst = Instance(name, final, cfg)
    inst.event("created", backend=cfg.backend)
    return inst


def start(name: str, overrides: dict[str, Any], project: Path | None, step: StepReporter) -> tuple[Instance, list[str]]:
    """Create when missing, then start. Returns the instance and any warnings."""
    warnings: list[str] = []
    if exists(name):
        inst = get(name)
        given = {k: v for k, v in overrides.items() if v is not None}
        if given:
            warnings.append(
                f"instance `{name}` exists already; ignoring {', '.join('--' + k for k in given)} "
                f"(delete and re-create it to change them)"
            )
    else:
        inst = create(name, resolve_config(name, overrides, project), step)
    with oplock.hold(inst.dir, "start", step):
        inst.backend().start(inst.ref, step)
        (inst.dir / paths.STARTED_MARKER).touch()
        inst.event("started")
    return inst, warnings


def stop(name: str, force: bool, step: StepReporter, mode: str | None = None) -> tuple[Instance, str]:
    """Stop an instance; what it is now: "suspended" or "stopped".

    `mode`: "suspend" or "shutdown" as the user asked (`--suspend`,
    `--shutdown`), None for devenv.toml's `stop`. That default suspends only
    an instance whose start finished, on a backend that can; when the guest
    cannot be saved it says why and shuts the guest down instead. An asked-for
    suspend that cannot be done is an error, and the VM runs on.
    """
    from devenv.errors import NotSupported, SuspendRefused

    inst = get(name)
    backend = inst.backend()
    suspend = (mode or inst.config.stop) == "suspend" and not force
    if suspend and not backend.features.suspend:
        if mode == "suspend":
            raise NotSupported(backend.name, "suspend", f"`devenv stop -n {name}` shuts it down")
        suspend = False
    with oplock.hold(inst.dir, "stop", step, interrupt_start=True):  # a stop wins over a start still waiting
        if suspend and mode is None and not (inst.dir / paths.STARTED_MARKER).exists():
            # a start that never finished (interrupted just now): nothing worth keeping runs. A guest
            # already suspended (its marker went with the suspend) stays so: restoring it only to
            # power it off would lose what the user kept
            suspend = backend.status(inst.ref).state == "suspended"
        try:
            backend.stop(inst.ref, force, step, suspend=suspend)
        except SuspendRefused as e:
            if mode == "suspend":
                raise
            step.fail()
            sys.stderr.write(f"devenv: warning: {e.message}; shutting it down instead\n")
            suspend = False
            backend.stop(inst.ref, force, step)
        (inst.dir / paths.STARTED_MARKER).unlink(missing_ok=True)
        inst.event("suspended" if suspend else "stopped", force=force)
    return inst, "suspended" if suspend else "stopped"


def delete(name: str, force: bool, step: StepReporter) -> None:
    """Remove the instance directory, and nothing else: never the cached base image."""
    import shutil

    inst = get(name)
    state = inst.status().state
    if state in ("running", "starting", "degraded") and not force:
        raise StateError(
            f"instance `{name}` is {state}",
            f"stop it first with `devenv stop -n {name}`, or delete it anyway with `devenv delete --force -n {name}`",
        )
    backend = inst.backend()
    with oplock.hold(inst.dir, "delete", step, interrupt_start=force):
        if state != "stopped":
            try:
                backend.stop(inst.ref, True, step)
            except DevenvError:
                if state != "broken":
                    raise  # a broken instance may be beyond stopping; deleting it is what the user asked
        backend.delete(inst.ref)
    shutil.rmtree(inst.dir)  # after the lock's file is closed: Windows removes no open file


def require_running(inst: Instance) -> None:
    st = inst.status()
    if st.state not in ("running", "degraded"):
        reason = f" ({st.reason})" if st.reason else ""
        raise StateError(
            f"instance `{inst.name}` is {st.state}{reason}", f"start it with `devenv start -n {inst.name}`"
        )
