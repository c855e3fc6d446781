"""What the guest inherits from the host: time zone and proxy settings.

A guest that logs in UTC while the user's shell and files are local is a
constant source of confusion, and a guest behind a corporate proxy cannot pull
images without the proxy. Both are read once, at seed time, from the host.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_ZONE_RE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
GUEST_NO_PROXY = ("localhost", "127.0.0.1", "::1")


def host_timezone(root: Path = Path("/")) -> str | None:
    """The host's IANA zone name from /etc/timezone or the /etc/localtime symlink; None if unknown.

    macOS links /etc/localtime to /var/db/timezone/zoneinfo/ZONE, Linux to
    /usr/share/zoneinfo/ZONE; both end in ".../zoneinfo/ZONE". Windows has
    neither, so the guest keeps UTC there.
    """
    try:
        zone = (root / "etc/timezone").read_text(encoding="utf-8").strip()
        if _valid_zone(zone):
            return zone
    except OSError:
        pass
    try:
        target = os.readlink(root / "etc/localtime")
    except OSError:
        return None
    marker = "zoneinfo/"
    if marker not in target:
        return None
    zone = target.split(marker, 1)[1]
    zone = zone.removeprefix("posix/").removeprefix("right/")
    return zone if _valid_zone(zone) else None


def _valid_zone(zone: str) -> bool:
    return bool(zone) and bool(_ZONE_RE.match(zone)) and ".." not in zone and zone not in ("localtime", "posixrules")


def host_proxies(environ: Mapping[str, str], host_address: str | None = None) -> dict[str, str]:
    """HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the host (upper case wins over lower case).

    A proxy on the host's loopback address is unreachable as 127.0.0.1 from the
    guest; with `host_address` (the address the backend gives the host inside
    the guest, 10.0.2.2 for QEMU user networking) it is rewritten to that.
    NO_PROXY always includes the guest's own loopback names when a proxy is set.
    """
    out: dict[str, str] = {}
    for var in PROXY_VARS:
        value = environ.get(var) or environ.get(var.lower())
        if value:
            out[var] = value.strip()
    for var in ("HTTP_PROXY", "HTTPS_PROXY"):
        if var in out and host_address:
            out[var] = _rewrite_loopback(out[var], host_address)
    if "HTTP_PROXY" in out or "HTTPS_PROXY" in out:
        entries = [e.strip() for e in out.get("NO_PROXY", "").split(",") if e.strip()]
        entries += [e for e in GUEST_NO_PROXY if e not in entries]
        out["NO_PROXY"] = ",".join(entries)
    return out


def _rewrite_loopback(url: str, host_address: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    if host not in _LOOPBACK and not host.startswith("127."):
        return url
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    port = f":{parts.port}" if parts.port else ""
    new_host = f"[{host_address}]" if ":" in host_address else host_address
    del hostport
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{new_host}{port}"))
