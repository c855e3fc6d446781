"""One booted VM per driver shared by every e2e test: booting under TCG costs a minute or more.

The `vm` fixture is the conformance suite's entry: it is parametrized over the
VM drivers this host can run (tests/e2e/drivers.py: qemu and libvirt), so every
test that takes it runs once per driver against that driver's own instance,
except a module of checks of the guest side alone (drivers.guest_side_only).
The guest image comes from the image cache (DEVENV_CACHE, outside the repo);
CI builds it once as root before the tests run as an ordinary user. The QEMU
VM runs with DEVENV_QEMU_ACCEL=tcg unless the environment says otherwise
(nested KVM hangs on the CI machines; on a laptop set DEVENV_QEMU_ACCEL=kvm).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.drivers import CASES, DriverCase


@dataclass
class Devenv:
    home: Path
    env: dict[str, str]
    project: Path  # the folder with the shared VM's devenv.toml; commands run here

    def run(
        self, *args: str, input: bytes | None = None, cwd: Path | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "devenv", *args],
            input=input,
            capture_output=True,
            env=self.env,
            cwd=cwd or self.project,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        r = self.run(*args, **kw)  # type: ignore[arg-type]
        assert r.returncode == 0, f"devenv {' '.join(args)} -> {r.returncode}\n{r.stderr.decode(errors='replace')}"
        return r


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing; ci/setup-linux.sh installs it")
        pytest.skip(f"{tool} is not installed (ci/setup-linux.sh installs it)")


@pytest.fixture(scope="session")
def devenv_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devenv]:
    _require("qemu-system-x86_64")
    _require("qemu-img")
    home = Path(os.environ.get("DEVENV_E2E_HOME") or tmp_path_factory.mktemp("e2e-home"))
    project = tmp_path_factory.mktemp("e2e-project")
    # DEVENV_TEST_CLOCK_SHIFT: host agents let a test move the wall clock their jump detector reads
    env = {**os.environ, "DEVENV_HOME": str(home), "DEVENV_TEST_CLOCK_SHIFT": "1", **CASES["qemu"].environment()}
    env.pop("DEVENV_INSTANCE", None)
    d = Devenv(home, env, project)
    listing = json.loads(d.ok("image", "list", "--json").stdout)
    if not any(row["name"] == "debian-12" and row["cached"] for row in listing):
        d.ok("image", "build", "debian-12", timeout=3600)
    yield d
    for inst in (home / "instances").glob("*") if (home / "instances").exists() else []:
        d.run("delete", "--force", "-n", inst.name, timeout=120)


@pytest.fixture(scope="session", params=sorted(CASES))
def driver(request: pytest.FixtureRequest) -> DriverCase:
    """One VM driver of the conformance suite (a test id each)."""
    case = CASES[request.param]
    missing = case.missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the {case.backend} driver cannot run here: {missing}")
        pytest.skip(f"the {case.backend} driver cannot run here: {missing}")
    return case


@pytest.fixture(scope="session")
def vm(
    devenv_cli: Devenv, driver: DriverCase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Devenv, str, subprocess.CompletedProcess[bytes]]]:
    """The driver's shared instance, started once from its project folder (which it then mounts).

    Its `devenv start` result is kept for assertions. Test modules run in file
    order: test_hostagent_e2e.py first, test_vm_lifecycle.py (which ends by
    deleting the instance) last.
    """
    project = tmp_path_factory.mktemp(f"e2e-{driver.backend}")
    (project / "devenv.toml").write_text(f'name = "{driver.instance}"\nbackend = "{driver.backend}"\n')
    d = Devenv(devenv_cli.home, {**devenv_cli.env, **driver.environment()}, project)
    started = d.ok("start")
    yield d, driver.instance, started
