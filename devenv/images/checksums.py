"""Digests and the checksum files distributions publish next to their images.

Three formats exist in the wild and all are read here:
  GNU coreutils   `<hex>  <file>` or `<hex> *<file>`      (Debian SHA512SUMS, Ubuntu SHA256SUMS)
  BSD tagged      `SHA256 (<file>) = <hex>`                 (Fedora CHECKSUM, inside a PGP clear-signed block)
Everything else (comments, PGP armour) is skipped. The algorithm follows from the
digest's length, so one parser serves SHA256SUMS, SHA512SUMS and CHECKSUM alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import ImageError

ALGORITHMS = {"sha256": 64, "sha512": 128}
_BY_LENGTH = {length: algo for algo, length in ALGORITHMS.items()}
_GNU_RE = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(?P<file>\S.*?)\s*$")
_BSD_RE = re.compile(r"^(?P<algo>SHA256|SHA512)\s*\((?P<file>.+)\)\s*=\s*(?P<hex>[0-9a-fA-F]+)\s*$")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Digest:
    """An algorithm and a lowercase hex digest, written `sha256:<hex>`."""

    algo: str
    hex: str

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unsupported digest algorithm {self.algo!r} (use sha256 or sha512)")
        if len(self.hex) != ALGORITHMS[self.algo] or not re.fullmatch(r"[0-9a-f]+", self.hex):
            raise ValueError(f"{self.algo} digest must be {ALGORITHMS[self.algo]} lowercase hex characters")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """`sha256:<hex>` or `sha512:<hex>`."""
        algo, sep, hexdigest = text.strip().partition(":")
        if not sep:
            raise ValueError(f"digest {text!r} must look like sha256:<hex> or sha512:<hex>")
        return cls(algo.lower(), hexdigest.lower())

    def __str__(self) -> str:
        return f"{self.algo}:{self.hex}"


def parse_checksum_file(text: str) -> dict[str, Digest]:
    """File name -> digest for every entry in a GNU or BSD style checksum file.

    Names are reduced to their last path segment (`./x.qcow2` -> `x.qcow2`).
    """
    entries: dict[str, Digest] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        bsd = _BSD_RE.match(line)
        if bsd:
            algo, name, hexdigest = bsd["algo"].lower(), bsd["file"], bsd["hex"].lower()
            if len(hexdigest) != ALGORITHMS[algo]:
                continue
        else:
            gnu = _GNU_RE.match(line)
            if not gnu:
                continue
            name, hexdigest = gnu["file"], gnu["hex"].lower()
            algo = _BY_LENGTH[len(hexdigest)]
        entries[name.rsplit("/", 1)[-1]] = Digest(algo, hexdigest)
    return entries


def lookup(text: str, filename: str, source: str) -> Digest:
    """The digest listed for `filename` in the checksum file fetched from `source`."""
    entries = parse_checksum_file(text)
    try:
        return entries[filename]
    except KeyError:
        raise ImageError(
            f"{source} lists no checksum for {filename} ({len(entries)} entries)",
            "the image definition in vmimages/ is probably out of date with the distribution's mirror",
        ) from None


def hash_file(path: Path, algos: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file for each algorithm, reading it once."""
    hashers = {a: hashlib.new(a) for a in algos}
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}
