"""A podman instance, end to end: the host's `podman --remote` and docker CLI against the guest's podman.

Its own instance (runtime = "podman") for the module, deleted at its end.
Podman's connection list lives in the file CONTAINERS_CONF names, a
temporary one here, so the test user's own podman setup is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devenv.provision.engines import LOCAL_IMAGE
from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase, guest_side_only

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
    guest_side_only,
]


@dataclass
class Podman:
    d: Devenv
    name: str
    started: subprocess.CompletedProcess[bytes]

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "--remote", *args], env=self.d.env, capture_output=True, text=True, timeout=600, check=False
        )


@pytest.fixture(scope="module")
def machine(devenv_cli: Devenv, driver: DriverCase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is missing; ci/setup-linux.sh installs it")
        pytest.skip("podman is not installed on the host (ci/setup-linux.sh installs it)")
    root = tmp_path_factory.mktemp("e2e-podman")
    name = f"{driver.instance}-podman"
    (root / "devenv.toml").write_text(f'name = "{name}"\nbackend = "{driver.backend}"\nruntime = "podman"\n')
    (root / "containers.conf").write_text("")  # podman refuses a CONTAINERS_CONF that does not exist
    env = {**devenv_cli.env, **driver.environment(), "CONTAINERS_CONF": str(root / "containers.conf")}
    env.pop("CONTAINER_HOST", None)
    env.pop("CONTAINER_CONNECTION", None)
    d = Devenv(devenv_cli.home, env, root)
    started = d.ok("start", timeout=1200)
    yield Podman(d, name, started)
    d.run("delete", "--force", "-n", name, timeout=300)


def test_start_adds_a_podman_connection_and_podman_remote_runs_a_container(machine: Podman) -> None:
    assert f"podman connection devenv-{machine.name}".encode() in machine.started.stderr
    sock = machine.d.home / "instances" / machine.name / "sock" / "docker.sock"
    listed = machine.podman("system", "connection", "list", "--format", "{{.Name}} {{.URI}}")
    assert f"devenv-{machine.name} unix://{sock}" in listed.stdout.splitlines(), listed
    ran = machine.podman("--connection", f"devenv-{machine.name}", "run", "--rm", LOCAL_IMAGE, "echo", "hi")
    assert (ran.returncode, ran.stdout) == (0, "hi\n"), ran.stderr
    info = machine.podman("--connection", f"devenv-{machine.name}", "info", "--format", "{{.Host.Hostname}}")
    assert info.stdout.strip() == machine.name, info.stderr  # the guest's podman, not one on the host


def test_the_docker_cli_speaks_to_podman_through_docker_env(machine: Podman) -> None:
    out = machine.d.ok("docker-env", "-n", machine.name).stdout.decode()
    assert "export TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE=/run/podman/podman.sock" in out.splitlines(), out
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    ran = subprocess.run(
        ["docker", "run", "--rm", LOCAL_IMAGE, "sh", "-c", "echo from podman"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, "from podman\n"), ran.stderr
    version = subprocess.run(["docker", "version", "--format", "{{.Server.Components}}"], env=env, capture_output=True)
    assert b"Podman Engine" in version.stdout, version


def test_the_images_docker_is_off(machine: Podman) -> None:
    """The image boots with docker configured and starting; a podman instance's first boot stops and disables it."""
    script = (
        "systemctl is-enabled docker.service docker.socket; "
        "systemctl is-active docker.service docker.socket containerd.service; true"
    )
    out = machine.d.ok("exec", "-n", machine.name, "--", "sh", "-c", script).stdout.decode()
    assert out.split() == ["disabled", "disabled", "inactive", "inactive", "inactive"], out


def test_delete_removes_the_podman_connection(machine: Podman) -> None:
    machine.d.ok("delete", "--force", "-n", machine.name, timeout=300)
    listed = machine.podman("system", "connection", "list", "--format", "{{.Name}}")
    assert f"devenv-{machine.name}" not in listed.stdout.split(), listed
