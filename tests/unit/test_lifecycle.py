"""The lifecycle through the CLI, on the FakeBackend (orchestration only)."""

from __future__ import annotations

import json
import os
import platform
import stat
from pathlib import Path
from typing import Any

import pytest

from devenv.errors import ExitCode
from devenv.hostos import normalize_arch
from tests.conftest import tree

pytestmark = pytest.mark.usefixtures("fake")


def test_start_creates_then_status_stop_start_delete(home: Path, cli: Any) -> None:
    ran = cli("start", "-n", "web", "--backend", "fake", "--cpus", "3", "--memory", "3GiB")
    assert ran.code == 0, ran.err
    assert "instance `web` is running (backend fake)" in ran.out
    assert "✓ make the fake disk" in ran.err and "✓ boot the fake VM" in ran.err
    d = home / "instances" / "web"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    saved = (d / "devenv.toml").read_text()
    assert 'backend = "fake"' in saved and "cpus = 3" in saved and 'memory = "3GiB"' in saved

    st = json.loads(cli("status", "-n", "web", "--json").out)
    assert (st["state"], st["cpus"], st["details"]["starts"]) == ("running", 3, 1)
    assert st["arch"] == normalize_arch(platform.machine())  # arch = "auto": the host's

    assert cli("stop", "-n", "web").code == 0
    assert json.loads(cli("status", "-n", "web", "--json").out)["state"] == "stopped"

    ran = cli("start", "-n", "web", "--cpus", "8")
    assert ran.code == 0
    assert "ignoring --cpus" in ran.err
    assert json.loads(cli("status", "-n", "web", "--json").out)["cpus"] == 3

    events = [json.loads(line)["event"] for line in (d / "events.jsonl").read_text().splitlines()]
    assert events == ["created", "started", "stopped", "started"]

    ran = cli("delete", "-n", "web")
    assert ran.code == ExitCode.STATE
    assert "instance `web` is running" in ran.err and "--force" in ran.err
    assert d.exists()
    assert cli("delete", "-n", "web", "--force").code == 0
    assert not d.exists()
    assert (home / "instances").exists(), "delete removes the instance dir and nothing else"


def test_exec_returns_the_commands_exit_code(home: Path, cli: Any) -> None:
    cli("start", "--backend", "fake")
    assert cli("exec", "--", "exit", "7").code == 7
    assert cli("exec", "--", "exit", "0").code == 0
    log = (home / "instances" / "default" / "exec.log").read_text().splitlines()
    assert json.loads(log[0]) == {
        "argv": ["exit", "7"],
        "env": {},
        "cwd": None,
        "ask_agent": True,
        "tty": False,
    }  # where we are


