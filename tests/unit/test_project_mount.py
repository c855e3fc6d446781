"""The project folder is shared with a VM at the same path, except where that would be unsafe."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.config import Config, Mount
from devenv.instance import with_project_mount


@pytest.mark.parametrize(
    ("folder", "mounts", "expected"),
    [
        ("/home/ann/proj", (), (Mount("/home/ann/proj", "", True),)),
        ("/tmp/x", (), (Mount("/tmp/x", "", True),)),
        ("/", (), ()),
        ("/usr/src/app", (), ()),
        ("/etc/foo", (), ()),
        ("/root", (), ()),
        ("/home/ann/proj/sub", (Mount("/home/ann/proj", "", False),), (Mount("/home/ann/proj", "", False),)),
        ("/home/ann/proj", (Mount("/home/ann/proj", "/src", True),), (Mount("/home/ann/proj", "/src", True),)),
        ("/home/ann/b", (Mount("/home/ann/a"),), (Mount("/home/ann/a"), Mount("/home/ann/b", "", True))),
    ],
)
def test_project_mount(folder: str, mounts: tuple[Mount, ...], expected: tuple[Mount, ...]) -> None:
    assert with_project_mount(Config(mounts=mounts), Path(folder)).mounts == expected


def test_vm_instances_get_the_project_folder_and_native_ones_do_not(home: Path, cli: object) -> None:
    from devenv.instance import resolve_config
    from devenv.testing import use_fake_backend

    project = Path.cwd() / "devenv.toml"
    project.write_text('name = "p"\n')
    with use_fake_backend():
        vm_cfg = resolve_config("p", {"backend": "fake"}, project)
    assert vm_cfg.mounts == (Mount(str(Path.cwd()), "", True),)
    assert resolve_config("p", {"backend": "native"}, project).mounts == ()
