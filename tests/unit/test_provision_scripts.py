"""The shell scripts that run in the guest: syntax, lint, and the parts that run anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from devenv.provision import assets, engines

SCRIPTS = sorted(
    [
        *assets.provisioning_dir().glob("engines/*.sh"),
        *assets.provisioning_dir().glob("guest/*.sh"),
        *assets.provisioning_dir().glob("image/*.sh"),
        *assets.provisioning_dir().glob("wsl/*.sh"),
        assets.provisioning_dir() / "cloud-init/firstboot.sh",
    ]
)
COMMON = assets.provisioning_dir() / "engines/common.sh"
BUSYBOX = assets.provisioning_dir() / "engines/busybox.sh"
posix = pytest.mark.skipif(os.name != "posix" or not shutil.which("sh"), reason="needs a POSIX sh")


@posix
@pytest.mark.parametrize(
    ("load", "args", "reclaimed"),
    [("0.42", [], True), ("1.99", [], True), ("64.00", [], False), ("64.00", ["--now"], True)],
)
def test_reclaim_gives_back_only_when_the_guest_is_not_busy(
    tmp_path: Path, load: str, args: list[str], reclaimed: bool
) -> None:
    loadavg, drop, trims = tmp_path / "loadavg", tmp_path / "drop_caches", tmp_path / "trims"
    loadavg.write_text(f"{load} 0.30 0.20 1/123 4567\n")
    env = {**os.environ, "DEVENV_LOADAVG": str(loadavg), "DEVENV_DROP_CACHES": str(drop), "DEVENV_TRIM_ROOT": "/r"}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    fakes = {"nproc": "echo 2", "fstrim": f'echo "$@" >> {trims}; echo "/r: 1 GiB (1073741824 bytes) trimmed"'}
    for name, body in fakes.items():  # the guest's CPU count and fstrim, not this host's
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    res = subprocess.run(
        ["sh", str(assets.provisioning_dir() / "guest/reclaim.sh"), *args], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert (drop.read_text() if drop.exists() else None) == ("1\n" if reclaimed else None)
    assert (trims.read_text() if trims.exists() else None) == ("-v /r\n" if reclaimed else None)
    assert ("trimmed" if reclaimed else "busy") in res.stdout


def test_every_runtime_has_a_script() -> None:
    for engine in engines.ENGINES.values():
        assert (assets.provisioning_dir() / "engines" / engine.script).is_file()


@posix
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sh_syntax(script: Path) -> None:
    res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    res = subprocess.run(
        ["shellcheck", "-s", "sh", "-x", str(script)], capture_output=True, text=True, cwd=assets.provisioning_dir()
    )
    assert res.returncode == 0, res.stdout


def test_ready_unit_runs_the_announcer() -> None:
    unit = (assets.provisioning_dir() / "systemd/devenv-ready.service").read_text()
    assert "ExecStart=/bin/sh /usr/local/lib/devenv/firstboot.sh announce" in unit
    assert "ConditionPathExists=|/var/lib/devenv/provisioned" in unit
    # the host dials on the line: sshd and the guest's network must both be up by then
    assert "After=ssh.service network-online.target" in unit.splitlines()
    assert "Wants=network-online.target" in unit.splitlines()


def _sh(snippet: str, *args: str) -> subprocess.CompletedProcess[str]:
    """common.sh as the engine scripts source it: $0 is a script beside it."""
    script = f'. "{COMMON}"; {snippet}'
    return subprocess.run(["sh", "-c", script, str(COMMON.parent / "docker.sh"), *args], capture_output=True, text=True)


@posix
def test_busybox_rootfs_and_docker_archive(tmp_path: Path) -> None:
    if _sh("find_busybox").returncode != 0:
        pytest.skip("no busybox on this host (apt-get install busybox)")
    root = tmp_path / "rootfs"
    res = _sh('make_busybox_rootfs "$1"', str(root))
    assert res.returncode == 0, res.stderr
    assert (root / "bin/busybox").is_file()
    assert os.readlink(root / "bin/sh") == "busybox"
    if os.geteuid() == 0 and shutil.which("chroot"):
        out = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo hi from $(basename $0)"], capture_output=True)
        assert out.stdout == b"hi from sh\n", out.stderr
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(root, arcname=".")
    archive = tmp_path / "img.tar"
    res = _sh('make_docker_archive "$1" "$2" devenv/busybox:latest amd64', str(layer), str(archive))
    assert res.returncode == 0, res.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["devenv/busybox:latest"]
        config_bytes = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert manifest[0]["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    assert layer_bytes == layer.read_bytes()
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    assert config["architecture"] == "amd64" and config["config"]["Cmd"] == ["/bin/sh"]


@posix
def test_put_file_leaves_the_same_bytes_untouched(tmp_path: Path) -> None:
    """systemd asks for a daemon-reload when a unit file's mtime moves, even to the same bytes."""
    unit = tmp_path / "etc/systemd/system/x.service.d/10.conf"
    assert _sh('printf "[Service]\\nA=1\\n" | put_file "$1"', str(unit)).returncode == 0
    assert unit.read_text() == "[Service]\nA=1\n"
    os.utime(unit, ns=(1_000_000_000, 1_000_000_000))
    assert _sh('printf "[Service]\\nA=1\\n" | put_file "$1"', str(unit)).returncode == 0
    assert unit.stat().st_mtime_ns == 1_000_000_000
    assert _sh('printf "[Service]\\nA=2\\n" | put_file "$1"', str(unit)).returncode == 0
    assert unit.read_text() == "[Service]\nA=2\n" and unit.stat().st_mtime_ns != 1_000_000_000
    assert sorted(p.name for p in unit.parent.iterdir()) == ["10.conf"]  # no .devenv-new left


