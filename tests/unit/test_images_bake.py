"""The build's bake boot (devenv/images/bake.py): what it runs and how it reads the guest's answer.

The boot itself runs in tests/integration/test_image_build.py (a real build) and
its effect on a first boot in the e2e suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.errors import ImageError
from devenv.images import bake
from devenv.runner import Result


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


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> list[str]:
    """A qemu-system that writes each accelerator's answer to its serial file, as the guest would."""
    tried: list[str] = []

    def run(argv: list[str], timeout: float) -> object:
        accel = argv[argv.index("-machine") + 1].split("accel=")[1]
        tried.append(accel)
        Path(argv[argv.index("-serial") + 1].removeprefix("file:")).write_text(answers.get(accel, ""))
        return Result(tuple(argv), 0, "", "")

    monkeypatch.setattr(bake, "run", run)
    monkeypatch.setattr(bake, "accelerators", lambda arch: ["kvm", "tcg"])
    return tried


def test_a_kvm_that_fails_falls_back_to_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _fake_qemu(tmp_path, monkeypatch, {"kvm": "KVM: entry failed\n", "tcg": "DEVENV-BAKED ok\n"})
    assert bake.bake("x86_64", tmp_path / "r", tmp_path / "k", tmp_path / "i", "", tmp_path) == "tcg"
    assert tried == ["kvm", "tcg"]


def test_every_accelerator_failing_fails_the_build_with_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_qemu(tmp_path, monkeypatch, {"tcg": "dockerd: boom\nDEVENV-BAKED failed step=dockerd\n"})
    with pytest.raises(ImageError, match="tcg: failed step=dockerd") as info:
        bake.bake("x86_64", tmp_path / "r", tmp_path / "k", tmp_path / "i", "", tmp_path)
    assert "dockerd: boom" in info.value.message and "kvm: no result on the console" in info.value.message
