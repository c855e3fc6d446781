"""The native backend: on a Linux host the engine already runs here.

Start and stop change nothing on the host; they verify the engine and record
whether the user wants the instance up. `exec` runs the command locally with
the same contract the VM backends keep: stdio streams straight through, the
command's exit code is returned, and a signal death becomes 128+N.
"""

from __future__ import annotations

import os
from pathlib import Path

from devenv import paths
from devenv.backends.base import ExecRequest, Features, InstanceRef, Status, StepReporter
from devenv.errors import BackendUnavailable, NotSupported, UsageError
from devenv.hostos import Engine, Host, current


class NativeBackend:
    name = "native"
    features = Features(vm=False, ssh=False, port_forwarding=False, mounts=("host",), runtimes=("docker", "podman"))

    def __init__(self, host: Host | None = None) -> None:
        self.host = host or current()

    def _engine(self, inst: InstanceRef) -> Engine:
        runtime = inst.config.runtime
        if runtime not in self.features.runtimes:
            raise NotSupported(
                self.name,
                f"runtime `{runtime}`",
                "use runtime docker or podman, or --backend qemu for containerd in a VM",
            )
        engine = self.host.engine_of(runtime)
        if engine is None:
            other = self.host.engine
            found = f"; found {other.runtime} instead" if other else ""
            fix = "sudo systemctl start docker" if runtime == "docker" else "systemctl --user start podman.socket"
            raise BackendUnavailable(
                f"no {runtime} engine answers on this host{found}", f"{fix}, or use --backend qemu"
            )
        return engine

    def create(self, inst: InstanceRef, step: StepReporter) -> None:
        step(f"check the local {inst.config.runtime} engine")
        self._engine(inst)

    def start(self, inst: InstanceRef, step: StepReporter) -> None:
        step(f"check the local {inst.config.runtime} engine")
        self._engine(inst)

    def stop(self, inst: InstanceRef, force: bool, step: StepReporter, *, suspend: bool = False) -> None:
        """The host's engine is not ours to stop; stopping only marks the instance down."""

    def delete(self, inst: InstanceRef) -> None:
        """Nothing outside the instance directory belongs to a native instance."""

    def status(self, inst: InstanceRef) -> Status:
        if not (inst.dir / paths.STARTED_MARKER).exists():
            return Status("stopped")
        runtime = inst.config.runtime
        engine = self.host.engine_of(runtime)
        if engine is None:
            return Status("broken", f"the local {runtime} engine does not answer")
        return Status("running", details={"engine": engine.endpoint or engine.runtime})

    def exec(self, inst: InstanceRef, req: ExecRequest) -> int:
        """On the host itself: the command is on the caller's terminal already, so `tty` needs nothing."""
        if not req.argv:
            raise UsageError("exec needs a command after `--`", "for example: devenv exec -- uname -a")
        full_env = {**os.environ, **inst.config.env, **req.env}
        engine = self.host.engine_of(inst.config.runtime)
        if engine and engine.endpoint and inst.config.runtime == "docker":
            full_env.setdefault("DOCKER_HOST", engine.endpoint)
        return run_foreground(list(req.argv), full_env, req.cwd)

    def shell(self, inst: InstanceRef) -> int:
        return run_foreground([os.environ.get("SHELL", "/bin/sh")], {**os.environ, **inst.config.env}, None)

    def copy_in(self, inst: InstanceRef, src: Path, dst: str) -> None:
        _local_copy(src, Path(dst))

    def copy_out(self, inst: InstanceRef, src: str, dst: Path) -> None:
        _local_copy(Path(src), dst)

    def docker_env(self, inst: InstanceRef) -> dict[str, str]:
        engine = self._engine(inst)
        if not engine.endpoint:
            raise NotSupported(
                self.name,
                "docker-env for a daemonless podman",
                "systemctl --user start podman.socket, then run docker-env again",
            )
        return {"DOCKER_HOST": engine.endpoint}

    def ssh_config(self, inst: InstanceRef) -> str:
        raise NotSupported(self.name, "ssh-config", "there is no guest: the native backend runs on this host itself")

    def log_files(self, inst: InstanceRef) -> list[Path]:
        return []


def run_foreground(argv: list[str], env: dict[str, str], cwd: str | None) -> int:
    """Run a child on our terminal; Ctrl-C reaches it (same process group), not us."""
    import signal
    import subprocess  # here, not at the top: `devenv list` loads this module and never runs a child

    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd)
    except FileNotFoundError as e:
        if cwd is not None and e.filename == cwd:
            raise UsageError(f"-w {cwd}: no such directory", "give a directory that exists") from None
        raise UsageError(f"command not found: {argv[0]}", "check the command name and PATH") from None
    except PermissionError:
        raise UsageError(f"permission denied: {argv[0]}", "is the file executable?") from None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


def _local_copy(src: Path, dst: Path) -> None:
    import shutil

    if src.is_dir():
        target = dst / src.name if dst.is_dir() else dst
        shutil.copytree(src, target, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)
