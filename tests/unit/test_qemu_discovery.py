"""QEMU and its aarch64 firmware found where Homebrew and MacPorts put them, in fake directory trees.

The layouts are Homebrew's (/opt/homebrew on Apple Silicon, /usr/local on
Intel; the bin/ entries are symlinks into the Cellar) and MacPorts'
(/opt/local), each with QEMU's firmware in PREFIX/share/qemu. `-L help`'s
output below is recorded from Debian's QEMU 7.2 on these machines; no Mac's
was recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devenv.backends.drivers import qemuhost
from devenv.errors import BackendUnavailable
from devenv.testing import FakeHost

FW = "edk2-aarch64-code.fd"
DEBIAN_L_HELP = "/usr/bin/../share/qemu\n/usr/bin/../share/seabios\n/usr/bin/../lib/ipxe/qemu\n"


def make(path: Path, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    if executable:
        path.chmod(0o755)
    return path


def homebrew(root: Path, prefix: str = "/opt/homebrew") -> Path:
    """Homebrew's layout: the Cellar holds the files, PREFIX/bin and PREFIX/share link into it."""
    cellar = root / prefix.lstrip("/") / "Cellar/qemu/10.2.0"
    make(cellar / "bin/qemu-system-aarch64", executable=True)
    make(cellar / "share/qemu" / FW)
    (root / prefix.lstrip("/") / "bin").mkdir(parents=True)
    link = root / prefix.lstrip("/") / "bin/qemu-system-aarch64"
    link.symlink_to(cellar / "bin/qemu-system-aarch64")
    return link


def test_the_share_folder_beside_homebrews_binary_is_found_through_its_symlink(tmp_path: Path) -> None:
    link = homebrew(tmp_path)
    found = qemuhost.find_firmware("aarch64", str(link), root=str(tmp_path / "elsewhere"))
    assert found == tmp_path / "opt/homebrew/Cellar/qemu/10.2.0/share/qemu" / FW


@pytest.mark.parametrize("prefix", ["/opt/homebrew", "/usr/local", "/opt/local"])
def test_each_package_managers_prefix_is_looked_in(tmp_path: Path, prefix: str) -> None:
    fw = make(tmp_path / prefix.lstrip("/") / "share/qemu" / FW)
    assert qemuhost.find_firmware("aarch64", None, root=str(tmp_path)) == fw


def test_qemus_own_data_folders_come_first(tmp_path: Path) -> None:
    ours = make(tmp_path / "qemu-data" / FW)
    make(tmp_path / "opt/homebrew/share/qemu" / FW)
    assert qemuhost.find_firmware("aarch64", None, [str(tmp_path / "qemu-data")], root=str(tmp_path)) == ours


def test_the_order_tried_on_a_mac_with_homebrew(tmp_path: Path) -> None:
    link = homebrew(tmp_path)
    cellar = tmp_path / "opt/homebrew/Cellar/qemu/10.2.0"
    got = qemuhost.firmware_candidates("aarch64", str(link), ["/q/share/qemu"], root="")
    assert got == [
        f"/q/share/qemu/{FW}",
        f"{tmp_path}/opt/homebrew/share/qemu/{FW}",
        f"{tmp_path}/opt/homebrew/bin/share/{FW}",
        f"{cellar}/share/qemu/{FW}",
        f"{cellar}/bin/share/{FW}",
        f"/opt/homebrew/share/qemu/{FW}",
        f"/usr/local/share/qemu/{FW}",
        f"/opt/local/share/qemu/{FW}",
        "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/edk2/aarch64/QEMU_EFI.fd",
        f"C:/msys64/ucrt64/share/qemu/{FW}",
        f"C:/Program Files/qemu/share/{FW}",
    ]
    assert qemuhost.firmware_candidates("x86_64", str(link)) == []  # SeaBIOS is built into QEMU


