"""What an instance costs its host (devenv/backends/vm/cost.py), measured on real files and processes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devenv import pidutil
from devenv.backends.vm import cost
from devenv.sizes import format_measured


def test_last_start_is_kept_and_read_back(tmp_path: Path) -> None:
    assert cost.last_start(tmp_path) is None
    cost.record_start(tmp_path, 3.456, "resume")
    got = cost.last_start(tmp_path)
    assert got is not None and got["seconds"] == 3.46 and got["kind"] == "resume"
    (tmp_path / cost.LAST_START).write_text('{"seconds": 1, "kind": "bogus"}')
    assert cost.last_start(tmp_path) is None  # a record it did not write is no figure
    (tmp_path / cost.LAST_START).write_text("{not json")
    assert cost.last_start(tmp_path) is None


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img to make a qcow2")
def test_disk_usage_is_what_the_overlay_holds_not_its_virtual_size(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "20G"], check=True)
    usage = cost.disk_usage(disk)
    assert usage is not None and usage["virtual"] == 20 * 1024**3
    assert 0 < usage["used"] < 1024**2, usage  # an empty qcow2: its header and tables only
    (tmp_path / "raw.img").write_bytes(b"x" * 4096)
    assert cost.disk_usage(tmp_path / "raw.img") is None  # not a qcow2: no figure
    assert cost.disk_usage(tmp_path / "missing.qcow2") is None


def test_guest_used_is_total_minus_available() -> None:
    assert cost.guest_used({"total": 2048, "available": 512}) == 1536
    assert cost.guest_used({"total": None, "available": 512}) is None
    assert cost.guest_used(None) is None


@pytest.mark.skipif(os.name == "nt", reason="no RSS reader on Windows")
def test_rss_of_a_live_process_and_of_none() -> None:
    mine = pidutil.rss_bytes(os.getpid())
    assert mine is not None and mine > 1024**2  # a Python process holds more than a MiB
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    assert pidutil.rss_bytes(proc.pid) is None  # gone (and reaped)


def test_measure_says_each_figure_in_words_and_as_a_number(tmp_path: Path) -> None:
    cost.record_start(tmp_path, 21.0, "boot")
    words, figures = cost.measure(
        tmp_path, os.getpid(), tmp_path / "none.qcow2", {"total": 4 * 1024**3, "available": 3 * 1024**3}
    )
    assert figures["last_start_kind"] == "boot" and figures["last_start_seconds"] == 21.0
    assert str(words["last_start"]).startswith("21.0 s (boot, ")
    assert figures["guest_used"] == 1024**3
    assert str(words["memory"]).endswith(", 1.0 GiB used in the guest")
    assert isinstance(figures["host_rss"], int) and figures["host_rss"] > 0
    assert "disk_used" not in figures and "disk_usage" not in words  # no disk, no figure
    assert set(words) == {"last_start", "memory"}  # the numbers are not repeated among the words


def test_the_memory_file_counts_as_disk_the_instance_takes(tmp_path: Path) -> None:
    from devenv import hostdisk

    ram = tmp_path / "memory.ram"
    hostdisk.reserve(ram, 4 * 1024**2, "the guest's memory")  # as the qemu driver's launch makes it
    words, figures = cost.measure(tmp_path, None, tmp_path / "disk.qcow2", None, ram)
    assert figures["memory_file_used"] == ram.stat().st_blocks * 512 >= 4 * 1024**2
    assert words["memory_file"] == f"{format_measured(ram.stat().st_blocks * 512)} on the host's disk ({ram})"
    words, figures = cost.measure(tmp_path, None, tmp_path / "disk.qcow2", None, tmp_path / "gone.ram")
    assert "memory_file" not in words and "memory_file_used" not in figures


def test_human_sizes() -> None:
    assert format_measured(512) == "512 B"
    assert format_measured(1536) == "1.5 KiB"
    assert format_measured(612 * 1024**2 + 300 * 1024) == "612.3 MiB"
    assert format_measured(3 * 1024**4) == "3072.0 GiB"
