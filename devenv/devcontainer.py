"""`devenv up` and `devenv code`: the developer's own tools pointed at an instance.

devenv writes no devcontainer.json parser: the Dev Containers CLI (the
reference implementation, `@devcontainers/cli`) reads it and talks to the
instance's engine through DOCKER_HOST, as it would to a local engine. That
works only when the engine sees the workspace folder at the path the host
has it (the CLI bind-mounts the host path): a folder that is not mounted in
the instance at the same path is refused before anything starts, rather than
giving a dev container an empty workspace.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from devenv.config import Config
from devenv.errors import BackendUnavailable, StateError, UsageError

DEVCONTAINER_FILES = (".devcontainer/devcontainer.json", ".devcontainer.json")  # where the spec looks, in order
CLI_INSTALL = "npm install -g @devcontainers/cli"


def find_config(workspace: Path) -> Path:
    for rel in DEVCONTAINER_FILES:
        if (workspace / rel).is_file():
            return workspace / rel
    raise UsageError(
        f"no dev container in {workspace}: neither {' nor '.join(DEVCONTAINER_FILES)} exists",
        "run `devenv up` in the folder that holds .devcontainer/devcontainer.json (see https://containers.dev)",
    )


def find_cli() -> str:
    found = shutil.which("devcontainer")
    if found is None:
        raise BackendUnavailable("the Dev Containers CLI (`devcontainer`) is not installed", CLI_INSTALL)
    return found


def guest_folder(cfg: Config, name: str, folder: Path) -> str | None:
    """Where the instance sees the host folder `folder`: its own path, another one, or None (not mounted)."""
    from devenv import backends
    from devenv.hostagent.mounts import guest_cwd, mount_specs

    backend = backends.load(cfg.backend)
    if not backend.features.vm:
        return str(folder)  # the host's own engine sees the host's files where they are
    driver_features = getattr(getattr(backend, "driver", None), "features", None)
    mapper = getattr(driver_features, "guest_paths", "")
    if mapper:  # a guest that sees the host's files at its own paths (WSL: C:\src -> /mnt/c/src)
        import importlib

        module, _, function = mapper.partition(":")
        mapped: str | None = getattr(importlib.import_module(module), function)(str(folder))
        return mapped
    return guest_cwd(mount_specs(cfg.mounts), str(folder))


def require_same_path(cfg: Config, name: str, workspace: Path) -> None:
    """The engine must see the workspace where the host has it: the Dev Containers CLI bind-mounts that path."""
    seen = guest_folder(cfg, name, workspace)
    if seen == str(workspace):
        return
    where = "is not mounted" if seen is None else f"is mounted at {seen}, not at the same path"
    raise StateError(
        f"the workspace folder {workspace} {where} in instance `{name}`: a dev container would get an empty workspace",
        "run `devenv up` from the project folder of devenv.toml (mounted at the same path), or add"
        f' [[mounts]] location = "{workspace}" to devenv.toml (its mount_point left out: the same path)',
    )


def require_mounted(state: dict[str, object] | None, guest: str, name: str) -> None:
    """After start: the mount holding the workspace is in place (it may have failed: no sshfs, a full disk)."""
    rows = state.get("mounts") if isinstance(state, dict) else None
    for row in rows if isinstance(rows, list) else []:
        root = str(row.get("guest", "")).rstrip("/")
        if root and (guest == root or guest.startswith(root + "/")) and row.get("state") != "mounted":
            why = row.get("reason") or row.get("state")
            raise StateError(
                f"the workspace's mount {root} in instance `{name}` is not in place: {why}",
                f"`devenv status -n {name}` shows the mounts; `devenv restart -n {name}` mounts them again",
            )


def up_argv(cli: str, workspace: Path, docker: str) -> list[str]:
    return [cli, "up", "--workspace-folder", str(workspace), "--docker-path", docker]


def exec_argv(cli: str, workspace: Path, docker: str, command: list[str]) -> list[str]:
    return [cli, "exec", "--workspace-folder", str(workspace), "--docker-path", docker, *command]


def run_cli(argv: list[str], env: dict[str, str]) -> int:
    """The Dev Containers CLI on our terminal, with the instance's engine in its environment; its exit code."""
    try:
        return subprocess.run(argv, env={**os.environ, **env}, check=False).returncode
    except KeyboardInterrupt:
        return 130


