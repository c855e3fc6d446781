"""A domain someone made by hand (virsh, virt-manager) is never devenv's, whatever its name.

Two hand-made domains on the libvirt driver's daemon, neither with devenv's
<metadata>: one named as the instance, one with the very name devenv would
give the instance's domain, left running. `list`, `stop`, a refused `start`
and `delete --force` of the same-named instance leave both as they were.
The hand-made domains boot nothing (no disk): their QEMU idles in firmware.
"""

from __future__ import annotations

import json
import shutil
import subprocess
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

CASE = LIBVIRT
NAME = "handmade"


def hand_made_xml(name: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
        f"<emulator>{shutil.which('qemu-system-x86_64')}</emulator><controller type='usb' model='none'/>"
        "<memballoon model='none'/></devices></domain>"
    )


def virsh(uri: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def lv(devenv_cli: Devenv, tmp_path: Path) -> Iterator[tuple[Devenv, str, list[str]]]:
    missing = CASE.missing()
    if missing:
        pytest.skip(f"the libvirt driver cannot run here: {missing}")
    from devenv.backends.drivers.libvirtxml import domain_name

    env = {**devenv_cli.env, **CASE.environment()}
    uri = env["LIBVIRT_DEFAULT_URI"]
    (tmp_path / "devenv.toml").write_text(f'name = "{NAME}"\nbackend = "libvirt"\n')
    d = Devenv(devenv_cli.home, env, tmp_path)
    names = [NAME, domain_name(NAME, (devenv_cli.home / "instances" / NAME).absolute())]
    for n in names:
        defined = subprocess.run(
            ["virsh", "-c", uri, "define", "/dev/stdin"], input=hand_made_xml(n), capture_output=True, text=True
        )
        assert defined.returncode == 0, defined.stderr
    virsh(uri, "start", names[1])
    try:
        yield d, uri, names
    finally:
        d.run("delete", "--force", "-n", NAME, timeout=300)
        for n in names:
            virsh(uri, "destroy", n, check=False)
            virsh(uri, "undefine", n, check=False)


def test_a_hand_made_domain_survives_list_start_stop_and_delete(lv: tuple[Devenv, str, list[str]]) -> None:
    d, uri, names = lv
    uuids = [virsh(uri, "domuuid", n) for n in names]
    d.ok("create", timeout=300)
    listing = {r["name"]: r["state"] for r in json.loads(d.ok("list", "--json").stdout)}
    assert listing[NAME] == "stopped"  # the running hand-made domain of devenv's name is not the instance
    started = d.run("start", timeout=300)
    assert started.returncode == 67, started.stderr
    assert f"a libvirt domain named {names[1]} exists on {uri} that devenv did not make for `{NAME}`" in (
        started.stderr.decode()
    )
    d.ok("stop", "-n", NAME, timeout=300)
    d.ok("delete", "--force", "-n", NAME, timeout=300)
    assert not (d.home / "instances" / NAME).exists()
    assert [virsh(uri, "domuuid", n) for n in names] == uuids  # both still defined
    assert virsh(uri, "domstate", names[1]) == "running"
    assert virsh(uri, "domstate", names[0]) == "shut off"
