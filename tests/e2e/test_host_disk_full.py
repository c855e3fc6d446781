"""A running guest fills the host's disk: QEMU pauses it, status says why, and it resumes whole once space is back.

The instance has its own DEVENV_HOME on the small filesystem ci/test.sh
mounts (DEVENV_TEST_SMALL_FS, 1 GiB); the base image stays in DEVENV_CACHE,
so the instance's overlay starts at a few MiB beside its guest's 512 MiB
memory file. The test leaves 32 MiB free and has the guest write 96 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Devenv, _require
from tests.e2e.drivers import CASES
from tests.smallfs import fill, free_bytes, small_fs_fixture

NAME = "diskfull"
MiB = 1024**2
WRITE = 96 * MiB
LEAVE = 32 * MiB


@pytest.fixture(scope="module")
def small_fs() -> Iterator[Path]:
    yield from small_fs_fixture()


@pytest.fixture(scope="module")
def full_vm(small_fs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devenv]:
    _require("qemu-system-x86_64")
    _require("qemu-img")
    project = tmp_path_factory.mktemp("diskfull")
    (project / "devenv.toml").write_text(f'name = "{NAME}"\nbackend = "qemu"\nmemory = "512MiB"\n')
    env = {**os.environ, "DEVENV_HOME": str(small_fs / "home"), **CASES["qemu"].environment()}
    env.pop("DEVENV_INSTANCE", None)
    d = Devenv(small_fs / "home", env, project)
    try:
        d.ok("start")
        yield d
    finally:
        d.run("delete", "--force", "-n", NAME, timeout=180)


def _e2fsck() -> str:
    """e2fsprogs is there (the image build needs mkfs.ext4), in sbin, which an ordinary user's PATH may lack."""
    found = shutil.which("e2fsck") or next((p for p in ("/usr/sbin/e2fsck", "/sbin/e2fsck") if Path(p).exists()), None)
    if found is None:
        pytest.fail("e2fsck is missing; ci/setup-linux.sh installs e2fsprogs")
    return found


def _guest(d: Devenv, script: str, timeout: float = 300) -> str:
    return d.ok("exec", "--", "sh", "-c", script, timeout=timeout).stdout.decode().strip()


def _status(d: Devenv) -> dict[str, object]:
    ran = d.run("status", "--json", timeout=60)
    assert ran.returncode == 0, ran.stderr.decode(errors="replace")
    data = json.loads(ran.stdout)
    assert isinstance(data, dict)
    return data


def test_a_guest_filling_the_host_disk_pauses_and_resumes_whole(
    full_vm: Devenv, small_fs: Path, tmp_path: Path
) -> None:
    d = full_vm
    disk = small_fs / "home" / "instances" / NAME / "disk.qcow2"
    # the data first, in the guest's RAM (tmpfs), with its sha256: what the disk must hold in the end
    want = _guest(d, f"head -c {WRITE} /dev/urandom > /dev/shm/src && sha256sum < /dev/shm/src").split()[0]
    filler = fill(small_fs, LEAVE)
    # detached in the guest: its SSH channel may not outlive the pause, the write must
    _guest(
        d,
        "setsid sh -c 'cp /dev/shm/src /var/tmp/big && sync /var/tmp/big; echo $? > /var/tmp/big.rc'"
        " </dev/null >/dev/null 2>&1 &",
    )

    deadline = time.monotonic() + 300
    while True:
        st = _status(d)
        details = st.get("details")
        assert isinstance(details, dict)
        if details.get("qemu_status") == "io-error":
            break
        assert st["state"] in ("running", "degraded"), st  # a QEMU that died (a SIGBUS) is `broken`
        assert time.monotonic() < deadline, f"the guest never paused: {st}; {free_bytes(small_fs)} bytes free"
        time.sleep(2)
    assert st["state"] == "degraded"
    reason = str(st["reason"])
    assert reason.startswith(f"QEMU paused the VM: the host's disk holding {disk} is full ("), reason
    assert reason.endswith("free); the guest waits, nothing is lost: free space there; `devenv start` resumes it")
    assert details["io_error"] == f"{disk} (nospace)"
    assert isinstance(details["host_free"], int) and details["host_free"] < 4 * MiB
    words = d.ok("status").stdout.decode()
    assert f"{NAME}: degraded (QEMU paused the VM: the host's disk holding {disk} is full" in words

    still = d.run("start", timeout=120)  # no space yet: it says so, and the guest stays paused
    assert still.returncode == 74, still.stderr.decode(errors="replace")
    assert f"the VM of `{NAME}` is still paused: QEMU paused the VM: the host's disk holding {disk}" in (
        still.stderr.decode()
    )

    filler.unlink()
    started = d.ok("start", timeout=600)
    assert "resume the VM (io-error)" in started.stderr.decode()
    assert _status(d)["state"] == "running"

    deadline = time.monotonic() + 300
    while (rc := _guest(d, "cat /var/tmp/big.rc 2>/dev/null || true")) == "":
        assert time.monotonic() < deadline, "the guest's copy never finished after the resume"
        time.sleep(2)
    assert rc == "0", f"the guest's copy failed after the resume (exit {rc})"
    got = _guest(d, "sudo sh -c 'echo 3 > /proc/sys/vm/drop_caches' && sha256sum < /var/tmp/big").split()[0]
    assert got == want, "the file read back from the disk is not what was written"
    kernel = _guest(d, "sudo dmesg | grep -iE 'EXT4-fs (error|warning)|I/O error|Buffer I/O' || true")
    assert kernel == "", f"the guest's kernel saw disk errors:\n{kernel}"

    d.ok("stop", "--shutdown", timeout=300)
    check = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found on the image." in check.stdout
    # and the guest's filesystem itself: the image is one ext4 with no partition table (devenv/images/debian.py),
    # so its raw form (sparse, off the small filesystem) is what e2fsck reads; -f checks a clean one too
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True, timeout=900)
    fsck = subprocess.run([_e2fsck(), "-f", "-n", str(raw)], capture_output=True, text=True, timeout=900)
    assert fsck.returncode == 0, f"e2fsck found errors (exit {fsck.returncode}):\n{fsck.stdout}{fsck.stderr}"
    raw.unlink()
    print(f"overlay {disk.stat().st_size // MiB} MiB; {free_bytes(small_fs) // MiB} MiB free", file=sys.stderr)
