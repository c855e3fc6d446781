"""Checksum files in the three formats distributions publish."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from devenv.errors import ImageError
from devenv.images import checksums
from devenv.images.checksums import Digest

SHA256_A = "a" * 64
SHA512_B = "b" * 128

DEBIAN_SHA512SUMS = f"""{SHA512_B}  debian-12-genericcloud-amd64.qcow2
{"c" * 128}  debian-12-genericcloud-amd64.raw
"""

UBUNTU_SHA256SUMS = f"""{SHA256_A} *ubuntu-24.04-server-cloudimg-amd64.img
{"d" * 64} *ubuntu-24.04-server-cloudimg-arm64.img
"""

FEDORA_CHECKSUM = f"""-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA256

# Fedora-Cloud-Base-Generic-45-1.6.x86_64.qcow2: 583794688 bytes
SHA256 (Fedora-Cloud-Base-Generic-45-1.6.x86_64.qcow2) = {SHA256_A.upper()}
SHA256 (Fedora-Cloud-Base-UKI-45-1.6.x86_64.qcow2) = {"e" * 64}
-----BEGIN PGP SIGNATURE-----

iQIzBAEBCAAdFiEE{"x" * 40}
-----END PGP SIGNATURE-----
"""


def test_gnu_format_sha512() -> None:
    entries = checksums.parse_checksum_file(DEBIAN_SHA512SUMS)
    assert entries["debian-12-genericcloud-amd64.qcow2"] == Digest("sha512", SHA512_B)
    assert len(entries) == 2


def test_gnu_binary_marker() -> None:
    entries = checksums.parse_checksum_file(UBUNTU_SHA256SUMS)
    assert entries["ubuntu-24.04-server-cloudimg-amd64.img"] == Digest("sha256", SHA256_A)


def test_bsd_format_inside_pgp_armour() -> None:
    entries = checksums.parse_checksum_file(FEDORA_CHECKSUM)
    assert entries == {
        "Fedora-Cloud-Base-Generic-45-1.6.x86_64.qcow2": Digest("sha256", SHA256_A),
        "Fedora-Cloud-Base-UKI-45-1.6.x86_64.qcow2": Digest("sha256", "e" * 64),
    }


def test_paths_reduce_to_file_names() -> None:
    entries = checksums.parse_checksum_file(f"{SHA256_A}  ./images/x.qcow2\n")
    assert list(entries) == ["x.qcow2"]


def test_lookup_missing_names_the_source() -> None:
    with pytest.raises(ImageError) as info:
        checksums.lookup(UBUNTU_SHA256SUMS, "nope.img", "https://host/SHA256SUMS")
    assert info.value.message == "https://host/SHA256SUMS lists no checksum for nope.img (2 entries)"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("md5:" + "0" * 32, "unsupported digest algorithm 'md5'"),
        ("sha256" + "0" * 64, "must look like sha256:<hex>"),
        ("sha512:" + "0" * 64, "sha512 digest must be 128"),
    ],
)
def test_digest_parse_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Digest.parse(text)


def test_digest_round_trip() -> None:
    text = "sha256:" + "0f" * 32
    assert str(Digest.parse(text.upper().replace("SHA256", "sha256"))) == text


def test_hash_file_reads_once_for_several_algorithms(tmp_path: Path) -> None:
    data = b"devenv" * 500_000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert checksums.hash_file(path, ["sha256", "sha512"]) == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
    }
