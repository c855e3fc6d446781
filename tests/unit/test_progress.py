"""Progress output: a log-friendly line without a terminal, nothing for small copies."""

from __future__ import annotations

import pytest

from devenv.progress import CopyProgress, DownloadProgress


def test_download_progress_prints_lines_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = DownloadProgress("pulling x")
    bar(0, 4 * 1024**2)
    bar(4 * 1024**2, 4 * 1024**2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "pulling x [                         ]   0% 0/4 MiB"
    assert lines[-1] == "pulling x [#########################] 100% 4/4 MiB"


def test_download_progress_without_a_size(capsys: pytest.CaptureFixture[str]) -> None:
    DownloadProgress("pulling y")(3 * 1024**2, None)
    assert capsys.readouterr().err == "pulling y 3 MiB\n"


def test_copy_progress_is_quiet_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    CopyProgress()("big.bin", 10, 100 * 1024**2)
    assert capsys.readouterr().err == ""
