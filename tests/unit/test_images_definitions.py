"""Image definitions: the shipped files parse, and bad files name every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv import paths
from devenv.errors import ImageError, UsageError
from devenv.images import definitions
from devenv.images.checksums import Digest

REPO_VMIMAGES = Path(__file__).resolve().parents[2] / "vmimages"


def test_definitions_dir_is_the_checkout_folder() -> None:
    assert definitions.definitions_dir() == REPO_VMIMAGES


def test_shipped_images_are_named_as_users_type_them() -> None:
    assert definitions.available_names() == ["debian-12", "fedora-45", "ubuntu-24.04"]


@pytest.mark.parametrize("name", ["debian-12", "ubuntu-24.04", "fedora-45"])
def test_every_shipped_image_has_both_arches_with_a_checksum_source(name: str) -> None:
    image = definitions.load(name)
    assert set(image.arches) == {"x86_64", "aarch64"}
    for source in image.arches.values():
        assert source.disk.url.startswith("https://")
        assert source.disk.checksum_url.startswith("https://") or source.disk.digest is not None


def test_debian_has_the_offline_builder_and_its_inputs() -> None:
    image = definitions.load("debian-12")
    assert image.builder == "debian"
    assert image.build is not None
    assert image.build.suite == "bookworm"
    assert "linux-image-{deb_arch}" in image.build.packages
    assert {"openssh-server", "python3", "busybox"} <= set(image.build.packages)
    assert "cloud-init" not in image.build.packages  # the seed's earlyboot.py does its job
    assert image.build.engine_packages == ("docker.io", "podman", "containerd")
    assert definitions.load("ubuntu-24.04").builder == ""


def test_debian_checksum_file_and_filename() -> None:
    source = definitions.load("debian-12").source("x86_64")
    assert source.disk.checksum_url.endswith("/SHA512SUMS")
    assert source.disk.filename == "debian-12-genericcloud-amd64.qcow2"


def test_ubuntu_carries_kernel_and_initrd_for_direct_boot() -> None:
    source = definitions.load("ubuntu-24.04").source("aarch64")
    assert source.kernel is not None and source.initrd is not None
    assert source.kernel.filename == "ubuntu-24.04-server-cloudimg-arm64-vmlinuz-generic"
    assert "console=ttyAMA0" in source.cmdline


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_pinned_digest_is_parsed(tmp_path: Path) -> None:
    hexdigest = "ab" * 32
    _write(tmp_path, "mine", f'[arch.x86_64]\nurl = "https://example.org/mine.qcow2"\ndigest = "sha256:{hexdigest}"\n')
    image = definitions.load("mine", tmp_path)
    assert image.name == "mine"
    assert image.source("x86_64").disk.digest == Digest("sha256", hexdigest)
    with pytest.raises(ImageError, match=r"image `mine` has no aarch64 variant \(has: x86_64\)"):
        image.source("aarch64")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "bad",
        'name = "other"\ncolour = "red"\nbuilder = "debian"\n'
        '[arch.x86_64]\nurl = "ftp://x/y"\n'
        '[arch.riscv64]\nurl = "https://x/y"\n'
        '[arch.aarch64]\nurl = "https://x/y.qcow2"\nchecksum_url = "https://x/SUMS"\ndigest = "sha256:00"\n',
    )
    with pytest.raises(ImageError) as info:
        definitions.load("bad", tmp_path)
    message = info.value.message
    assert "`name` is 'other' but the file is named 'bad.toml'" in message
    assert "unknown key `colour`" in message
    assert "`arch.x86_64.url` must be an http(s):// or file:// URL" in message
    assert "`arch.riscv64`: architecture must be one of x86_64, aarch64" in message
    assert "`arch.aarch64`: set exactly one of `checksum_url`" in message
    assert "`builder = 'debian'` needs a [build] table" in message


def test_bad_pinned_digest(tmp_path: Path) -> None:
    _write(tmp_path, "short", '[arch.x86_64]\nurl = "https://x/y"\ndigest = "sha256:abc"\n')
    with pytest.raises(ImageError, match="sha256 digest must be 64 lowercase hex characters"):
        definitions.load("short", tmp_path)


def test_unknown_image_lists_known_ones(tmp_path: Path) -> None:
    _write(tmp_path, "one", '[arch.x86_64]\nurl = "https://x/y"\ndigest = "sha256:' + "0" * 64 + '"\n')
    with pytest.raises(ImageError) as info:
        definitions.load("two", tmp_path)
    assert info.value.message == "no image named `two`"
    assert info.value.hint.startswith("known images: one;")
    assert info.value.exit_code == 66


@pytest.mark.parametrize(("raw", "norm"), [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("arm64", "aarch64")])
def test_normalize_arch(raw: str, norm: str) -> None:
    assert definitions.normalize_arch(raw) == norm


def test_normalize_arch_rejects_unknown() -> None:
    with pytest.raises(UsageError, match="unsupported architecture `mips`"):
        definitions.normalize_arch("mips")


def test_wheel_layout_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed from a wheel, vmimages/ lives in devenv/_data/vmimages (pyproject force-include)."""
    pkg = tmp_path / "site" / "devenv" / "images"
    pkg.mkdir(parents=True)
    (tmp_path / "site" / "devenv" / "_data" / "vmimages").mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "site" / "devenv" / "paths.py"))
    assert definitions.definitions_dir() == tmp_path / "site" / "devenv" / "_data" / "vmimages"
