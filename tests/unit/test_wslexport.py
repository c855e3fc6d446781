"""The parts of `devenv image export --format wsl` that need no image (devenv/images/wslexport.py).

The debugfs output below was printed by debugfs 1.47.0 (Debian 12) for the
built debian-12 image; tests/integration/test_wsl2_stand_in.py exports that
image for real and imports the tarball.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from devenv.errors import NotSupported
from devenv.images import wslexport

LS_P = """debugfs 1.47.0 (5-Feb-2023)
debugfs: ls -p "/"
/2/040755/0/0/./4096/
/2/040755/0/0/../4096/
/12/040755/0/0/usr/4096/
/14/041777/0/0/tmp/4096/
debugfs: ls -p "/usr/bin"
/799/100755/0/0/cvtsudoers/345280/
/1074/104755/0/0/sudo/281624/
/1075/120777/0/0/sudoedit/4/
debugfs: ls -p "/etc"
/148/100640/0/42/gshadow/499/
"""


def test_owners_and_modes_from_debugfs_ls_p() -> None:
    assert wslexport.parse_ls_p(LS_P) == {
        "usr": (0o755, 0, 0),
        "tmp": (0o1777, 0, 0),
        "usr/bin/cvtsudoers": (0o755, 0, 0),
        "usr/bin/sudo": (0o4755, 0, 0),
        "usr/bin/sudoedit": (0o777, 0, 0),
        "etc/gshadow": (0o640, 0, 42),
    }


def test_the_tar_takes_the_filesystems_owners_and_set_uid_bits(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "sudo").write_text("x")
    (tree / "etc").mkdir()
    (tree / "etc" / "gshadow").write_text("y")
    out = tmp_path / "rootfs.tar"
    owners = {"usr/bin/sudo": (0o4755, 0, 0), "etc/gshadow": (0o640, 0, 42)}
    wslexport.write_tar(tree, out, owners)
    with tarfile.open(out) as tar:
        got = {m.name: (m.mode, m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()}
    assert got["./usr/bin/sudo"] == (0o4755, 0, 0, "", "")
    assert got["./etc/gshadow"] == (0o640, 0, 42, "", "")
    assert sorted(got) == ["./etc", "./etc/gshadow", "./usr", "./usr/bin", "./usr/bin/sudo"]


def test_a_partitioned_disk_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(NotSupported) as e:
        wslexport.check_bare_ext(raw, Path("cloud.qcow2"))
    assert e.value.message == (
        "backend `wsl2` does not support exporting cloud.qcow2: it is not one ext4 filesystem without partitions"
    )
    good = tmp_path / "ext.raw"
    good.write_bytes(b"\0" * wslexport.EXT_MAGIC_OFFSET + wslexport.EXT_MAGIC + b"\0" * 100)
    wslexport.check_bare_ext(good, Path("built.qcow2"))


def test_the_tarball_is_kept_in_the_cache_by_the_disks_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    a = wslexport.rootfs_path(tmp_path / "a.qcow2")
    assert a.parent == tmp_path / "cache" / "images" / "wsl"
    assert a.name.endswith(".wsl-rootfs.tar")
    assert a != wslexport.rootfs_path(tmp_path / "b.qcow2")


def test_export_knows_one_format(home: Path, cli: Any) -> None:
    ran = cli("image", "export", "debian-12", "--format", "vhdx")
    assert ran.code == 64
    assert "unknown export format `vhdx`" in ran.err
    assert "the one format so far is `--format wsl`" in ran.err
