"""The libvirt driver on this host's qemu:///system: the guest on the NAT network `default`, SSH to its lease.

Runs where this user may use the system daemon (root, or the `libvirt` group
with a daemon that lets it in); skipped with the reason elsewhere. CI's test
user is kept out of that group on purpose (ci/test.sh), so CI covers the same
network path through tests/e2e/test_libvirt_remote.py, whose daemon is this
host's system one reached over SSH.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Devenv
from tests.e2e.drivers import LIBVIRT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
]

NAME = "e2e-nat"
URI = "qemu:///system"


@pytest.fixture(scope="module")
def nat(devenv_cli: Devenv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devenv]:
    lacking = LIBVIRT.missing()
    if lacking:
        pytest.skip(f"the libvirt driver cannot run here: {lacking}")
    pytest.importorskip("libvirt")
    from devenv.backends.drivers.libvirturi import system_problem

    problem = system_problem()
    if problem is not None:
        pytest.skip(f"{URI} is not this user's: {problem.detail}")
    project = tmp_path_factory.mktemp("e2e-nat")
    (project / "devenv.toml").write_text(f'name = "{NAME}"\nbackend = "libvirt"\nlibvirt_uri = "{URI}"\n')
    env = {**devenv_cli.env, **LIBVIRT.environment()}
    env.pop("LIBVIRT_DEFAULT_URI", None)
    d = Devenv(devenv_cli.home, env, project)
    yield d
    d.run("delete", "--force", "-n", NAME, timeout=300)


def test_a_system_domain_is_reached_at_its_dhcp_lease(nat: Devenv) -> None:
    started = nat.ok("start", timeout=1500).stderr.decode()
    assert "the NAT network `default`" in started and "DHCP lease" in started, started
    inst_dir: Path = nat.home / "instances" / NAME
    address = (inst_dir / "libvirt.address").read_text().strip()
    assert address.startswith("192.168.122."), address
    r = nat.run("exec", "--", "sh", "-c", "hostname -I; exit 4")
    assert r.returncode == 4 and address in r.stdout.decode(), r.stderr.decode()
    config = nat.ok("ssh-config").stdout.decode()
    assert f"HostName {address}" in config and "ProxyCommand" not in config  # straight to the guest
    nat.ok("delete", "--force", timeout=300)
    assert not inst_dir.exists()