def test_exec_env_flags_reach_the_backend(home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.cli.entry import AGENT_UNAVAILABLE_ENV

    cli("start", "--backend", "fake")
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("NOT_ON_HOST", raising=False)
    ran = cli("exec", "-e", "A=1", "--env", "FROM_HOST", "-e", "NOT_ON_HOST", "--env=B=x=y", "-w", "/w", "--", "true")
    assert ran.code == 0, ran.err
    monkeypatch.setenv(AGENT_UNAVAILABLE_ENV, "1")  # the native launcher asked the agent already
    assert cli("exec", "--", "true").code == 0
    log = [json.loads(line) for line in (home / "instances" / "default" / "exec.log").read_text().splitlines()]
    assert log == [
        {
            "argv": ["true"],
            "env": {"A": "1", "FROM_HOST": "h", "B": "x=y"},
            "cwd": "/w",
            "ask_agent": True,
            "tty": False,
        },
        {"argv": ["true"], "env": {}, "cwd": None, "ask_agent": False, "tty": False},
    ]


@pytest.mark.parametrize("flags", [["-e", "9LIVES=1"], ["--env=A.B=1"], ["-e", "=x"]])
def test_a_bad_env_flag_is_a_usage_error_before_anything_runs(home: Path, cli: Any, flags: list[str]) -> None:
    cli("start", "--backend", "fake")
    ran = cli("exec", *flags, "--", "true")
    assert ran.code == ExitCode.USAGE
    assert "is not an environment variable name" in ran.err and "hint: names are letters" in ran.err
    assert not (home / "instances" / "default" / "exec.log").exists()


def test_exec_on_a_stopped_instance_is_a_state_error(home: Path, cli: Any) -> None:
    cli("create", "--backend", "fake")
    ran = cli("exec", "--", "true")
    assert ran.code == ExitCode.STATE
    assert "instance `default` is stopped" in ran.err
    assert "devenv start -n default" in ran.err


def test_failed_create_leaves_nothing_behind(home: Path, cli: Any) -> None:
    Path("devenv.toml").write_text('backend = "fake"\nenv = { FAKE_FAIL_CREATE = "1" }\n')
    ran = cli("start")
    assert ran.code == ExitCode.UNAVAILABLE
    assert [p.name for p in (home / "instances").iterdir()] == []


def test_create_twice_is_refused_and_changes_nothing(home: Path, cli: Any) -> None:
    assert cli("create", "--backend", "fake").code == 0
    before = tree(home)
    ran = cli("create", "--backend", "fake")
    assert ran.code == ExitCode.STATE and "already exists" in ran.err
    assert tree(home) == before


def test_project_file_in_a_parent_names_and_configures(home: Path, cli: Any) -> None:
    Path("devenv.toml").write_text('name = "proj"\nbackend = "fake"\ncpus = 5\n')
    sub = Path("src/deep")
    sub.mkdir(parents=True)
    os.chdir(sub)
    assert cli("start").code == 0
    rows = json.loads(cli("list", "--json").out)
    assert [(r["name"], r["cpus"], r["state"]) for r in rows] == [("proj", 5, "running")]


def test_list_shows_every_instance_and_a_damaged_one_as_broken(home: Path, cli: Any) -> None:
    for n in ("b", "a"):
        cli("create", "-n", n, "--backend", "fake")
    (home / "instances" / "b" / "devenv.toml").write_text("cpus = = 1\n")
    rows = json.loads(cli("list", "--json").out)
    assert [(r["name"], r["state"]) for r in rows] == [("a", "stopped"), ("b", "broken")]
    assert "not valid TOML" in rows[1]["reason"]
    table = cli("list").out.splitlines()
    assert table[0].split() == ["NAME", "STATE", "BACKEND", "CPUS", "MEMORY", "RSS", "DISK", "RUNTIME"]
    assert table[1].split() == ["a", "stopped", "fake", "2", "2GiB", "20GiB", "docker"]


def test_instance_env_var_picks_the_instance(home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_INSTANCE", "other")
    assert cli("start", "--backend", "fake").code == 0
    assert (home / "instances" / "other").is_dir()


def test_cp_and_docker_env_and_ssh_config_go_to_the_backend(home: Path, cli: Any, tmp_path: Path) -> None:
    cli("start", "--backend", "fake")
    src = tmp_path / "hello.txt"
    src.write_text("hi")
    assert cli("cp", str(src), "default:/tmp/hello.txt").code == 0
    assert (home / "instances" / "default" / "hello.txt").read_text() == "hi"
    out = cli("docker-env").out
    assert out.strip() == f"export DOCKER_HOST=unix://{home}/instances/default/sock/docker.sock"
    assert cli("docker-env", "--shell", "fish").out.startswith("set -gx DOCKER_HOST ")
    assert cli("ssh-config").out.startswith("Host devenv-default")


def test_wsl2_on_a_host_without_wsl_exe_says_where_it_runs(home: Path, cli: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PATH", str(home))  # no wsl.exe on it
    ran = cli("start", "--backend", "wsl2")
    assert ran.code == ExitCode.UNAVAILABLE
    assert "the wsl2 backend runs on Windows: `wsl.exe` is not on PATH here" in ran.err
    assert not any((home / "instances").iterdir())


def test_shell_completion_offers_commands_and_instance_names(home: Path, cli: Any) -> None:
    import subprocess
    import sys

    cli("create", "-n", "alpha", "--backend", "fake")
    cli("create", "-n", "beta", "--backend", "fake")
    env = {**os.environ, "_DEVENV_COMPLETE": "complete_bash", "COMP_WORDS": "devenv st", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-m", "devenv"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["start", "stop", "status"]
    env |= {"COMP_WORDS": "devenv status -n al", "COMP_CWORD": "3"}
    out = subprocess.run([sys.executable, "-m", "devenv"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["alpha"]


def test_stop_suspends_only_where_the_backend_can_and_says_so_when_asked(home: Path, cli: Any) -> None:
    """The fake backend cannot save a guest: a plain stop shuts it down, `--suspend` is refused."""
    assert cli("start", "-n", "web", "--backend", "fake").code == 0
    asked = cli("stop", "--suspend", "-n", "web")
    assert asked.code == ExitCode.NOT_SUPPORTED and "does not support suspend" in asked.err, asked.err
    assert json.loads(cli("status", "-n", "web", "--json").out)["state"] == "running"  # nothing changed
    both = cli("stop", "--suspend", "--shutdown", "-n", "web")
    assert both.code == ExitCode.USAGE and "opposite things" in both.err
    plain = cli("stop", "-n", "web")  # devenv.toml's default, suspend, falls back to a shutdown here
    assert plain.code == 0 and "instance `web` is stopped" in plain.out, plain.err


def test_a_bug_in_a_backends_status_shows_as_one(home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.testing.fake import FakeBackend

    cli("start", "-n", "web", "--backend", "fake")

    def buggy(self: FakeBackend, inst: object) -> None:
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(FakeBackend, "status", buggy)
    monkeypatch.delenv("DEVENV_DEBUG", raising=False)
    st = json.loads(cli("status", "-n", "web", "--json").out)  # list and status go on...
    assert st["state"] == "broken"
    assert st["reason"].startswith("internal error (a bug in devenv): TypeError: 'NoneType' object")  # ...saying so
    assert "DEVENV_DEBUG=1" in st["reason"]
    monkeypatch.setenv("DEVENV_DEBUG", "1")
    ran = cli("status", "-n", "web")
    assert ran.code == ExitCode.INTERNAL
    assert "Traceback (most recent call last)" in ran.err and "in buggy" in ran.err

    def cannot_tell(self: FakeBackend, inst: object) -> None:
        raise OSError("the VM's pid file is unreadable")

    monkeypatch.setattr(FakeBackend, "status", cannot_tell)
    st = json.loads(cli("status", "-n", "web", "--json").out)
    assert (st["state"], st["reason"]) == ("broken", "the VM's pid file is unreadable")  # not a bug: no traceback