def _early(
    tmp_path: Path, stale: set[str], configured_as: str | None = None, seed_changed: str | None = None
) -> list[list[str]]:
    """engine_main early against a systemctl that records its calls; `stale` units answer NeedDaemonReload=yes.

    configured_as: what the image's record of its configure holds ("same": what these scripts' sums are).
    seed_changed: DEVENV_CHANGED_UNITS as earlyboot.py passes it (None: unset, as any other caller).
    configure and the user's group are recorded, not done (they write /etc)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls"
    # like systemd: one block per unit, properties in its own order (not -p's), blank lines between
    fake = bin_dir / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        '[ "$1" = show ] || exit 0\n'
        "shift 4\n"
        'for u in "$@"; do\n'
        '    case " $STALE " in *" $u "*) n=yes ;; *) n=no ;; esac\n'
        '    printf "NeedDaemonReload=%s\\nId=%s\\n\\n" "$n" "$u"\n'
        "done\n"
    )
    fake.chmod(0o755)
    record = tmp_path / "engine-configured"
    if configured_as == "same":
        record.write_text(_sh("scripts_sum").stdout)
    elif configured_as is not None:
        record.write_text(configured_as)
    snippet = (
        f'ENGINE_CONFIGURED="{record}"; configure() {{ echo configure >> "{calls}"; }}; '
        f'add_user_to_group() {{ echo "group $1" >> "{calls}"; }}; apparmor_enabled() {{ return 1; }}; GROUP=docker; '
        'ENABLE="docker.socket docker.service devenv-docker-nat.service"; '
        'START="containerd.service docker.socket docker.service"; engine_main'
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STALE": " ".join(sorted(stale))}
    env.pop("DEVENV_CHANGED_UNITS", None)
    if seed_changed is not None:
        env["DEVENV_CHANGED_UNITS"] = seed_changed
    res = subprocess.run(
        ["sh", "-c", f'. "{COMMON}"; {snippet}', str(COMMON.parent / "docker.sh"), "early"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


@posix
def test_early_phase_only_starts_units_whose_files_did_not_change(tmp_path: Path) -> None:
    calls = _early(tmp_path, set())
    assert calls[:2] == [["group", "docker"], ["configure"]]
    assert ["enable", "--no-reload", "docker.socket", "docker.service", "devenv-docker-nat.service"] in calls
    assert ["daemon-reload"] not in calls
    assert not any(c[0] == "restart" for c in calls)
    assert calls[-1] == ["start", "--no-block", "containerd.service", "docker.socket", "docker.service"]


@posix
def test_early_phase_reloads_and_restarts_a_running_unit_given_a_new_file(tmp_path: Path) -> None:
    """The image boots with docker starting; the seed's proxy drop-in must reach the dockerd that runs."""
    calls = _early(tmp_path, {"docker.service"})
    reload_at = calls.index(["daemon-reload"])
    restart = calls.index(["restart", "--no-block", "docker.service"])
    start = calls.index(["start", "--no-block", "containerd.service", "docker.socket"])
    assert reload_at < restart and reload_at < start


