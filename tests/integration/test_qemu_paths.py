"""The real QEMU, launched with devenv's command line from a folder whose name has `,` and `=` in it.

Each path must reach QEMU whole (QMP names the same files) and add no option:
the folder's `readonly=on` must not make the disk read-only.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from devenv.backends.drivers.qemuargs import VmSpec, build_argv
from devenv.backends.drivers.qmp import Qmp
from tests.integration.qemu_fixture import MISSING, QEMU

pytestmark = [pytest.mark.integration, pytest.mark.skipif(QEMU is None, reason=MISSING)]


def test_paths_with_commas_and_equals_reach_qemu_whole(tmp_path: Path) -> None:
    d = tmp_path / "proj,readonly=on,x=y"
    share = d / "src,a=b"
    share.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "disk.qcow2"), "64M"], check=True)
    (d / "cidata.iso").write_bytes(bytes(2048))
    spec = VmSpec(
        name="commas",
        arch="x86_64",
        accel="tcg",
        cpus=1,
        memory=256 * 1024**2,
        disk=d / "disk.qcow2",
        cidata=d / "cidata.iso",
        ssh_port=0,
        serial_log=d / "serial.log",
        qmp_socket=d / "qmp.sock",
        pid_file=d / "qemu.pid",
        shares=(("m0", str(share), True),),
        ram_file=d / "memory.ram",
        relay_socket=d / "relay.sock",
    )
    argv = [*build_argv(spec, QEMU), "-S"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not (d / "qmp.sock").exists():
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "no QMP socket"
            time.sleep(0.05)
        with Qmp(d / "qmp.sock") as q:
            blocks = {b["device"] or b["qdev"]: b for b in q.command("query-block")}
            files = sorted(b["inserted"]["file"] for b in blocks.values() if "inserted" in b)
            assert files == [str(d / "cidata.iso"), str(d / "disk.qcow2")], blocks
            disk = next(b for b in blocks.values() if b.get("inserted", {}).get("file") == str(d / "disk.qcow2"))
            assert disk["inserted"]["ro"] is False  # the folder's "readonly=on" stayed part of its name
            chardevs = {c["label"]: c["filename"] for c in q.command("query-chardev")}
            assert str(d / "relay.sock") in chardevs["relay"] and str(d / "qmp.sock") in chardevs["qmp"], chardevs
            ram = q.command("qom-get", path="/objects/ram0", property="mem-path")
            assert ram == str(d / "memory.ram")
            fsdev = q.command("human-monitor-command", **{"command-line": "info qtree"})
            assert 'mount_tag = "m0"' in fsdev
            q.command("quit")
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (d / "serial.log").exists() and (d / "memory.ram").stat().st_size == 256 * 1024**2
