"""A stand-in qemu-system-x86_64 for unit tests of how devenv launches and stops QEMU.

It does what a started QEMU does for devenv: records the accelerator of each
launch in $STAND_IN_CALLS, writes the pid file, and serves QMP (a greeting,
an empty return for every command; `quit` ends it). Under an accelerator
named in $STAND_IN_CRASH it prints $STAND_IN_TEXT (default: what QEMU 7.2
printed under -accel kvm on these CI machines) and aborts, as that QEMU did.
It never writes the serial console: a guest that does not run.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

# What qemu-system-x86_64 7.2 wrote and how it ended (SIGABRT, code -6) under -accel kvm on this CI machine.
RECORDED_KVM_CRASH = (
    "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs:"
    " Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n"
)

SCRIPT = textwrap.dedent(
    f"""\
    #!{sys.executable}
    import json, os, socket, sys
    argv = sys.argv[1:]
    accel = argv[argv.index("-accel") + 1].partition(",")[0]
    with open(os.environ["STAND_IN_CALLS"], "a") as calls:
        calls.write(accel + "\\n")
    if accel in os.environ.get("STAND_IN_CRASH", "").split(","):
        sys.stderr.write(os.environ.get("STAND_IN_TEXT") or {RECORDED_KVM_CRASH!r})
        sys.stderr.flush()
        os.abort()
    qmp = next(a for a in argv if a.startswith("socket,id=qmp,path=")).split(",")[2].removeprefix("path=")
    server = socket.socket(socket.AF_UNIX)
    server.bind(qmp)
    server.listen(1)
    with open(argv[argv.index("-pidfile") + 1], "w") as pid:
        pid.write(f"{{os.getpid()}}\\n")
    while True:
        conn, _ = server.accept()
        f = conn.makefile("rwb")
        f.write(b'{{"QMP": {{"version": {{}}, "capabilities": []}}}}\\n'); f.flush()
        for line in f:
            f.write(b'{{"return": {{}}}}\\n'); f.flush()
            if json.loads(line).get("execute") == "quit":
                sys.exit(0)
    """
)


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str = "") -> tuple[Path, Path]:
    """The stand-in as tmp_path/qemu-system-x86_64, and the file it records each launch's accelerator in."""
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text(SCRIPT)
    binary.chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("STAND_IN_CALLS", str(calls))
    monkeypatch.setenv("STAND_IN_CRASH", crash)
    monkeypatch.setenv("DEVENV_MOUNT_TYPE", "sshfs")  # no 9p probe of the binary
    return binary, calls