def run_up(argv: list[str], env: dict[str, str], *, quiet: bool = False) -> tuple[int, dict[str, Any]]:
    """`devcontainer up`: its exit code and its result (the JSON line it ends with: outcome, containerId).

    Its log goes to our stderr as it comes; the result line is echoed to
    stdout, or with `quiet` (the `up` before an --exec) to stderr, so that
    stdout then carries only what the command printed.
    """
    try:
        done = subprocess.run(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, check=False)
    except KeyboardInterrupt:
        return 130, {}
    out = done.stdout.decode(errors="replace")
    (sys.stderr if quiet else sys.stdout).write(out)
    return done.returncode, last_json_line(out)


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def forward_ports(configuration: dict[str, Any]) -> tuple[list[int], list[str]]:
    """devcontainer.json's forwardPorts as the CLI read them: the ports, and entries devenv cannot forward.

    "service:port" entries name a compose service: a container devenv does
    not know from the CLI's result.
    """
    ports: list[int] = []
    skipped: list[str] = []
    for entry in configuration.get("forwardPorts") or []:
        text = str(entry)
        if (isinstance(entry, int) or text.isdigit()) and 1 <= int(text) <= 65535:
            ports.append(int(text))
        else:
            skipped.append(text)
    return ports, skipped


def read_configuration(cli: str, workspace: Path, docker: str, env: dict[str, str]) -> dict[str, Any]:
    """The devcontainer.json as the reference CLI reads it (comments, variables): its `configuration`."""
    argv = [cli, "read-configuration", "--workspace-folder", str(workspace), "--docker-path", docker]
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, check=False)
    if done.returncode != 0:
        return {}
    configuration = last_json_line(done.stdout.decode(errors="replace")).get("configuration")
    return configuration if isinstance(configuration, dict) else {}


def container_address(docker: str, env: dict[str, str], container: str) -> str | None:
    """The dev container's address on its engine's network, as the guest reaches it."""
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    done = subprocess.run(
        [docker, "inspect", "--format", fmt, container], env={**os.environ, **env}, capture_output=True, check=False
    )
    found = done.stdout.decode(errors="replace").split() if done.returncode == 0 else []
    return found[0] if found else None


def code_argv(host_alias: str, guest: str) -> list[str]:
    """VS Code's Remote-SSH opening a folder on an SSH host (its documented `--remote ssh-remote+HOST`)."""
    return ["code", "--remote", f"ssh-remote+{host_alias}", guest]


def ssh_config_included(ssh_config: Path, home: Path | None = None) -> bool:
    """Whether ~/.ssh/config reads the instance's ssh.config (Remote-SSH and Gateway resolve the alias there)."""
    user_config = (home or Path.home()) / ".ssh" / "config"
    try:
        text = user_config.read_text(errors="replace")
    except OSError:
        return False
    home_dir = str(home or Path.home())
    wanted = [str(ssh_config), str(ssh_config.parent.parent)]  # the file, or a glob over the instances folder
    wanted += ["~" + w[len(home_dir) :] for w in wanted if w.startswith(home_dir + "/")]
    return any(w in text for w in wanted)


def open_editor(argv: list[str], ssh_config: Path) -> int:
    """Run `code` when it exists, else print the command; either way say how Remote-SSH finds the host."""
    if not ssh_config_included(ssh_config):
        sys.stderr.write(
            f"devenv: Remote-SSH reads ~/.ssh/config: add this line at its top so it finds the host:\n"
            f"  Include {ssh_config}\n"
        )
    if shutil.which(argv[0]) is None:
        sys.stdout.write(shlex.join(argv) + "\n")
        sys.stderr.write("devenv: `code` is not on PATH: run the command above where VS Code is installed\n")
        return 0
    return subprocess.run(argv, check=False).returncode
