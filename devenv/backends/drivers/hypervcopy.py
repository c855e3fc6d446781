"""Files to a remote Hyper-V host over the WinRM session itself: the base VHDX once, the seed at every start.

Over WS-Man, one Send per base64 line into a PowerShell that writes the
file aside, checks its sha256 and renames it into place (hypervps.receive_file).
No second channel is needed (SMB would want the admin share open and
smbprotocol installed); the price is base64 twice (ours, then WS-Man's) and
a round trip per line. It has not been measured against a real host.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

from devenv.backends.drivers import hypervps
from devenv.backends.drivers.powershell import PowerShell, PowerShellFailed

CHUNK = 48 * 1024  # raw bytes per line: 64 KiB of base64, ~86 KiB once WS-Man wraps it (WinRM takes 500 KiB)
MIN_RATE = 512 * 1024  # bytes/s below which a copy is taken for stuck


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield base64.b64encode(block).decode("ascii") + "\n"


def present(ps: PowerShell, remote: str) -> bool:
    return ps.json(hypervps.exists(remote), "Test-Path") is True


def copy(ps: PowerShell, local: Path, remote: str, hint: str) -> None:
    """`local` to `remote` on the Hyper-V host, whole and checked, or an error and no file there."""
    size = local.stat().st_size
    timeout = 120.0 + size / MIN_RATE
    result = ps.run(hypervps.receive_file(remote, sha256_of(local)), f"copy {local.name}", timeout, lines(local))
    if not result.ok:
        raise PowerShellFailed(result, hint)
