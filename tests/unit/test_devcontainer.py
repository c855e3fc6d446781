"""`devenv up` and `devenv code` on the FakeBackend: what they check, what they run, what they refuse.

The Dev Containers CLI and VS Code are stand-ins here (small scripts on PATH
that record their argv and environment): this is the orchestration only.
tests/e2e/test_tools.py runs the real @devcontainers/cli against a real guest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from devenv import devcontainer
from devenv.config import Config, Mount
from devenv.errors import ExitCode

pytestmark = pytest.mark.usefixtures("fake")

RECORDER = """#!/bin/sh
python3 - "$@" <<'EOF'
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "docker_host": os.environ.get("DOCKER_HOST")}) + "\\n")
EOF
[ "$1" = exec ] && echo "ran in the container"
[ "$1" = up ] && echo '{"outcome":"success","containerId":"c0ffee"}'
[ "$1" = read-configuration ] && echo '{"configuration":{}}'
exit ${STANDIN_EXIT:-0}
"""


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with stand-ins for `devcontainer`, `docker` and `code`; their calls land in the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("devcontainer", "docker", "code"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    return record


def _calls(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _project(folder: Path, spec: str = ".devcontainer/devcontainer.json") -> Path:
    (folder / "devenv.toml").write_text('name = "box"\nbackend = "fake"\n')
    (folder / spec).parent.mkdir(parents=True, exist_ok=True)
    (folder / spec).write_text('{"image": "devenv/busybox"}\n')
    return folder


@pytest.mark.parametrize("spec", [".devcontainer/devcontainer.json", ".devcontainer.json"])
def test_up_starts_the_instance_then_runs_the_cli_against_its_engine(
    home: Path, cli: Any, tools: Path, spec: str
) -> None:
    work = _project(Path.cwd(), spec)
    ran = cli("up")
    assert ran.code == 0, ran.err
    assert json.loads(cli("status", "-n", "box", "--json").out)["state"] == "running"
    sock = home / "instances" / "box" / "sock" / "docker.sock"
    tail = ["--workspace-folder", str(work), "--docker-path", str(tools.parent / "bin" / "docker")]
    assert _calls(tools) == [
        {"argv": ["up", *tail], "docker_host": f"unix://{sock}"},
        {"argv": ["read-configuration", *tail], "docker_host": f"unix://{sock}"},  # for its forwardPorts
    ]
    assert ran.out == '{"outcome":"success","containerId":"c0ffee"}\n'  # the CLI's result line, as it printed it


def test_up_exec_brings_it_up_then_runs_the_command_and_returns_its_exit_code(
    home: Path, cli: Any, tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _project(Path.cwd())
    ran = cli("up", "--exec", "--", "sh", "-c", "exit 3")
    assert ran.code == 0 and ran.out == "ran in the container\n", (ran.out, ran.err)  # up's result went to stderr
    assert [c["argv"][0] for c in _calls(tools)] == ["up", "read-configuration", "exec"]
    assert _calls(tools)[2]["argv"][1:] == [
        "--workspace-folder", str(work), "--docker-path", str(tools.parent / "bin" / "docker"), "sh", "-c", "exit 3",
    ]  # fmt: skip
    monkeypatch.setenv("STANDIN_EXIT", "3")
    assert cli("up", "--exec", "--", "false").code == 3  # the first failure (here up's) is the exit code


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["up", "--exec"], ExitCode.USAGE, "up --exec needs a command"),
        (["up", "make"], ExitCode.USAGE, "unexpected argument 'make'"),
    ],
)
def test_up_refuses_a_command_line_it_cannot_mean(
    home: Path, cli: Any, tools: Path, argv: list[str], code: int, said: str
) -> None:
    _project(Path.cwd())
    ran = cli(*argv)
    assert (ran.code, said in ran.err) == (code, True), ran.err
    assert _calls(tools) == [] and not (home / "instances" / "box").exists()


def test_up_without_a_dev_container_or_the_cli_says_so_and_starts_nothing(home: Path, cli: Any, tools: Path) -> None:
    (Path.cwd() / "devenv.toml").write_text('name = "box"\nbackend = "fake"\n')
    ran = cli("up")
    assert ran.code == ExitCode.USAGE and "neither .devcontainer/devcontainer.json nor .devcontainer.json" in ran.err
    _project(Path.cwd())
    (tools.parent / "bin" / "devcontainer").unlink()
    ran = cli("up")
    assert ran.code == ExitCode.UNAVAILABLE == 69
    assert "the Dev Containers CLI (`devcontainer`) is not installed" in ran.err
    assert "npm install -g @devcontainers/cli" in ran.err
    assert not (home / "instances" / "box").exists()


def test_up_refuses_a_workspace_the_instance_does_not_mount_at_the_same_path(
    home: Path, cli: Any, tools: Path, tmp_path: Path
) -> None:
    _project(Path.cwd())
    (tmp_path / "elsewhere").mkdir()
    elsewhere = _project(tmp_path / "elsewhere")
    elsewhere.joinpath("devenv.toml").unlink()  # a dev container in a folder that devenv.toml does not mount
    ran = cli("up", "--workspace-folder", str(elsewhere))
    assert ran.code == ExitCode.STATE
    assert f"the workspace folder {elsewhere} is not mounted in instance `box`" in ran.err
    assert "a dev container would get an empty workspace" in ran.err
    assert _calls(tools) == [] and not (home / "instances" / "box").exists()  # refused before anything started


def test_guest_folder_follows_the_mounts() -> None:
    cfg = Config(backend="fake", mounts=(Mount(location="/src/app", mount_point="/work"),))
    assert devcontainer.guest_folder(cfg, "x", Path("/src/app/api")) == "/work/api"
    assert devcontainer.guest_folder(cfg, "x", Path("/src/other")) is None
    same = Config(backend="fake", mounts=(Mount(location="/src/app"),))
    devcontainer.require_same_path(same, "x", Path("/src/app/api"))  # no error
    with pytest.raises(Exception, match="is mounted at /work, not at the same path"):
        devcontainer.require_same_path(cfg, "x", Path("/src/app"))


def test_forward_ports_and_the_result_line_as_the_cli_prints_them() -> None:
    assert devcontainer.forward_ports({"forwardPorts": [8080, "9090", "db:5432", 0, 70000]}) == (
        [8080, 9090],
        ["db:5432", "0", "70000"],
    )
    assert devcontainer.forward_ports({}) == ([], [])
    log = '[1 ms] @devcontainers/cli 0.89.0\nnot json {\n{"outcome":"success","containerId":"abc"}\n'
    assert devcontainer.last_json_line(log) == {"outcome": "success", "containerId": "abc"}
    assert devcontainer.last_json_line("no result\n[1, 2]\n") == {}


def test_require_mounted_names_the_failed_mount() -> None:
    state = {"mounts": [{"guest": "/src/app", "state": "failed", "reason": "no sshfs in the guest"}]}
    with pytest.raises(Exception, match="mount /src/app in instance `x` is not in place: no sshfs in the guest"):
        devcontainer.require_mounted(state, "/src/app/api", "x")
    devcontainer.require_mounted(state, "/src/other", "x")  # another folder: not this mount's business
    devcontainer.require_mounted({"mounts": [{"guest": "/src/app", "state": "mounted"}]}, "/src/app", "x")


def test_code_prints_the_command_without_vs_code_and_says_how_remote_ssh_finds_the_host(
    home: Path, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("PATH", "/nonexistent")
    _project(Path.cwd())
    cli("start")
    ran = cli("code")
    assert ran.code == ExitCode.NOT_SUPPORTED and "open the folder with `code` itself" in ran.err  # fake: no SSH


def test_ssh_config_included_reads_the_users_ssh_config(tmp_path: Path) -> None:
    user = tmp_path / "user"
    conf = user / ".local/share/devenv/instances/box/ssh.config"
    assert not devcontainer.ssh_config_included(conf, home=user)
    (user / ".ssh").mkdir(parents=True)
    (user / ".ssh" / "config").write_text("Include ~/.local/share/devenv/instances/*/ssh.config\n")
    assert devcontainer.ssh_config_included(conf, home=user)
    (user / ".ssh" / "config").write_text(f"Include {conf}\n")
    assert devcontainer.ssh_config_included(conf, home=user)


def test_open_editor_runs_code_or_prints_its_command(
    tmp_path: Path, tools: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    conf = tmp_path / "ssh.config"
    argv = devcontainer.code_argv("devenv-box", "/src/app")
    assert argv == ["code", "--remote", "ssh-remote+devenv-box", "/src/app"]
    assert devcontainer.open_editor(argv, conf) == 0
    assert _calls(tools) == [{"argv": argv[1:], "docker_host": None}]
    assert f"  Include {conf}\n" in capsys.readouterr().err
    os.unlink(tools.parent / "bin" / "code")
    assert devcontainer.open_editor(argv, conf) == 0
    out = capsys.readouterr()
    assert out.out == "code --remote ssh-remote+devenv-box /src/app\n" and "`code` is not on PATH" in out.err


def test_a_guest_that_sees_host_files_at_its_own_paths_is_not_the_same_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """WSL: C:\\src\\app is /mnt/c/src/app in the distro; the Dev Containers CLI would bind C:\\src\\app."""
    from devenv.backends.drivers import wsl2

    monkeypatch.setattr(wsl2, "guest_cwd", lambda host: "/mnt/c/src/app")
    cfg = Config(backend="wsl2")
    assert devcontainer.guest_folder(cfg, "x", Path("/src/app")) == "/mnt/c/src/app"
    with pytest.raises(Exception, match="is mounted at /mnt/c/src/app, not at the same path"):
        devcontainer.require_same_path(cfg, "x", Path("/src/app"))
