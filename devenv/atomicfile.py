"""Write a file so readers see the old one or the new one, never a part, with its mode set from the start.

One helper for every file devenv must not leave half-written or briefly too
open: SSH keys and known_hosts, the first-boot seed, image records, the host
agent's control token.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """A temp file in the same folder (made 0600 by mkstemp, then `mode`), fsynced, renamed over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