def test_l_help_is_read_as_qemu_prints_it() -> None:
    asked: list[list[str]] = []

    def run(argv: list[str]) -> str | None:
        asked.append(argv)
        return DEBIAN_L_HELP

    got = qemuhost.data_dirs("/usr/bin/qemu-system-aarch64", run)
    assert got == ["/usr/bin/../share/qemu", "/usr/bin/../share/seabios", "/usr/bin/../lib/ipxe/qemu"]
    assert asked == [["/usr/bin/qemu-system-aarch64", "-L", "help"]]
    assert qemuhost.data_dirs("/x", lambda argv: None) == []  # an old QEMU, or one that would not run


def test_missing_firmware_on_a_mac_names_every_place_looked_and_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = homebrew(tmp_path)
    os.remove(tmp_path / "opt/homebrew/Cellar/qemu/10.2.0/share/qemu" / FW)
    monkeypatch.setattr(qemuhost, "data_dirs", lambda binary: [])
    monkeypatch.setattr("devenv.hostos.current", lambda: FakeHost("macos", "aarch64"))
    monkeypatch.setattr(qemuhost, "PACKAGE_PREFIXES", ())  # this machine's own prefixes are not the fake Mac's
    monkeypatch.setattr(qemuhost, "SYSTEM_FIRMWARE", {"aarch64": ()})
    with pytest.raises(BackendUnavailable) as e:
        qemuhost.firmware("aarch64", direct_kernel=False, binary=str(link))
    cellar = tmp_path / "opt/homebrew/Cellar/qemu/10.2.0"
    assert e.value.message == (
        "no UEFI firmware for aarch64 guests was found (looked in "
        f"{tmp_path}/opt/homebrew/share/qemu/{FW}, {tmp_path}/opt/homebrew/bin/share/{FW}, "
        f"{cellar}/share/qemu/{FW}, {cellar}/bin/share/{FW})"
    )
    assert e.value.hint == "brew install qemu (it ships edk2-aarch64-code.fd; MacPorts: sudo port install qemu)"


@pytest.mark.parametrize(
    ("prefix", "hint"),
    [
        ("/opt/homebrew", 'eval "$({root}/opt/homebrew/bin/brew shellenv)"'),
        ("/usr/local", 'eval "$({root}/usr/local/bin/brew shellenv)"'),
        ("/opt/local", 'export PATH="{root}/opt/local/bin:$PATH" (MacPorts;'),
    ],
)
def test_a_qemu_installed_off_path_on_a_mac_is_named_with_the_command_that_puts_it_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, hint: str
) -> None:
    bindir = tmp_path / prefix.lstrip("/") / "bin"
    make(bindir / "qemu-system-aarch64", executable=True)
    make(bindir / "qemu-img", executable=True)
    if prefix != "/opt/local":
        make(bindir / "brew", executable=True)
    monkeypatch.setattr(qemuhost.shutil, "which", lambda name: None)  # PATH without the prefix's bin
    monkeypatch.setattr("devenv.hostos.current", lambda: FakeHost("macos", "aarch64"))
    real = qemuhost.off_path_qemu
    monkeypatch.setattr(qemuhost, "off_path_qemu", lambda name: real(name, root=str(tmp_path)))
    with pytest.raises(BackendUnavailable) as e:
        qemuhost.check_qemu("aarch64")
    assert e.value.message == f"qemu-system-aarch64 is installed in {bindir}, which is not on PATH"
    assert e.value.hint.startswith(hint.format(root=tmp_path)), e.value.hint
    assert e.value.hint.endswith("then run devenv again")


def test_no_qemu_anywhere_on_a_mac_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemuhost.shutil, "which", lambda name: "/usr/bin/qemu-img" if name == "qemu-img" else None)
    monkeypatch.setattr("devenv.hostos.current", lambda: FakeHost("macos", "aarch64"))
    real = qemuhost.off_path_qemu
    monkeypatch.setattr(qemuhost, "off_path_qemu", lambda name: real(name, root=str(tmp_path)))
    with pytest.raises(BackendUnavailable) as e:
        qemuhost.check_qemu("x86_64")  # the other arch's emulator (an Intel guest on Apple Silicon)
    assert e.value.message == "qemu-system-x86_64 was not found on PATH: it runs x86_64 guests"
    assert e.value.hint == "brew install qemu (MacPorts: sudo port install qemu)"
