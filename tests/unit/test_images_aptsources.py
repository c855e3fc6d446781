"""The builder's mirror comes from the host's apt configuration, never a hard-coded host."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.errors import ImageError
from devenv.images import aptsources

DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_deb822_main_archive(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": DEBIAN_SOURCES})
    assert aptsources.host_mirror("bookworm", etc) == "http://mirror.example/debian"


def test_one_line_format_with_options(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {
            "sources.list": "# comment\ndeb-src http://src.example/debian bookworm main\n"
            "deb http://security.example/debian-security bookworm-security main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib\n"
        },
    )
    assert aptsources.host_mirror("bookworm", etc) == "http://one.example/debian"


def test_suite_match_wins_over_order(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {
            "sources.list.d/a.list": "deb http://old.example/debian bullseye main\n",
            "sources.list.d/b.sources": "Types: deb\nURIs: http://new.example/debian\nSuites: bookworm\n",
        },
    )
    assert aptsources.host_mirror("bookworm", etc) == "http://new.example/debian"
    assert aptsources.host_mirror("trixie", etc) == "http://old.example/debian"


def test_disabled_and_unusable_sources_are_skipped(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {
            "sources.list.d/x.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
            "Types: deb\nURIs: cdrom:[Debian]/\nSuites: bookworm\n",
        },
    )
    with pytest.raises(ImageError) as info:
        aptsources.host_mirror("bookworm", etc)
    assert "found no Debian mirror for `bookworm`" in info.value.message
    assert "--mirror" in info.value.hint


def test_this_host_has_a_mirror() -> None:
    """The build machines read their mirror from /etc/apt (MACHINE-NOTES)."""
    if not Path("/etc/apt/sources.list.d/debian.sources").is_file():
        pytest.skip("this host has no /etc/apt/sources.list.d/debian.sources: not a Debian 12 build machine")
    assert aptsources.host_mirror("bookworm").startswith(("http://", "https://"))
