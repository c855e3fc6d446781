"""A full host disk: one DiskFull naming the path and the room needed, and nothing half-made left behind.

The filesystem is faked here (free space, an ENOSPC from the backend);
tests/integration/test_host_disk_full.py fills a real one.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from devenv import hostdisk
from devenv.errors import DiskFull, ExitCode
from devenv.instance import CREATE_ROOM


def test_ensure_free_names_the_path_the_need_and_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostdisk, "free_bytes", lambda p: 300 * 1024)
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DiskFull) as info:
        hostdisk.ensure_free(tmp_path / "x" / "disk.qcow2", 2 * 1024**2, "a new overlay disk")
    assert info.value.message == (
        f"no space left on the host for a new overlay disk: {tmp_path}/x/disk.qcow2 needs 2.0 MiB;"
        " its filesystem has 300.0 KiB free"
    )
    assert info.value.hint.startswith(
        f"free space on the filesystem holding {tmp_path}/x/disk.qcow2 (or point DEVENV_HOME"
    )
    assert info.value.exit_code == ExitCode.DISK_FULL == 74
    hostdisk.ensure_free(tmp_path, 300 * 1024, "just enough")  # no error


def test_a_path_in_the_image_cache_points_at_devenv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    err = hostdisk.full(tmp_path / "cache" / "images" / "tmp" / "dl.part", None, "downloading x")
    assert "needs more room; its filesystem has" in err.message
    assert "(or point DEVENV_CACHE at a bigger one)" in err.hint


def test_free_bytes_asks_the_nearest_folder_that_exists(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert abs(hostdisk.free_bytes(tmp_path / "not" / "yet") - st.f_bavail * st.f_frsize) < 64 * 1024**2


def test_only_enospc_and_edquot_become_disk_full(tmp_path: Path) -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        with (
            pytest.raises(DiskFull, match=r"for writing it: .*/f needs 1.0 KiB"),
            hostdisk.translated(tmp_path / "f", 1024, "writing it"),
        ):
            raise OSError(code, os.strerror(code))
    with pytest.raises(PermissionError), hostdisk.translated(tmp_path / "f", 1024, "writing it"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_qemu_imgs_words_for_a_full_disk_are_recognised() -> None:
    said = "qemu-img: /h/disk.qcow2: Could not write qcow2 header: No space left on device"
    assert hostdisk.said_full(said)
    assert not hostdisk.said_full("qemu-img: Could not open 'x': Permission denied")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate(2) is Linux's")
def test_reserve_allocates_blocks_without_writing_and_makes_the_file_private(tmp_path: Path) -> None:
    ram = tmp_path / "memory.ram"
    hostdisk.reserve(ram, 8 * 1024**2, "the guest's memory")
    st = ram.stat()
    assert st.st_size == 8 * 1024**2
    assert stat.S_IMODE(st.st_mode) == 0o600
    # tmpfs and ext4 both allocate; a filesystem that cannot leaves it sparse, which this test would show
    assert st.st_blocks * 512 >= 8 * 1024**2
    with pytest.raises(FileExistsError):
        hostdisk.reserve(ram, 1024, "twice")  # never over a file that may hold a saved guest


def _punch(path: Path, offset: int, length: int) -> None:
    """What QEMU does with a page the balloon reports free: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    fd = os.open(path, os.O_RDWR)
    try:
        assert libc.fallocate(fd, 0x02 | 0x01, offset, length) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate(2) is Linux's")
def test_keep_allocated_refills_the_holes_the_balloon_punched(tmp_path: Path) -> None:
    ram = tmp_path / "memory.ram"
    hostdisk.reserve(ram, 8 * 1024**2, "the guest's memory")
    with open(ram, "r+b") as f:
        f.seek(5 * 1024**2)
        f.write(b"guest page")
    _punch(ram, 0, 4 * 1024**2)
    assert ram.stat().st_blocks * 512 <= 4 * 1024**2 + 64 * 1024  # the hole is there
    assert hostdisk.keep_allocated(ram) is True
    st = ram.stat()
    assert st.st_blocks * 512 >= 8 * 1024**2 and st.st_size == 8 * 1024**2
    with open(ram, "rb") as f:
        assert f.read(4096) == b"\0" * 4096  # allocated, not written: the page still reads as zeroes
        f.seek(5 * 1024**2)
        assert f.read(10) == b"guest page"  # and nothing else changed
    assert hostdisk.keep_allocated(tmp_path / "gone") is True  # the VM stopped and its file went


def test_the_qemu_driver_has_the_host_agent_keep_its_memory_file_allocated(tmp_path: Path) -> None:
    from devenv.backends.base import InstanceRef
    from devenv.backends.drivers.qemu import QemuDriver
    from devenv.backends.vm.agent import agent_args
    from devenv.config import Config
    from devenv.hostagent.__main__ import parse

    inst = InstanceRef("t", tmp_path, Config())
    (tmp_path / "ssh.port").write_text("2222")
    _, args = agent_args(QemuDriver(), inst)
    assert args[args.index("--keep-allocated") + 1] == str(tmp_path / "memory.ram")
    assert parse([str(tmp_path), *args, "--no-engine"]).memory_file == tmp_path / "memory.ram"


# -- an instance whose creation meets a full disk ----------------------------------------------------


@pytest.mark.usefixtures("fake")
def test_a_full_disk_before_create_leaves_no_instance(home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostdisk, "free_bytes", lambda p: 4096)
    ran = cli("start", "-n", "web", "--backend", "fake")
    assert ran.code == ExitCode.DISK_FULL, ran.err
    assert (
        f"devenv: error: no space left on the host for creating instance `web`: {home}/instances/web needs"
        f" {CREATE_ROOM // 1024**2}.0 MiB; its filesystem has 4.0 KiB free"
    ) in ran.err
    assert "Traceback" not in ran.err
    assert json.loads(cli("list", "--json").out) == []


@pytest.mark.usefixtures("fake")
def test_a_disk_that_fills_during_create_leaves_no_instance(
    home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devenv.testing.fake import FakeBackend

    def create(self: FakeBackend, inst: Any, step: Any) -> None:
        (inst.dir / "disk.img").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(inst.dir / "disk.img"))

    monkeypatch.setattr(FakeBackend, "create", create)
    ran = cli("start", "-n", "web", "--backend", "fake")
    assert ran.code == ExitCode.DISK_FULL, ran.err
    assert f"no space left on the host for creating instance `web`: {home}/instances/web needs 1.0 MiB" in ran.err
    assert os.listdir(home / "instances") == [], "the half-made folder is gone"
    assert json.loads(cli("list", "--json").out) == []
    assert cli("status", "-n", "web").code == ExitCode.NOT_FOUND


def test_the_cli_boundary_says_a_full_disk_wherever_devenv_meets_one(capsys: pytest.CaptureFixture[str]) -> None:
    from devenv.cli.boundary import guarded

    def full() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/nonexistent/ssh.config")

    assert guarded(full) == ExitCode.DISK_FULL
    err = capsys.readouterr().err
    assert err.startswith(
        "devenv: error: no space left on the host for the files devenv keeps: /nonexistent/ssh.config"
        " needs more room; its filesystem has "
    )
    assert "Traceback" not in err

    def broken() -> int:
        raise OSError(errno.EIO, "Input/output error")

    assert guarded(broken) == ExitCode.INTERNAL  # any other OSError stays a bug, said as one
    assert "internal error: OSError: [Errno 5] Input/output error" in capsys.readouterr().err
