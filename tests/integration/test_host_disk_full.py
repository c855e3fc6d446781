"""A full host disk on a real filesystem (DEVENV_TEST_SMALL_FS): creating an instance and pulling an image.

Each gets DiskFull (exit 74) naming the path and the room it needs, and
leaves nothing a later command could take for whole: no instance `list`
shows, no cached image, no partial download holding the space. A running
guest filling the disk is tests/e2e/test_host_disk_full.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devenv.errors import DiskFull, ExitCode
from devenv.images import cache, definitions, download, overlay
from tests.smallfs import fill, free_bytes, small_fs_fixture

MiB = 1024**2


@pytest.fixture
def small_fs() -> Iterator[Path]:
    yield from small_fs_fixture()


def _devenv(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEVENV_HOME": str(home), "DEVENV_QEMU_ACCEL": os.environ.get("DEVENV_QEMU_ACCEL", "tcg")}
    env.pop("DEVENV_INSTANCE", None)
    return subprocess.run(
        [sys.executable, "-m", "devenv", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing; ci/setup-linux.sh installs it")
            pytest.skip(f"{tool} is not installed")


def test_start_on_a_full_home_makes_no_instance(small_fs: Path, tmp_path: Path) -> None:
    home = small_fs / "home"
    home.mkdir()
    filler = fill(small_fs, 0)
    ran = _devenv(home, "start", "-n", "full", "--backend", "qemu", cwd=tmp_path)
    assert ran.returncode == ExitCode.DISK_FULL == 74, ran.stderr
    assert (
        f"devenv: error: no space left on the host for creating instance `full`: {home}/instances/full"
        " needs 1.0 MiB; its filesystem has "
    ) in ran.stderr
    assert f"hint: free space on the filesystem holding {home}/instances/full (or point DEVENV_HOME" in ran.stderr
    assert "Traceback" not in ran.stderr
    listing = _devenv(home, "list", "--json", cwd=tmp_path)
    assert listing.returncode == 0 and json.loads(listing.stdout) == []
    assert not (home / "instances").exists() or os.listdir(home / "instances") == []
    filler.unlink()


def test_no_room_for_the_guests_memory_is_said_before_qemu_runs(small_fs: Path, tmp_path: Path) -> None:
    """The instance is whole (its files fit); its guest's memory file does not, so QEMU never starts.

    QEMU maps that file and the guest writes it by page faults: on a full disk
    that is a SIGBUS killing QEMU with nothing in its log (seen before the
    memory file was reserved at launch).
    """
    _need("qemu-system-x86_64", "qemu-img")
    home = small_fs / "home"
    home.mkdir()
    listing = json.loads(_devenv(home, "image", "list", "--json", cwd=tmp_path).stdout)
    if not any(row["name"] == "debian-12" and row["cached"] for row in listing):
        if os.environ.get("CI"):
            pytest.fail("the debian-12 image is not in DEVENV_CACHE; ci/test.sh builds it")
        pytest.skip("the debian-12 image is not built (`devenv image build debian-12`, root)")
    filler = fill(small_fs, 16 * MiB)
    ran = _devenv(home, "start", "-n", "tight", "--backend", "qemu", "--memory", "1GiB", cwd=tmp_path)
    inst = home / "instances" / "tight"
    assert ran.returncode == ExitCode.DISK_FULL, ran.stderr
    assert (
        f"devenv: error: no space left on the host for the memory of `tight`'s guest: {inst}/memory.ram"
        " needs 1.0 GiB; its filesystem has "
    ) in ran.stderr
    assert not (inst / "memory.ram").exists(), "the part it got is given back"
    assert not (inst / "qemu.pid").exists()
    status = json.loads(_devenv(home, "status", "-n", "tight", "--json", cwd=tmp_path).stdout)
    assert status["state"] == "stopped", status
    filler.unlink()
    assert _devenv(home, "delete", "-n", "tight", cwd=tmp_path).returncode == 0
    assert os.listdir(home / "instances") == []


def test_an_overlay_without_room_is_not_left_half_made(small_fs: Path, tmp_path: Path) -> None:
    _need("qemu-img")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "2G"], check=True)
    disk = small_fs / "disk.qcow2"
    filler = fill(small_fs, 8 * 1024)
    with pytest.raises(DiskFull) as info:
        overlay.create_overlay(base, disk, 20 * 1024**3)
    assert info.value.message.startswith(f"no space left on the host for a new overlay disk: {disk} needs 512.0 KiB")
    assert not disk.exists()
    filler.unlink()
    overlay.create_overlay(base, disk, 20 * 1024**3)  # with room, the same call works
    assert overlay.read_header(disk).virtual_size == 20 * 1024**3
    disk.unlink()


# -- pulling an image into a full cache -----------------------------------------------------------

PAYLOAD = hashlib.sha256(b"devenv").digest() * (8 * MiB // 32)  # 8 MiB


class _Handler(BaseHTTPRequestHandler):
    send_length = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        if self.send_length:
            self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the client gave up: its disk is full
            self.wfile.write(PAYLOAD)
        self.close_connection = True  # without a length, the end of the body is the end of the connection


@pytest.fixture(params=[True, False], ids=["content-length", "no-length"])
def image_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[str, bool]]:
    """The URL of an 8 MiB image, and whether its server says the length up front."""
    handler = type("Handler", (_Handler,), {"send_length": request.param})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.qcow2"
    text = f'name = "tiny"\n[arch.x86_64]\nurl = "{url}"\ndigest = "sha256:{hashlib.sha256(PAYLOAD).hexdigest()}"\n'
    definition = definitions.parse(text, tmp_path / "tiny.toml")
    monkeypatch.setattr(definitions, "load", lambda name, directory=None: definition)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield url, request.param
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_pull_into_a_full_cache_leaves_no_image(
    small_fs: Path, image_server: tuple[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a Content-Length the pull refuses before writing; without one the disk runs out mid-way."""
    monkeypatch.setenv("DEVENV_CACHE", str(small_fs / "cache"))
    cache.tmp_dir().mkdir(parents=True)
    filler = fill(small_fs, 2 * MiB)
    with pytest.raises(DiskFull) as info:
        download.pull("tiny", "x86_64")
    url, with_length = image_server
    part = cache.tmp_dir() / f"dl-{hashlib.sha256(url.encode()).hexdigest()[:16]}.qcow2.part"
    need = "needs 8.0 MiB" if with_length else "needs more than "
    assert info.value.message.startswith(f"no space left on the host for downloading {url}: {part} {need}")
    assert "(or point DEVENV_CACHE at a bigger one)" in info.value.hint
    assert list(cache.tmp_dir().iterdir()) == [], "no partial download holds the space"
    assert cache.read_record("tiny", "x86_64") is None
    assert not cache.blobs_dir().exists() or list(cache.blobs_dir().iterdir()) == []
    assert free_bytes(small_fs) >= 2 * MiB - 64 * 1024
    filler.unlink()
    record = download.pull("tiny", "x86_64")
    assert record.disk.read_bytes() == PAYLOAD
    assert cache.read_record("tiny", "x86_64") == record


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate(2) is Linux's")
def test_the_memory_files_given_back_pages_are_taken_again_before_the_disk_fills(small_fs: Path) -> None:
    """A hole the balloon punched would make the guest's next touch of that page a SIGBUS on a full disk."""
    from devenv import hostdisk
    from tests.unit.test_hostdisk import _punch

    ram = small_fs / "memory.ram"
    hostdisk.reserve(ram, 64 * MiB, "the guest's memory")
    _punch(ram, 0, 32 * MiB)
    filler = fill(small_fs, 0)  # the disk fills while the hole is open
    assert hostdisk.keep_allocated(ram) is False  # says so (the host agent logs it once)
    filler.unlink()
    _punch(ram, 0, 32 * MiB)
    assert hostdisk.keep_allocated(ram) is True
    fill(small_fs, 0)  # now the disk fills with the blocks already taken
    with open(ram, "r+b") as f:  # as the guest's page fault would: no new block is needed
        f.seek(16 * MiB)
        f.write(b"\1" * 4096)
        f.flush()
        os.fsync(f.fileno())
