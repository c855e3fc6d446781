"""The tools developers already run, against the shared instance: the Dev Containers CLI, compose, Testcontainers.

Each is the real client (ci/setup-linux.sh installs @devcontainers/cli from
npm, Debian's docker-compose, testcontainers-python from PyPI in the test
extra), pointed at the instance the way the README tells a user to: `devenv
up`, or the environment `devenv docker-env` prints. Their containers run
from the local image (no registry here) and are removed at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from devenv.provision.engines import LOCAL_IMAGE
from tests.e2e.conftest import Devenv
from tests.e2e.drivers import guest_side_only

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
    guest_side_only,
]

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
VM = tuple[Devenv, str, subprocess.CompletedProcess[bytes]]


def tool(name: str) -> str:
    """The real client: on PATH, or where ci/setup-linux.sh puts the npm ones."""
    for folder in (None, REPO / ".venv/npm/node_modules/.bin", Path("/opt/devenv-ci/npm/node_modules/.bin")):
        found = shutil.which(name, path=None if folder is None else str(folder))
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing; ci/setup-linux.sh installs it")
    pytest.skip(f"{name} is not installed (ci/setup-linux.sh installs it)")


def docker_env(d: Devenv, name: str) -> dict[str, str]:
    """What `eval "$(devenv docker-env)"` sets in a user's shell."""
    out = d.ok("docker-env", "-n", name).stdout.decode()
    env = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


def wait_for(probe: Callable[[], T | None], seconds: float, what: str) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = probe()
        except (OSError, http.client.HTTPException):  # not up yet, or a file served mid-change
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f} s"
        time.sleep(0.3)


