"""The native backend against the host's real engine, through the real console script.

CI starts dockerd on the host (ci/setup-linux.sh). On a host with no engine
these are skipped with that reason; nothing here fakes an engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.cli.ui import Steps
from devenv.hostos import Host

pytestmark = pytest.mark.integration

ENGINE = Host().engine
needs_docker = pytest.mark.skipif(
    ENGINE is None or ENGINE.runtime != "docker",
    reason="no docker engine answers on this host (ci/setup-linux.sh starts one)",
)


def devenv(
    *args: str, home: Path, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DEVENV_HOME": str(home)}
    env.pop("DEVENV_INSTANCE", None)
    return subprocess.run(
        [sys.executable, "-m", "devenv", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
        check=False,
    )


@needs_docker
def test_start_exec_docker_env_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    r = devenv("start", "-n", "nat", "--backend", "native", home=home, cwd=work)
    assert r.returncode == 0, r.stderr
    assert b"instance `nat` is running (backend native)" in r.stdout

    r = devenv("exec", "-n", "nat", "--", "docker", "version", "--format", "{{.Server.Os}}", home=home, cwd=work)
    assert (r.returncode, r.stdout.strip()) == (0, b"linux"), r.stderr

    r = devenv("exec", "-n", "nat", "--", "sh", "-c", "echo out; echo err >&2; exit 7", home=home, cwd=work)
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")

    data = os.urandom(3 * 1024 * 1024)
    r = devenv("exec", "-n", "nat", "--", "wc", "-c", home=home, stdin=data, cwd=work)
    assert r.stdout.split()[0] == str(len(data)).encode()

    r = devenv("exec", "-n", "nat", "--", "pwd", home=home, cwd=work)
    assert r.stdout.strip() == str(work).encode(), "exec runs in the caller's directory"

    r = devenv("exec", "-n", "nat", "--", "sh", "-c", "kill -TERM $$", home=home, cwd=work)
    assert r.returncode == 128 + 15, "a signal death is reported as 128+N"

    r = devenv("docker-env", "-n", "nat", home=home, cwd=work)
    line = r.stdout.decode().strip()
    assert line.startswith("export DOCKER_HOST=unix://"), line
    docker = shutil.which("docker")
    assert docker
    out = subprocess.run(
        [docker, "version", "--format", "{{.Server.Version}}"],
        env={**os.environ, "DOCKER_HOST": line.partition("=")[2]},
        capture_output=True,
        check=True,
    )
    assert out.stdout.strip()

    st = json.loads(devenv("status", "-n", "nat", "--json", home=home).stdout)
    assert st["state"] == "running" and st["details"]["engine"].startswith("unix://")

    assert devenv("stop", "-n", "nat", home=home).returncode == 0
    assert json.loads(devenv("status", "-n", "nat", "--json", home=home).stdout)["state"] == "stopped"
    r = devenv("exec", "-n", "nat", "--", "true", home=home)
    assert r.returncode == 67 and b"is stopped" in r.stderr

    assert devenv("delete", "-n", "nat", home=home).returncode == 0
    assert not (home / "instances" / "nat").exists()


@needs_docker
def test_native_refuses_a_runtime_it_cannot_serve(tmp_path: Path) -> None:
    r = devenv("start", "-n", "ctd", "--backend", "native", "--runtime", "containerd", home=tmp_path)
    assert r.returncode == 71
    assert b"backend `native` does not support runtime `containerd`" in r.stderr
    assert not (tmp_path / "instances" / "ctd").exists()


def test_native_without_engine_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the probe at a socket nobody serves: the error names the fix (no engine needed)."""
    from devenv.backends.base import InstanceRef
    from devenv.backends.native import NativeBackend
    from devenv.config import Config
    from devenv.errors import BackendUnavailable
    from devenv.testing import FakeHost

    backend = NativeBackend(FakeHost("linux"))
    with pytest.raises(BackendUnavailable) as e:
        backend.start(InstanceRef("x", tmp_path, Config(backend="native")), Steps(quiet=True))
    assert e.value.message == "no docker engine answers on this host"
    assert "systemctl start docker" in e.value.hint and "--backend qemu" in e.value.hint
