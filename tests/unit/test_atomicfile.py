from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from devenv.atomicfile import write_atomic


def test_mode_content_and_no_temp_left(tmp_path: Path) -> None:
    target = tmp_path / "token"
    write_atomic(target, b"one", 0o600)
    write_atomic(target, b"two", 0o644)
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["token"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "record.json"
    write_atomic(target, b"old")

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["record.json"]