def http_get(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        body: bytes = r.read()
        return body


@pytest.fixture
def workspace(vm: VM, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder inside the shared instance's project folder (mounted at the same path), emptied after."""
    d, _, _ = vm
    folder = d.project / request.node.name.split("[")[0].removeprefix("test_")[:40]
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_devenv_up_brings_the_dev_container_up_and_exec_runs_in_it(vm: VM, workspace: Path) -> None:
    d, name, _ = vm
    tool("devcontainer")
    env = {**d.env, "PATH": f"{Path(tool('devcontainer')).parent}:{os.environ['PATH']}"}
    port = 18765
    (workspace / ".devcontainer").mkdir()
    (workspace / ".devcontainer" / "devcontainer.json").write_text(
        json.dumps(
            {
                "name": "e2e",
                "image": LOCAL_IMAGE,
                "forwardPorts": [port],
                "containerEnv": {"GREETING": "hello from the dev container"},
                "postCreateCommand": "echo created by postCreateCommand > post-create.txt",
            }
        )
        + "\n// a comment, as devcontainer.json allows\n"
    )
    docker = {**os.environ, **docker_env(d, name)}
    try:
        up = subprocess.run(
            [sys.executable, "-m", "devenv", "up", "-n", name], cwd=workspace, env=env, capture_output=True, timeout=600
        )
        assert up.returncode == 0, up.stderr.decode(errors="replace")[-3000:]
        result = json.loads(up.stdout.decode().strip().splitlines()[-1])
        assert result["outcome"] == "success", result
        # postCreateCommand ran in the workspace, which is the host's folder through the instance's mount
        assert (workspace / "post-create.txt").read_text() == "created by postCreateCommand\n"
        assert f"forwarded 127.0.0.1:{port} to the dev container's port {port}".encode() in up.stderr

        ran = subprocess.run(
            [sys.executable, "-m", "devenv", "up", "-n", name, "--exec", "--", "sh", "-c", "echo $GREETING; pwd"],
            cwd=workspace, env=env, capture_output=True, timeout=600,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr.decode(errors="replace")[-3000:]
        assert ran.stdout.decode().splitlines() == ["hello from the dev container", f"/workspaces/{workspace.name}"]
        code = subprocess.run(
            [sys.executable, "-m", "devenv", "up", "-n", name, "--exec", "--", "sh", "-c", "exit 7"],
            cwd=workspace, env=env, capture_output=True, timeout=600,
        )  # fmt: skip
        assert code.returncode == 7, code.stderr.decode(errors="replace")[-2000:]

        # a server in the dev container answers on the host through the forwardPorts forward
        serve = f"busybox httpd -p {port} -h /workspaces/{workspace.name}"
        started = subprocess.run(
            [sys.executable, "-m", "devenv", "up", "-n", name, "--exec", "--", "sh", "-c", serve],
            cwd=workspace, env=env, capture_output=True, timeout=600,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr.decode(errors="replace")[-2000:]
        body = wait_for(lambda: http_get(port, "/post-create.txt"), 30, f"answer on 127.0.0.1:{port}")
        assert body == b"created by postCreateCommand\n"
        st = json.loads(d.ok("status", "-n", name, "--json").stdout)
        assert f"127.0.0.1:{port} -> {port}" in " ".join(st["details"]["forwards"]), st["details"]["forwards"]
    finally:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=devcontainer.local_folder={workspace}"],
            env=docker, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=docker, capture_output=True)


def test_up_refuses_a_workspace_that_is_not_mounted(vm: VM, tmp_path: Path) -> None:
    d, name, _ = vm
    tool("devcontainer")
    env = {**d.env, "PATH": f"{Path(tool('devcontainer')).parent}:{os.environ['PATH']}"}
    (tmp_path / ".devcontainer.json").write_text(json.dumps({"image": LOCAL_IMAGE}))
    r = subprocess.run(
        [sys.executable, "-m", "devenv", "up", "-n", name], cwd=tmp_path, env=env, capture_output=True, timeout=120
    )
    assert r.returncode == 67, r.stderr
    assert f"the workspace folder {tmp_path} is not mounted in instance `{name}`".encode() in r.stderr


def test_compose_builds_publishes_mounts_execs_and_goes_down(vm: VM, workspace: Path) -> None:
    d, name, _ = vm
    compose = tool("docker-compose")
    port = 18766
    (workspace / "site").mkdir()
    (workspace / "site" / "index.html").write_text("served from the host's folder\n")
    (workspace / "Dockerfile").write_text(
        f"FROM {LOCAL_IMAGE}\nRUN echo built in the guest > /built.txt\n"
        'CMD ["busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/srv"]\n'
    )
    (workspace / "docker-compose.yml").write_text(
        f'version: "3"\nservices:\n  web:\n    build: .\n    ports: ["{port}:8080"]\n    volumes: ["./site:/srv"]\n'
    )
    env = {**os.environ, **docker_env(d, name), "COMPOSE_PROJECT_NAME": "devenve2e"}

    def compose_run(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([compose, *args], cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stderr[-3000:]}"
        return r

    try:
        compose_run("up", "-d", "--build")
        body = wait_for(lambda: http_get(port, "/index.html"), 60, f"answer on 127.0.0.1:{port}")
        assert body == b"served from the host's folder\n"  # the bind mount of the project folder
        (workspace / "site" / "index.html").write_text("changed on the host\n")
        assert wait_for(lambda: http_get(port, "/index.html") == b"changed on the host\n", 20, "the change")
        assert compose_run("exec", "-T", "web", "cat", "/built.txt").stdout == "built in the guest\n"
        logs = compose_run("logs", "--no-color", "web").stdout
        assert logs.count("response:200") >= 2, logs  # busybox httpd -v logs each request it answered
    finally:
        compose_run("down", "--rmi", "local")
    assert not subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=devenve2e"],
        env=env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


TESTCONTAINERS_TEST = """
import time, urllib.request
from testcontainers.core.container import DockerContainer

def test_a_throwaway_container_answers_on_its_mapped_port():
    web = DockerContainer("{image}").with_command(["busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"])
    with web.with_exposed_ports(8080) as c:
        host, port = c.get_container_host_ip(), int(c.get_exposed_port(8080))
        began = time.monotonic()
        while True:
            try:
                body = urllib.request.urlopen(f"http://{{host}}:{{port}}/hostname", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() - began < 5, "the mapped port did not answer within 5 s"
                time.sleep(0.1)
        assert host == "127.0.0.1" and body.strip() == c.get_wrapped_container().id[:12].encode()
        print("answered after", round(time.monotonic() - began, 2), "s")
"""


def test_testcontainers_runs_a_container_and_reaches_its_mapped_port(vm: VM, tmp_path: Path) -> None:
    """A user's test suite with testcontainers-python, in a shell after `eval "$(devenv docker-env)"`."""
    pytest.importorskip("testcontainers", reason="the test extra installs testcontainers")
    d, name, _ = vm
    (tmp_path / "test_with_testcontainers.py").write_text(TESTCONTAINERS_TEST.format(image=LOCAL_IMAGE))
    # Its reaper image cannot be pulled here (no registry): users with one leave the reaper on.
    env = {**os.environ, **docker_env(d, name), "TESTCONTAINERS_RYUK_DISABLED": "true"}
    for key in ("TC_HOST", "DOCKER_CONTEXT"):
        env.pop(key, None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_with_testcontainers.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout and "answered after" in r.stdout, r.stdout


def test_code_opens_the_project_folder_over_ssh(vm: VM, tmp_path: Path) -> None:
    """`devenv code`, with a stand-in `code` that records its argv (VS Code cannot run here)."""
    d, name, _ = vm
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "code").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    (bin_dir / "code").chmod(0o755)
    env = {**d.env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "devenv", "code", "-n", name], cwd=d.project, env=env, capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "argv").read_text().splitlines() == ["--remote", f"ssh-remote+devenv-{name}", str(d.project)]
    ssh_config = d.home / "instances" / name / "ssh.config"
    assert f"Include {ssh_config}".encode() in r.stderr  # how Remote-SSH finds the host
    # and that host answers plain OpenSSH through that file, as Remote-SSH would use it
    probe = subprocess.run(
        ["ssh", "-F", str(ssh_config), f"devenv-{name}", "pwd"], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
