"""The build's bake boot (devenv/images/bake.py): what it runs and how it reads the guest's answer.

The boot itself runs in tests/integration/test_image_build.py (a real build) and
its effect on a first boot in the e2e suite.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from devenv.errors import ImageError
from devenv.images import bake


@pytest.mark.parametrize(
    ("console", "said"),
    [
        ("[    1.2] x\nDEVENV-BAKED ok\n", "ok"),
        ("noise DEVENV-BAKED failed step=import\r\n", "failed step=import"),
        ("Kernel panic - not syncing\n", None),
        ("", None),
    ],
)
def test_outcome_reads_the_one_line(console: str, said: str | None) -> None:
    assert bake.outcome(console) == said


def test_accelerators_follow_the_variable_else_kvm_then_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bake, "host_arch", lambda: "x86_64")
    monkeypatch.setenv(bake.ACCEL_ENV, "TCG")
    assert bake.accelerators("x86_64") == ["tcg"]
    monkeypatch.delenv(bake.ACCEL_ENV)
    monkeypatch.setattr(bake.os, "access", lambda path, mode: path == "/dev/kvm")
    assert bake.accelerators("x86_64") == ["kvm", "tcg"]
    assert bake.accelerators("aarch64") == ["tcg"]
    monkeypatch.setattr(bake.os, "access", lambda path, mode: False)
    assert bake.accelerators("x86_64") == ["tcg"]


def test_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bake, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(bake.shutil, "which", lambda name: "/usr/bin/" + name)
    assert bake.skip_reason("x86_64", True) is None
    assert bake.skip_reason("x86_64", False) == "the image has no docker"
    assert "a aarch64 image on a x86_64 host" in (bake.skip_reason("aarch64", True) or "")
    monkeypatch.setattr(bake.shutil, "which", lambda name: None)
    assert "qemu-system-x86_64 is not installed" in (bake.skip_reason("x86_64", True) or "")


def test_qemu_argv_boots_the_raw_disk_with_the_bake_as_init(tmp_path: Path) -> None:
    raw = tmp_path / "a,b" / "disk.raw"
    argv = bake.qemu_argv("x86_64", "tcg", raw, Path("/k"), Path("/i"), "root=LABEL=devenv-root rw", Path("/c.log"))
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg" and argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-append") + 1] == f"root=LABEL=devenv-root rw init={bake.BAKE_INIT} panic=-1"
    assert argv[argv.index("-drive") + 1] == f"file={tmp_path}/a,,b/disk.raw,format=raw,if=virtio"
    assert "-no-reboot" in argv and argv[argv.index("-serial") + 1] == "file:/c.log"


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """A qemu-system-x86_64 on PATH: `script` runs with $ACCEL and $CONSOLE (the -serial file) set from its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tried = tmp_path / "tried"
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do case "$1" in\n'
        "  -machine) ACCEL=${2#*accel=}; shift ;;\n"
        "  -serial) CONSOLE=${2#file:}; shift ;;\n"
        "esac; shift; done\n"
        f'echo "$ACCEL" >> "{tried}"\n' + script
    )
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(bake, "accelerators", lambda arch: ["kvm", "tcg"])
    return tried


def _bake(tmp_path: Path, **kw: float) -> str:
    return bake.bake("x86_64", tmp_path / "r", tmp_path / "k", tmp_path / "i", "ro quiet", tmp_path, **kw)


def test_a_kvm_that_fails_falls_back_to_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _fake_qemu(
        tmp_path,
        monkeypatch,
        'if [ "$ACCEL" = kvm ]; then echo "KVM: entry failed" >&2; exit 1; fi\necho "DEVENV-BAKED ok" > "$CONSOLE"\n',
    )
    assert _bake(tmp_path) == "tcg"
    assert tried.read_text().split() == ["kvm", "tcg"]


def test_every_accelerator_failing_fails_the_build_with_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_qemu(
        tmp_path,
        monkeypatch,
        'if [ "$ACCEL" = kvm ]; then echo "KVM: entry failed" >&2; exit 1; fi\n'
        'printf "dockerd: boom\\nDEVENV-BAKED failed step=dockerd\\n" > "$CONSOLE"\n',
    )
    with pytest.raises(ImageError, match="tcg: failed step=dockerd") as info:
        _bake(tmp_path)
    assert "dockerd: boom" in info.value.message
    assert "kvm: QEMU exited with 1: KVM: entry failed" in info.value.message


def test_a_silent_guest_is_killed_and_the_next_accelerator_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accelerator that hangs at boot (nested KVM) must not hold the build for the whole timeout."""
    tried = _fake_qemu(
        tmp_path, monkeypatch, 'if [ "$ACCEL" = kvm ]; then exec sleep 60; fi\necho "DEVENV-BAKED ok" > "$CONSOLE"\n'
    )
    started = time.monotonic()
    assert _bake(tmp_path, silent_after=1.0, timeout=30.0) == "tcg"
    assert time.monotonic() - started < 10
    assert tried.read_text().split() == ["kvm", "tcg"]


def test_a_guest_that_talks_but_never_ends_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_qemu(tmp_path, monkeypatch, 'echo "Linux version 6.1" > "$CONSOLE"\nexec sleep 60\n')
    with pytest.raises(ImageError, match="kvm: did not finish within 1 s") as info:
        _bake(tmp_path, silent_after=0.5, timeout=1.0)
    assert "Linux version 6.1" in info.value.message


def test_the_bake_boots_without_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its console is what a failure shows, and what tells a silent accelerator from a slow one."""
    _fake_qemu(tmp_path, monkeypatch, "")
    seen: list[str] = []
    real = bake.qemu_argv

    def spy(*args: object) -> list[str]:
        argv = real(*args)  # type: ignore[arg-type]
        seen.append(argv[argv.index("-append") + 1])
        return argv

    monkeypatch.setattr(bake, "qemu_argv", spy)
    with pytest.raises(ImageError):
        _bake(tmp_path, silent_after=5.0, timeout=5.0)
    assert seen and all("quiet" not in a.split() and a.startswith("ro init=") for a in seen), seen
