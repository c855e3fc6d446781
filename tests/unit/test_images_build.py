"""Build orchestration without debootstrap: cache key, cache hits, root check, atomicity."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devenv.errors import ImageError, PermissionProblem
from devenv.images import bake, build, cache, debian, definitions
from devenv.images.definitions import BuildSpec

MIRROR = "http://mirror.example/debian"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))


def test_inputs_name_everything_that_shapes_the_image() -> None:
    data = build.inputs("debian-12", "x86_64", MIRROR + "/")
    assert data["mirror"] == MIRROR
    assert data["builder"] == "debian"
    assert data["suite"] == "bookworm"
    assert "linux-image-amd64" in data["packages"]  # type: ignore[operator]
    assert data["engine_packages"] == ["docker.io", "podman", "containerd"]
    assert data["cmdline"] == "root=LABEL=devenv-root rw console=ttyS0 apparmor=0 fsck.mode=skip quiet"
    assert len(str(data["configure_sha256"])) == 64


def test_key_changes_with_each_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = build.inputs_hash(build.inputs("debian-12", "x86_64", MIRROR))
    assert base == build.inputs_hash(build.inputs("debian-12", "x86_64", MIRROR))
    assert base != build.inputs_hash(build.inputs("debian-12", "aarch64", MIRROR))
    assert base != build.inputs_hash(build.inputs("debian-12", "x86_64", "http://other.example/debian"))
    assert base != build.inputs_hash(build.inputs("debian-12", "x86_64", MIRROR, compress=False))
    script = tmp_path / "configure.sh"
    script.write_text("#!/bin/sh\necho changed\n")
    monkeypatch.setattr(debian, "configure_script", lambda: script)
    assert base != build.inputs_hash(build.inputs("debian-12", "x86_64", MIRROR))


def test_images_without_builder_are_refused() -> None:
    with pytest.raises(ImageError) as info:
        build.build("ubuntu-24.04", "x86_64", mirror=MIRROR)
    assert info.value.message == "image `ubuntu-24.04` has no offline builder"
    assert "devenv image pull ubuntu-24.04" in info.value.hint


def test_not_root_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(build.sys, "platform", "linux")
    with pytest.raises(PermissionProblem) as info:
        build.build("debian-12", definitions.normalize_arch(None), mirror=MIRROR)
    assert info.value.message == "building an image needs root: debootstrap and chroot do"
    assert "sudo devenv image build debian-12" in info.value.hint
    assert "devenv image pull debian-12" in info.value.hint


def test_other_arch_without_qemu_user_is_refused_with_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(build.sys, "platform", "linux")
    monkeypatch.setattr(build.definitions, "normalize_arch", lambda a=None: a or "x86_64")
    monkeypatch.setattr(build, "foreign_arch_runs", lambda arch: False)
    with pytest.raises(ImageError, match="building a aarch64 image on a x86_64 host needs aarch64 programs") as info:
        build.build("debian-12", "aarch64", mirror=MIRROR)
    assert "apt-get install qemu-user-static binfmt-support" in info.value.hint


@pytest.mark.parametrize(
    ("content", "runs"),
    [
        ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n", True),
        ("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: F\n", True),
        ("disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n", False),
        ("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\n", False),  # not in the chroot: F missing
        (None, False),
    ],
    ids=["debian-qemu-user-static", "F-only", "disabled", "no-F", "no-handler"],
)
def test_foreign_arch_runs_reads_the_binfmt_handler(tmp_path: Path, content: str | None, runs: bool) -> None:
    if content is not None:
        (tmp_path / "qemu-aarch64").write_text(content)
    assert build.foreign_arch_runs("aarch64", str(tmp_path)) is runs


def _fake_rootfs(
    root: Path, out: Path, spec: BuildSpec, arch: str, mirror: str, env: dict[str, str], step: debian.StepFn
) -> tuple[Path, Path]:
    step("fake rootfs")
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("devenv\n")
    kernel, initrd = out / "vmlinuz", out / "initrd.img"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    return kernel, initrd


def _fake_disk(
    root: Path, work: Path, dest: Path, *, compress: bool = True, before_convert: Callable[[Path], None] | None = None
) -> int:
    raw = work / "disk.raw"
    raw.write_bytes(b"ext4")
    if before_convert is not None:
        before_convert(raw)
    dest.write_bytes(b"QFI\xfb" + raw.read_bytes()[:4] + b"\0" * 56)
    return 2 * 1024**3


def test_build_then_cached_hit_needs_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "_check_host", lambda arch: None)
    monkeypatch.setattr(debian, "build_rootfs", _fake_rootfs)
    monkeypatch.setattr(debian, "make_disk", _fake_disk)
    steps: list[str] = []
    record = build.build("debian-12", "x86_64", mirror=MIRROR, progress=steps.append)
    key = build.inputs_hash(build.inputs("debian-12", "x86_64", MIRROR))
    assert record.disk == cache.builds_dir() / key / "disk.qcow2"
    assert record.source == "built" and record.origin == f"build:{key}"
    manifest = (cache.builds_dir() / key / "manifest.txt").read_text().splitlines()
    assert [line.split()[0][0] + " " + line.split()[-1] for line in manifest] == ["d /etc", "- /etc/hostname"]
    assert manifest[1].endswith(" 7 /etc/hostname")
    assert steps[0] == "fake rootfs"
    assert "import the local devenv/busybox image: skipped (the image has no docker)" in steps
    assert cache.read_record("debian-12", "x86_64") == record
    assert list(cache.tmp_dir().glob("build-*-*")) == []

    monkeypatch.setattr(build, "_check_host", lambda arch: pytest.fail("a cache hit must not need root"))
    monkeypatch.setattr(debian, "build_rootfs", lambda *a: pytest.fail("a cache hit must not rebuild"))
    cache.remove_record("debian-12", "x86_64")
    steps.clear()
    started = time.monotonic()
    assert build.build("debian-12", "x86_64", mirror=MIRROR, progress=steps.append) == record
    assert time.monotonic() - started < 0.5
    assert steps == [f"cached build {key}"]
    assert cache.read_record("debian-12", "x86_64") == record, "a cache hit restores the index entry"
    assert build.cached("debian-12", "x86_64", MIRROR) == record

    # A cache shared read-only (built by root, used by an ordinary user): a hit writes nothing.
    monkeypatch.setattr(cache, "write_record", lambda r: pytest.fail("a cache hit must not write the index"))
    assert build.build("debian-12", "x86_64", mirror=MIRROR) == record


def test_interrupted_build_leaves_nothing_that_looks_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(root: Path, out: Path, *args: object) -> tuple[Path, Path]:
        (root / "half-made").write_text("x")
        (out / "disk.qcow2").write_bytes(b"QFI\xfb partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_check_host", lambda arch: None)
    monkeypatch.setattr(debian, "build_rootfs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build("debian-12", "x86_64", mirror=MIRROR)
    assert not cache.builds_dir().exists() or list(cache.builds_dir().iterdir()) == []
    assert list(cache.tmp_dir().glob("build-*-*")) == []
    assert cache.read_record("debian-12", "x86_64") is None
    assert build.cached("debian-12", "x86_64", MIRROR) is None


def test_stale_work_of_a_killed_build_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = cache.tmp_dir() / "build-abc-999999999"
    (stale / "root" / "etc").mkdir(parents=True)
    alive = cache.tmp_dir() / f"build-abc-{build.os.getpid()}"
    alive.mkdir()
    build._remove_stale_work()
    assert not stale.exists()
    assert alive.exists()


def test_disk_size_has_headroom_and_a_floor() -> None:
    mib = 1024**2
    assert debian.disk_size_for(100 * mib) == 2048 * mib
    size = debian.disk_size_for(1500 * mib)
    assert size % (256 * mib) == 0
    assert size >= 1500 * mib * 1.25 + 512 * mib


def test_mounts_under_reads_mountinfo(tmp_path: Path) -> None:
    assert build.mounts_under(tmp_path) == []
    assert "/" not in build.mounts_under(tmp_path)
    if Path("/proc/self/mountinfo").exists():  # the real table: /proc is a mount point, and deepest comes first
        under_proc = build.mounts_under(Path("/proc"))
        assert under_proc[-1] == "/proc"
        assert all(p.startswith("/proc") for p in under_proc)
        assert [len(p) for p in under_proc] == sorted((len(p) for p in under_proc), reverse=True)


def test_the_kernel_is_installed_after_the_initramfs_rules() -> None:
    spec = build._spec(definitions.load("debian-12"))
    rest, kernel = debian.split_kernel(debian.packages(spec, "aarch64"))
    assert kernel == ["linux-image-arm64"]
    assert "initramfs-tools" in rest and "systemd-sysv" in rest
    assert not any(name.startswith("linux-image-") for name in rest)
    assert debian.split_kernel(["busybox"]) == (["busybox"], [])


def test_the_bake_runs_on_the_raw_disk_before_it_becomes_the_qcow2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build boots its own disk once (devenv/images/bake.py); here that boot is recorded, not run."""

    def rootfs_with_docker(root: Path, out: Path, *args: object) -> tuple[Path, Path]:
        kernel, initrd = _fake_rootfs(root, out, *args)  # type: ignore[arg-type]
        script = root / bake.BAKE_INIT.lstrip("/")
        script.parent.mkdir(parents=True)
        script.write_text("#!/bin/sh\n")
        return kernel, initrd

    baked: list[tuple[str, bytes, str, str]] = []

    def fake_bake(arch: str, raw: Path, kernel: Path, initrd: Path, cmdline: str, work: Path) -> str:
        baked.append((arch, raw.read_bytes(), kernel.name, cmdline))
        raw.write_bytes(b"bake")  # what the qcow2 is made of must be the baked disk
        return "tcg"

    monkeypatch.setattr(build, "_check_host", lambda arch: None)
    monkeypatch.setattr(debian, "build_rootfs", rootfs_with_docker)
    monkeypatch.setattr(debian, "make_disk", _fake_disk)
    monkeypatch.setattr(bake, "skip_reason", lambda arch, has_script: None if has_script else "no docker")
    monkeypatch.setattr(bake, "bake", fake_bake)
    monkeypatch.setattr(bake, "run_check", lambda raw: None)
    steps: list[str] = []
    record = build.build("debian-12", "x86_64", mirror=MIRROR, progress=steps.append)
    assert baked == [("x86_64", b"ext4", "vmlinuz", record.cmdline)]
    assert record.disk.read_bytes()[4:8] == b"bake"
    meta = json.loads((record.disk.parent / "build.json").read_text())
    assert meta["bake"] == {"accelerator": "tcg"} and "bake" in meta["seconds"]
    assert any(s.startswith("import the local devenv/busybox image into") for s in steps)


@pytest.mark.parametrize("packed", [True, False], ids=["gzip", "plain"])
def test_the_initrd_is_stored_as_a_plain_cpio(tmp_path: Path, packed: bool) -> None:
    """The kernel reads either; under TCG it spent 1.5 s of every boot gunzipping (debian.unpack_initrd)."""
    import gzip

    cpio = b"070701" + b"0" * 104 + b"TRAILER!!!\0" * 40
    initrd = tmp_path / "initrd.img-6.1.0"
    initrd.write_bytes(gzip.compress(cpio) if packed else cpio)
    debian.unpack_initrd(initrd, tmp_path / "initrd.img")
    assert (tmp_path / "initrd.img").read_bytes() == cpio
