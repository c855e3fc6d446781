"""Which Debian mirror does this host's apt use? The offline builder asks.

Build machines often reach only their configured package mirror (a proxy or a
snapshot), so the builder must use exactly that mirror and never a hard-coded
host name. Both formats are read: deb822 `*.sources` files (Debian 12's
default) and one-line `sources.list` entries. Security and updates archives are
skipped: debootstrap needs the main archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devenv.errors import ImageError


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: Path  # the file it was read from, for error messages


def parse_deb822(text: str, origin: Path) -> list[AptSource]:
    """`Types: deb` stanzas of a .sources file (disabled ones, `Enabled: no`, skipped)."""
    sources: list[AptSource] = []
    for stanza in _stanzas(text):
        fields = {k.lower(): v for k, v in stanza.items()}
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").strip().lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            sources.append(AptSource(uri.rstrip("/"), suites, components, origin))
    return sources


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            current[key] += " " + raw.strip()
            continue
        name, sep, value = raw.partition(":")
        if sep:
            key = name.strip()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_one_line(text: str, origin: Path) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines of a sources.list file."""
    sources: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            rest = rest[end + 1 :].strip()
        words = rest.split()
        if len(words) >= 2:
            sources.append(AptSource(words[0].rstrip("/"), (words[1],), tuple(words[2:]), origin))
    return sources


def host_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every `deb` source the host's apt is configured with, in apt's reading order."""
    found: list[AptSource] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        found += parse_one_line(main_list.read_text(errors="replace"), main_list)
    folder = etc_apt / "sources.list.d"
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".sources":
                found += parse_deb822(path.read_text(errors="replace"), path)
            elif path.suffix == ".list":
                found += parse_one_line(path.read_text(errors="replace"), path)
    return found


def _is_main_archive(source: AptSource) -> bool:
    if not source.uri.startswith(("http://", "https://", "file:/")):
        return False  # cdrom:, mirror+file:, tor+http: need apt's own methods
    if "security" in source.uri:
        return False
    return any(not s.endswith(("-security", "-updates", "-backports")) for s in source.suites)


def host_mirror(suite: str, etc_apt: Path = Path("/etc/apt")) -> str:
    """The URI of the host's main Debian archive, preferring one that lists `suite`."""
    sources = [s for s in host_sources(etc_apt) if _is_main_archive(s)]
    for source in sources:
        if suite in source.suites:
            return source.uri
    for source in sources:
        if "debian" in source.uri:
            return source.uri
    raise ImageError(
        f"found no Debian mirror for `{suite}` in {etc_apt}/sources.list or {etc_apt}/sources.list.d/",
        "pass the mirror explicitly, e.g. `devenv image build debian-12 --mirror http://MIRROR/debian`",
    )