@posix
@pytest.mark.parametrize("record", ["same", "older scripts\n"])
def test_early_phase_skips_configure_the_image_did_with_the_same_scripts(tmp_path: Path, record: str) -> None:
    calls = _early(tmp_path, set(), configured_as=record)
    assert calls[0] == ["group", "docker"]  # the user is the instance's own: always
    configured = ["configure"] in calls and any(c[0] == "enable" for c in calls)
    assert configured is (record != "same")
    if record == "same":  # enabled in the image: the boot's own transaction starts them
        assert not any(c[0] in ("start", "restart", "daemon-reload") for c in calls)
    else:
        assert calls[-1] == ["start", "--no-block", "containerd.service", "docker.socket", "docker.service"]


@posix
def test_early_phase_on_the_image_that_configured_it_asks_systemd_nothing(tmp_path: Path) -> None:
    """earlyboot.py says which units' files the seed changed; only those are restarted, without a `systemctl show`."""
    assert _early(tmp_path / "a", set(), configured_as="same", seed_changed="devenv-relay.service") == [
        ["group", "docker"]
    ]
    calls = _early(tmp_path / "b", set(), configured_as="same", seed_changed="devenv-ready.service docker.service")
    assert calls == [["group", "docker"], ["daemon-reload"], ["restart", "--no-block", "docker.service"]]


@posix
def test_early_phase_asks_systemd_when_configure_ran_whatever_the_seed_changed(tmp_path: Path) -> None:
    """configure rewrites unit files the seed knows nothing of: systemd says which changed."""
    calls = _early(tmp_path, {"docker.service"}, configured_as="older scripts\n", seed_changed="")
    assert any(c[0] == "show" for c in calls)
    assert ["restart", "--no-block", "docker.service"] in calls
    assert calls[-1] == ["start", "--no-block", "containerd.service", "docker.socket"]


@posix
def test_units_among(tmp_path: Path) -> None:
    res = _sh('units_among "$1" docker.socket docker.service containerd.service', "docker.service x.service.d docker")
    assert res.stdout == "docker.service "
    assert _sh('units_among "" docker.service').stdout == ""


