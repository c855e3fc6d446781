"""Bad input: one error line, a hint, a distinct exit code, and nothing on disk changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devenv.errors import ExitCode
from tests.conftest import tree

LONG = "x" * 200


@pytest.mark.parametrize(
    ("argv", "project_toml", "code", "message"),
    [
        (["start", "-n", "a/b"], None, ExitCode.USAGE, "instance name `a/b` may only contain"),
        (["start", "-n", LONG], None, ExitCode.USAGE, "instance name is 200 characters long; at most 63"),
        (["status", "-n", "ghost"], None, ExitCode.NOT_FOUND, "instance `ghost` does not exist"),
        (["exec", "-n", "ghost", "--", "true"], None, ExitCode.NOT_FOUND, "instance `ghost` does not exist"),
        (["stop", "-n", "ghost"], None, ExitCode.NOT_FOUND, "instance `ghost` does not exist"),
        (["delete", "-n", "ghost"], None, ExitCode.NOT_FOUND, "instance `ghost` does not exist"),
        (["exec"], None, ExitCode.USAGE, "exec needs a command after `--`"),
        (["exec", "--"], None, ExitCode.USAGE, "exec needs a command after `--`"),
        (["start", "--backend", "qemuu"], None, ExitCode.USAGE, "unknown backend `qemuu`"),
        (["start", "--memory", "-1GiB"], None, ExitCode.USAGE, '--memory must be a positive size, not "-1GiB"'),
        (["start", "--cpus", "0"], None, ExitCode.USAGE, "--cpus must be a whole number from 1 to 256, not 0"),
        (["start", "--runtime", "rkt"], None, ExitCode.USAGE, "--runtime must be one of docker, podman, containerd"),
        (["start"], "cpus = = 1\n", ExitCode.CONFIG, "devenv.toml:1: not valid TOML"),
        (["start"], 'cpus = "many"\n', ExitCode.CONFIG, "devenv.toml:1: field `cpus` must be a whole number"),
        (["start"], 'memory = "-2GiB"\n', ExitCode.CONFIG, "devenv.toml:1: field `memory` must be a positive size"),
        (["start"], 'backend = "vbox"\n', ExitCode.CONFIG, "devenv.toml:1: field `backend` must be one of"),
        (["start"], "\nfrobnicate = 1\n", ExitCode.CONFIG, "devenv.toml:2: field `frobnicate` is not a known field"),
        (["start"], 'name = "a/b"\n', ExitCode.USAGE, "name `a/b` may only contain"),
        (["cp", "a", "b"], None, ExitCode.USAGE, "neither `a` nor `b` is a path inside an instance"),
        (["cp", "vm1:/a", "vm2:/b"], None, ExitCode.USAGE, "both `vm1:/a` and `vm2:/b` are paths inside an instance"),
        (["no-such-command"], None, ExitCode.USAGE, None),
    ],
)
def test_bad_input(
    home: Path, cli: Any, argv: list[str], project_toml: str | None, code: ExitCode, message: str | None
) -> None:
    if project_toml is not None:
        Path("devenv.toml").write_text(project_toml)
    before = tree(home)
    ran = cli(*argv)
    assert ran.code == code, ran.err
    if message is not None:
        first, _, rest = ran.err.partition("\n")
        assert first.startswith("devenv: error: "), ran.err
        assert message in first
        assert rest.startswith("  hint: "), "every error carries a hint"
    assert "Traceback" not in ran.err
    assert tree(home) == before, "a failed command must not change anything on disk"


def test_exit_codes_are_distinct() -> None:
    values = [c.value for c in ExitCode]
    assert len(values) == len(set(values))


def test_internal_errors_are_reported_without_traceback(home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.cli import commands

    def boom(as_json: bool) -> int:
        raise RuntimeError("kaput")

    monkeypatch.setattr(commands, "list_instances", boom)
    ran = cli("list")
    assert ran.code == ExitCode.INTERNAL
    assert ran.err.splitlines()[0] == "devenv: error: internal error: RuntimeError: kaput"
    assert "Traceback" not in ran.err
    monkeypatch.setenv("DEVENV_DEBUG", "1")
    assert "Traceback" in cli("list").err
