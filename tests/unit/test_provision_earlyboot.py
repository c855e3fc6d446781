"""earlyboot.py, the first boot of images devenv built, run on a folder standing in for the guest.

The program runs as root in a real guest (tests/e2e boot it on every first
start); here it gets a ROOT argument, writes its files under it and records
the commands (useradd, resize2fs, systemctl, firstboot.sh) instead of running
them. Its input is the real devenv-seed.json the host writes into the seed ISO,
so a field renamed on one side fails here.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.guestagent import protocol
from devenv.provision import earlyboot, seed, userdata
from tests.unit.test_provision_seed import make_config

posix = pytest.mark.skipif(os.name != "posix", reason="file modes and symlinks as on the guest")


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    root = tmp_path / "guest"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "proc/mounts").write_text("/dev/vda / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdevenv\n::1\tlocalhost\n")
    (root / "etc/ssh/ssh_host_rsa_key").write_text("left by a build\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    (root / "usr/share/zoneinfo/Europe/Berlin").write_text("TZif")
    return root


@pytest.fixture
def seed_json(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    tz_root = tmp_path / "hostroot"
    (tz_root / "etc").mkdir(parents=True)
    (tz_root / "etc/timezone").write_text("Europe/Berlin\n")
    result = seed.prepare_seed(tmp_path / "inst", make_config(), environ={}, root=tz_root)
    data = seed.read_seed_iso(result.iso).files["devenv-seed.json"]
    path = tmp_path / "devenv-seed.json"
    path.write_bytes(data)
    return path, json.loads(data)


def run_earlyboot(seed_path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """As the guest runs it: the file from the ISO, a separate python process."""
    program = seed_path.parent / "devenv-earlyboot.py"
    program.write_text(userdata.earlyboot_source())
    return subprocess.run([sys.executable, str(program), str(seed_path), str(root)], capture_output=True, text=True)


def commands(root: Path) -> list[list[str]]:
    log = root / "commands.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@posix
def test_first_boot_writes_identity_files_and_hands_over(
    guest: Path, seed_json: tuple[Path, dict[str, object]]
) -> None:
    path, data = seed_json
    res = run_earlyboot(path, guest)
    assert res.returncode == 0, res.stderr

    assert (guest / "etc/hostname").read_text() == "demo\n"
    hosts = (guest / "etc/hosts").read_text().splitlines()
    assert "127.0.1.1\tdemo" in hosts and "127.0.1.1\tdevenv" not in hosts and "::1\tlocalhost" in hosts
    assert os.readlink(guest / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"

    # only the pinned host key, private 0600
    assert sorted(p.name for p in (guest / "etc/ssh").iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    host_key = data["host_key"]
    assert isinstance(host_key, dict)
    assert (guest / "etc/ssh/ssh_host_ed25519_key").read_text().strip() == host_key["private"].strip()
    assert stat.S_IMODE((guest / "etc/ssh/ssh_host_ed25519_key").stat().st_mode) == 0o600

    keys = guest / "home/devenv/.ssh/authorized_keys"
    user = data["user"]
    assert isinstance(user, dict)
    assert keys.read_text().splitlines() == user["authorized_keys"]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert (guest / "etc/sudoers.d/90-devenv").read_text() == "devenv ALL=(ALL) NOPASSWD:ALL\n"
    assert stat.S_IMODE((guest / "etc/sudoers.d/90-devenv").stat().st_mode) == 0o440

    # the same files as cloud-init's write_files, with their modes, plus the provisioning unit
    firstboot = guest / userdata.FIRSTBOOT.lstrip("/")
    assert firstboot.read_text().startswith("#!/bin/sh")
    assert stat.S_IMODE(firstboot.stat().st_mode) == 0o755
    assert (guest / "etc/devenv/engine").read_text() == "docker\n"
    assert (
        "ExecStart=/bin/sh /usr/local/lib/devenv/firstboot.sh\n"
        in (guest / userdata.PROVISION_UNIT.lstrip("/")).read_text()
    )
    assert (guest / "etc/environment").read_text() == 'EDITOR="vim"\nGREETING="hello $USER world"\n'
    for secret in (userdata.ENVIRONMENT, userdata.ENV_SH):  # appended or written, 0600 until firstboot.sh widens it
        assert stat.S_IMODE((guest / secret.lstrip("/")).stat().st_mode) == 0o600, secret
    agent = guest / protocol.GUEST_PATH.lstrip("/")
    assert list((agent.parent / "__pycache__").glob("guestagent*.pyc")), "the agent is compiled once, as root"

    new_units = "devenv-ready.service devenv-guestagent.socket devenv-guestagent.service devenv-relay.service devenv-mounts.service"
    new_units += " devenv-reclaim.service devenv-reclaim.timer devenv-provision.service"
    assert commands(guest) == [
        ["useradd", "-m", "-U", "-u", str(user["uid"]), "-s", "/bin/bash", "-c", "devenv", "devenv"],
        ["env", f"DEVENV_CHANGED_UNITS={new_units}", "/bin/sh", userdata.FIRSTBOOT, "early"],
        ["resize2fs", "/dev/vda"],
        [
            "systemctl",
            "start",
            "--no-block",
            "devenv-guestagent.socket",
            "devenv-guestagent.service",
            "devenv-mounts.service",
            "devenv-relay.service",
            "devenv-reclaim.timer",
            "devenv-provision.service",
        ],
    ]
    # enabled as `systemctl enable` does it: a symlink in each WantedBy= target's .wants
    units = guest / "etc/systemd/system"
    links = {str(p.relative_to(units)): os.readlink(p) for p in units.glob("*.wants/*")}
    assert links == {
        f"{target}.wants/{unit}": f"/etc/systemd/system/{unit}"
        for target, unit in [
            ("multi-user.target", "devenv-ready.service"),
            ("sockets.target", "devenv-guestagent.socket"),
            ("multi-user.target", "devenv-guestagent.service"),
            ("multi-user.target", "devenv-mounts.service"),
            ("multi-user.target", "devenv-relay.service"),
            ("timers.target", "devenv-reclaim.timer"),
            ("multi-user.target", "devenv-provision.service"),
        ]
    }
    assert (guest / "var/lib/devenv/seeded").read_text() == f"{data['instance_id']}\n"
    assert not (guest / "var/lib/devenv/failed").exists()


@posix
def test_a_second_run_after_a_crash_changes_nothing_twice(
    guest: Path, seed_json: tuple[Path, dict[str, object]]
) -> None:
    path, _ = seed_json
    assert run_earlyboot(path, guest).returncode == 0
    (guest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\ndevenv:x:1000:1000::/home/devenv:/bin/bash\n")
    (guest / "commands.log").unlink()
    before = (guest / "etc/environment").read_text()
    relay_unit = guest / userdata.RELAY_UNIT.lstrip("/")
    os.utime(relay_unit, ns=(1_000_000_000, 1_000_000_000))
    (guest / userdata.READY_UNIT.lstrip("/")).write_text("[Unit]\nDescription=an older one\n")
    assert run_earlyboot(path, guest).returncode == 0
    assert [c[:3] for c in commands(guest)] == [  # no second useradd
        ["env", "DEVENV_CHANGED_UNITS=devenv-ready.service", "/bin/sh"],  # the one file whose bytes changed
        ["resize2fs", "/dev/vda"],
        ["systemctl", "start", "--no-block"],
    ]
    assert relay_unit.stat().st_mtime_ns == 1_000_000_000  # the same bytes: not rewritten, so not stale to systemd
    assert (guest / "etc/hosts").read_text().count("127.0.1.1") == 1
    assert (guest / "etc/environment").read_text() == before  # appended once, not per run


@posix
def test_the_user_joins_the_engines_group_when_the_image_has_it(
    guest: Path, seed_json: tuple[Path, dict[str, object]]
) -> None:
    """The image devenv built has the docker group: useradd gives it, and the engine step needs no usermod."""
    path, data = seed_json
    user = data["user"]
    assert isinstance(user, dict) and user["groups"] == ["docker"]
    (guest / "etc/group").write_text("root:x:0:\ndocker:x:998:\n")
    assert run_earlyboot(path, guest).returncode == 0
    assert commands(guest)[0] == [
        *("useradd", "-m", "-U", "-u", str(user["uid"]), "-G", "docker", "-s", "/bin/bash", "-c", "devenv", "devenv")
    ]


@posix
def test_an_install_section_beyond_wantedby_is_refused(guest: Path, seed_json: tuple[Path, dict[str, object]]) -> None:
    """enable() writes what `systemctl enable` would for WantedBy= alone; anything else must not be half-done."""
    path, data = seed_json
    files = data["files"]
    assert isinstance(files, list)
    relay = next(f for f in files if f["path"] == userdata.RELAY_UNIT)
    relay["content"] += "Alias=relay.service\n"
    path.write_text(json.dumps(data))
    res = run_earlyboot(path, guest)
    assert res.returncode == 1
    assert (guest / "var/lib/devenv/failed").read_text() == f"step=units rc=1 log={earlyboot.LOG}\n"
    assert "Alias is not handled" in res.stderr


def test_every_engine_names_the_group_its_script_uses() -> None:
    from devenv.provision import assets, engines

    for engine in engines.ENGINES.values():
        script = assets.read_text(f"engines/{engine.script}")
        assert f"\nGROUP={engine.group}\n" in script, engine.name


@posix
def test_a_broken_seed_is_a_named_failure(guest: Path, seed_json: tuple[Path, dict[str, object]]) -> None:
    path, data = seed_json
    del data["host_key"]
    path.write_text(json.dumps(data))
    res = run_earlyboot(path, guest)
    assert res.returncode == 1
    assert (guest / "var/lib/devenv/failed").read_text() == f"step=host-key rc=1 log={earlyboot.LOG}\n"
    assert "step host-key" in res.stderr
    assert not (guest / "var/lib/devenv/seeded").exists()

    path.write_text("{not json")
    assert run_earlyboot(path, guest).returncode == 1
    assert (guest / "var/lib/devenv/failed").read_text().startswith("step=seed rc=1 ")


def test_user_data_and_devenv_seed_carry_the_same_first_boot(seed_json: tuple[Path, dict[str, object]]) -> None:
    _, data = seed_json
    files = data["files"]
    assert isinstance(files, list)
    paths = [f["path"] for f in files]
    assert paths[-1] == userdata.PROVISION_UNIT
    assert userdata.FIRSTBOOT in paths and protocol.GUEST_PATH in paths
    assert data["firstboot"] == userdata.FIRSTBOOT and data["agent"] == protocol.GUEST_PATH


def test_the_guest_side_names_match_the_hosts() -> None:
    """earlyboot.py runs in the guest with the stdlib only, so it cannot import these; they must agree."""
    from devenv.provision import assets

    assert earlyboot.STATE == userdata.STATE_DIR
    assert earlyboot.LOG == userdata.PROVISION_LOG
    assert userdata.PROVISION_UNIT == "/etc/systemd/system/" + earlyboot.PROVISION_UNIT
    firstboot = assets.read_text("cloud-init/firstboot.sh")
    assert f"    for dev in {' '.join(earlyboot.CONSOLES)}; do" in firstboot  # announced where firstboot.sh does
    assert f"LOG={earlyboot.LOG}" in firstboot and f"STATE={earlyboot.STATE}" in firstboot