@posix
@pytest.mark.parametrize(
    ("group_file", "phase", "expected"),
    [
        ("docker:x:999:alice,devenv\n", "early", []),
        ("docker:x:999:devenv\n", "early", []),
        ("docker:x:999:alice\nsudo:x:27:devenv\n", "early", ["usermod -aG docker devenv"]),
        ("docker:x:999:\n", "early", ["usermod -aG docker devenv"]),
        ("dockers:x:998:devenv\n", "early", ["groupadd --system docker", "usermod -aG docker devenv"]),
        ("other:x:1:\n", "image", ["groupadd --system docker"]),  # no user yet at build time
    ],
)
def test_add_user_to_group(tmp_path: Path, group_file: str, phase: str, expected: list[str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    for tool in ("groupadd", "usermod"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "group").write_text(group_file)
    script = f'. "{COMMON}"; ETC_GROUP="{tmp_path / "group"}"; add_user_to_group docker'
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    res = subprocess.run(["sh", "-c", script, str(COMMON.parent / "docker.sh"), phase], env=env, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert calls.read_text().splitlines() == expected


INSTALL_MISSING = assets.provisioning_dir() / "guest/install-missing.sh"


def _install_missing(tmp_path: Path, managers: tuple[str, ...], *args: str, fail: bool = False) -> tuple[int, str, str]:
    """install-missing.sh with stand-in package managers that record their calls; no host program is found.

    PATH holds only the stand-ins (the script itself adds the sbin folders, where this host's own
    programs may be: the tests ask after programs no host has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for name in ("present-program", *managers):
        stand_in = bin_dir / name
        stand_in.write_text(
            f'#!/bin/sh\necho "{name} $* [DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}}]" >> "{calls}"\n'
            + ("exit 100\n" if fail else "")
        )
        stand_in.chmod(0o755)
    res = subprocess.run(
        ["/bin/sh", str(INSTALL_MISSING), *args],
        env={"PATH": str(bin_dir), "DEVENV_ENV_SH": str(tmp_path / "env.sh")},
        capture_output=True,
        text=True,
    )
    return res.returncode, calls.read_text() if calls.exists() else "", res.stdout + res.stderr


@posix
def test_install_missing_leaves_an_image_that_has_everything_alone(tmp_path: Path) -> None:
    rc, calls, said = _install_missing(tmp_path, ("apt-get", "dnf"), "present-program", "pkg", "fedora-pkg")
    assert (rc, calls, said) == (0, "", "")  # no mirror touched


@posix
def test_install_missing_installs_only_what_is_missing_with_apt(tmp_path: Path) -> None:
    rc, calls, said = _install_missing(
        tmp_path,
        ("apt-get", "dnf"),
        *("devenv-absent-engine", "docker.io", "moby-engine"),
        *("present-program", "present", "present"),
        *("devenv-absent-sshfs", "sshfs", "fuse-sshfs"),
    )
    assert rc == 0, said
    assert calls.splitlines() == [
        "apt-get update -q [DEBIAN_FRONTEND=]",
        "apt-get install -y -q --no-install-recommends docker.io sshfs [DEBIAN_FRONTEND=noninteractive]",
    ]
    assert said == "devenv: installing docker.io sshfs (apt-get; the image lacks them)\n"


@posix
def test_install_missing_uses_dnf_and_fedoras_names_without_apt(tmp_path: Path) -> None:
    (tmp_path / "env.sh").write_text("export DEBIAN_FRONTEND='from env.sh'\n")  # the host's proxy, say
    rc, calls, _ = _install_missing(tmp_path, ("dnf",), "devenv-absent-engine", "docker.io", "moby-engine")
    assert (rc, calls) == (0, "dnf install -y -q moby-engine [DEBIAN_FRONTEND=from env.sh]\n")


@posix
def test_install_missing_fails_clearly_without_a_package_manager_or_when_it_fails(tmp_path: Path) -> None:
    rc, calls, said = _install_missing(tmp_path, (), "devenv-absent-engine", "docker.io", "moby-engine")
    assert rc == 3 and calls == ""
    assert "this image lacks docker.io and has neither apt-get nor dnf" in said
    assert "`devenv image build debian-12`" in said
    rc, calls, _ = _install_missing(tmp_path, ("apt-get",), "devenv-absent-engine", "docker.io", "x", fail=True)
    assert rc == 100 and calls == "apt-get update -q [DEBIAN_FRONTEND=]\n"  # stops at the first failure
    rc, _, said = _install_missing(tmp_path, ("apt-get",), "devenv-absent-engine", "docker.io")
    assert rc == 2 and "arguments come in threes" in said


@posix
@pytest.mark.parametrize(
    ("runtime", "virt", "initramfs_busybox", "apt_packages"),
    [
        ("docker", "kvm", False, "docker.io sshfs busybox"),
        ("podman", "kvm", True, "podman sshfs"),  # initramfs-tools' busybox serves the local image
        ("containerd", "microsoft", True, "containerd sshfs hyperv-daemons"),  # Hyper-V: the KVP daemon too
    ],
)
def test_install_missing_for_a_runtime_asks_for_what_that_guest_needs(
    tmp_path: Path, runtime: str, virt: str, initramfs_busybox: bool, apt_packages: str
) -> None:
    """`--for RUNTIME`, as firstboot.sh runs it on a pulled image, with only stand-ins on PATH (no sbin)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name, body in (("apt-get", f'echo "apt-get $*" >> "{calls}"'), ("systemd-detect-virt", f"echo {virt}")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    busybox = tmp_path / "initramfs-busybox"
    if initramfs_busybox:
        busybox.write_text("")
        busybox.chmod(0o755)
    env = {"PATH": str(bin_dir), "DEVENV_SBIN": str(tmp_path / "none"), "DEVENV_INITRAMFS_BUSYBOX": str(busybox)}
    res = subprocess.run(["/bin/sh", str(INSTALL_MISSING), "--for", runtime], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert calls.read_text().splitlines()[-1] == f"apt-get install -y -q --no-install-recommends {apt_packages}"


def test_firstboot_asks_for_the_runtimes_needs_before_the_engine_on_a_pulled_image() -> None:
    text = (assets.provisioning_dir() / "cloud-init/firstboot.sh").read_text()
    plain = text[text.index('if [ -e "$STATE/early" ]; then') :]
    packages = plain.index('step packages sh "$LIB/install-missing.sh" --for "$RUNTIME"')
    assert packages < plain.index('step "engine-$RUNTIME" sh "$ENGINE"\n')
