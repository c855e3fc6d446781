"""9p or reverse sshfs, decided from host facts alone, so a Mac's answer is tested here.

qemuhost.mount_kind's docstring names the sources: QEMU's meson.build (9p on
macOS hosts since 7.0), Homebrew's formula (--enable-virtfs on macOS too) and
Lima's default mount type for QEMU (9p since v1.0).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devenv.backends.drivers import qemuhost
from devenv.hostos import parse_qemu_version

MAC_UID = 501  # macOS's first user


@pytest.mark.parametrize(
    ("system", "version", "lists_9p", "host_uid", "forced", "expected"),
    [
        # Homebrew's QEMU on a Mac: 9p
        (
            "macos",
            (10, 2, 0),
            True,
            MAC_UID,
            "",
            ("9p", "QEMU serves 9p here and the guest user has the host user's uid"),
        ),
        (
            "macos",
            (7, 0, 0),
            True,
            MAC_UID,
            "",
            ("9p", "QEMU serves 9p here and the guest user has the host user's uid"),
        ),
        # before 7.0 QEMU had no 9p server on macOS, whatever it lists
        ("macos", (6, 2, 0), True, MAC_UID, "", ("sshfs", "QEMU 6.2.0 has no 9p server on macOS (7.0 added it)")),
        ("macos", (6, 2, 0), True, MAC_UID, "9p", ("sshfs", "QEMU 6.2.0 has no 9p server on macOS (7.0 added it)")),
        # a QEMU built without virtfs (a MacPorts variant, a build of one's own)
        (
            "macos",
            (9, 0, 0),
            False,
            MAC_UID,
            "",
            ("sshfs", "this QEMU has no virtio-9p-pci device (built without virtfs)"),
        ),
        (
            "macos",
            (9, 0, 0),
            True,
            0,
            "",
            ("sshfs", "the guest user's uid is not the host user's, so 9p would show it files it cannot use"),
        ),
        ("macos", (9, 0, 0), True, MAC_UID, "sshfs", ("sshfs", "DEVENV_MOUNT_TYPE=sshfs")),
        ("macos", None, True, MAC_UID, "", ("9p", "QEMU serves 9p here and the guest user has the host user's uid")),
        ("linux", (6, 2, 0), True, 1000, "", ("9p", "QEMU serves 9p here and the guest user has the host user's uid")),
        ("linux", (7, 2, 22), True, 0, "9p", ("9p", "DEVENV_MOUNT_TYPE=9p")),
        (
            "windows",
            (9, 0, 0),
            False,
            None,
            "",
            ("sshfs", "this QEMU has no virtio-9p-pci device (built without virtfs)"),
        ),
    ],
)
def test_mount_kind(
    system: str,
    version: tuple[int, int, int] | None,
    lists_9p: bool,
    host_uid: int | None,
    forced: str,
    expected: tuple[str, str],
) -> None:
    guest = host_uid if host_uid and host_uid >= 500 else 1000  # userdata.guest_uid's rule
    assert qemuhost.mount_kind(system, version, lists_9p, host_uid, guest, forced) == expected


def test_qemu_versions_are_read_as_lima_reads_them() -> None:
    # recorded here (Debian's QEMU 7.2), and the form Lima's parseQemuVersion expects of Homebrew's
    assert parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright") == (7, 2, 22)
    assert parse_qemu_version("QEMU emulator version 10.2.0\nCopyright (c) 2003-2025 Fabrice Bellard") == (10, 2, 0)
    assert parse_qemu_version("") is None
    assert parse_qemu_version("qemu-img version 8.2.1") is None


@pytest.mark.parametrize(
    ("version_line", "shared"), [("QEMU emulator version 10.2.0", True), ("QEMU emulator version 6.2.0", False)]
)
def test_a_macs_qemu_version_decides_the_shares_in_its_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version_line: str, shared: bool
) -> None:
    from devenv.backends.base import InstanceRef
    from devenv.config import Config, Mount
    from devenv.testing import FakeHost

    monkeypatch.delenv("DEVENV_MOUNT_TYPE", raising=False)
    monkeypatch.setattr("devenv.hostos.current", lambda: FakeHost("macos", "aarch64"))
    asked: list[list[str]] = []

    def quiet(argv: list[str], timeout: float = 5) -> str:
        asked.append(argv)
        return version_line + "\n"

    monkeypatch.setattr("devenv.hostos._quiet", quiet)
    monkeypatch.setattr(qemuhost, "has_9p", lambda binary: True)
    monkeypatch.setattr(os, "getuid", lambda: MAC_UID)
    inst = InstanceRef("dev", tmp_path, Config(name="dev", mounts=(Mount(str(tmp_path)),)))
    got = qemuhost.shares(inst, "/opt/homebrew/bin/qemu-system-aarch64")
    assert asked == [["/opt/homebrew/bin/qemu-system-aarch64", "--version"]]
    assert (len(got) == 1 and got[0][1] == str(tmp_path)) if shared else got == ()
