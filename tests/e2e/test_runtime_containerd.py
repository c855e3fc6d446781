"""A containerd instance, end to end: its own CLI runs a container in the guest; docker-env says there is no API.

Its own instance (runtime = "containerd") for the module, deleted at its end.
Debian 12 packages no nerdctl, so the CLI the guest has is containerd's `ctr`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
]


@pytest.fixture(scope="module")
def machine(
    devenv_cli: Devenv, driver: DriverCase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Devenv, str]]:
    root = tmp_path_factory.mktemp("e2e-containerd")
    name = f"{driver.instance}-ctd"
    (root / "devenv.toml").write_text(f'name = "{name}"\nbackend = "{driver.backend}"\nruntime = "containerd"\n')
    d = Devenv(devenv_cli.home, {**devenv_cli.env, **driver.environment()}, root)
    started = d.ok("start", timeout=1200)
    assert b"docker context" not in started.stderr  # no Docker API: no context either
    yield d, name
    d.run("delete", "--force", "-n", name, timeout=300)


def test_ctr_runs_the_local_image_in_the_guest(machine: tuple[Devenv, str]) -> None:
    d, name = machine
    images = d.ok("exec", "-n", name, "--", "ctr", "images", "ls", "-q").stdout.decode().split()
    assert "docker.io/devenv/busybox:latest" in images, images  # the user may list them: group containerd
    ran = d.run(
        "exec", "-n", name, "--", "sudo", "ctr", "run", "--rm", "docker.io/devenv/busybox:latest", "e2e-hi",
        "sh", "-c", "echo hi from containerd; exit 3",
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (3, b"hi from containerd\n"), ran.stderr


def test_docker_env_says_plainly_there_is_no_docker_api(machine: tuple[Devenv, str]) -> None:
    d, name = machine
    r = d.run("docker-env", "-n", name)
    assert r.returncode == 71 and r.stdout == b"", r
    said = r.stderr.decode()
    assert "containerd has no Docker API for a docker CLI" in said, said
    assert f"devenv exec -n {name} -- ctr run --rm IMAGE ID CMD" in said, said
