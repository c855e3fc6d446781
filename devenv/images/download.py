"""Download official cloud images: resumable, proxy-aware, verified before use.

Why stdlib urllib: no extra dependency, and its default opener already honours
HTTP_PROXY / HTTPS_PROXY / NO_PROXY (ProxyHandler reads the environment when the
opener is built; NO_PROXY is checked per request). We build a fresh opener per
download rather than using urlopen()'s global one, which freezes the proxy
settings of the first call in the process.

A download goes to `<dest>.part`. After a dropped connection the next request
asks for the rest with `Range: bytes=<have>-` (and `If-Range` with the ETag or
Last-Modified seen first, so a file that changed on the server starts over
instead of being spliced). The file is hashed and compared with the expected
digest before it is renamed to `<dest>`; a mismatch deletes it. Nothing that
failed verification is ever left where the image cache would find it.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from devenv import hostdisk
from devenv.errors import ImageError
from devenv.images import cache, checksums, definitions
from devenv.images.cache import ImageRecord
from devenv.images.checksums import Digest

ProgressFn = Callable[[int, int | None], None]

CHUNK = 256 * 1024
MAX_TEXT = 8 * 1024 * 1024
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETDOWN}


class NetworkUnreachable(ImageError):
    """The server (or proxy) cannot be reached at all: offline, DNS, firewall."""


class _Interrupted(Exception):
    """The transfer stopped part-way; the .part file is kept for a resume."""


class _Restart(Exception):
    """The partial file cannot be continued (server ignored Range or file changed)."""


class _NoRoom(Exception):
    """The host's disk cannot hold the file: `needed` bytes (the whole file, or what was written when it ran out)."""

    def __init__(self, needed: int, known: bool) -> None:
        super().__init__(needed)
        self.needed = needed
        self.known = known


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener()


def _user_agent() -> str:
    from devenv import __version__

    return f"devenv/{__version__}"


def _proxy_note(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return ""
    return f" through proxy {proxy}"


def _unreachable(url: str, reason: object) -> NetworkUnreachable:
    host = urllib.parse.urlsplit(url).hostname or url
    return NetworkUnreachable(
        f"cannot reach {host}{_proxy_note(url)}: {reason}",
        "check the network and the HTTPS_PROXY / NO_PROXY settings",
    )


def _is_unreachable(reason: object) -> bool:
    if isinstance(reason, socket.gaierror | ConnectionRefusedError):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS


def _open(url: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent(), **headers})
    try:
        response: http.client.HTTPResponse = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        if _is_unreachable(exc.reason):
            raise _unreachable(url, exc.reason) from None
        raise _Interrupted(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:
        if _is_unreachable(exc):
            raise _unreachable(url, exc) from None
        raise _Interrupted(str(exc) or type(exc).__name__) from None
    return response


def fetch_text(url: str, timeout: float = 30.0) -> str:
    """A small text file (a checksum list), read into memory."""
    for attempt in range(3):
        try:
            with _open(url, {}, timeout) as response:
                return response.read(MAX_TEXT).decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            raise ImageError(f"fetching {url} failed: HTTP {exc.code} {exc.reason}", _stale_hint()) from None
        except (_Interrupted, OSError, http.client.HTTPException) as exc:
            if attempt == 2:
                raise _unreachable(url, exc) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _stale_hint() -> str:
    return "the image definition in vmimages/ may be out of date; check the URL in a browser"


def download(
    url: str,
    dest: Path,
    *,
    expected: Digest | None = None,
    progress: ProgressFn | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.5,
) -> dict[str, str]:
    """Fetch `url` to `dest`, resuming `<dest>.part`, and verify it against `expected`.

    Returns the hex digests of the file by algorithm (always sha256, plus the
    expected digest's algorithm). `progress(done_bytes, total_bytes_or_None)` is
    called as bytes arrive. Raises ImageError on a checksum mismatch (after
    deleting the file), NetworkUnreachable when the host cannot be reached, and
    ImageError when the transfer keeps breaking (the .part file is kept, so the
    same call later resumes).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        try:
            _transfer(url, part, progress, timeout)
            break
        except _Restart:
            _discard(part)
        except _NoRoom as exc:
            # a part kept for a resume would hold the very space the user must free, and a file with no
            # room to finish is not resumed soon: it goes, and the error says what the whole one needs
            _discard(part)
            raise hostdisk.full(part, exc.needed, f"downloading {url}", more_than=not exc.known) from None
        except _Interrupted as exc:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries:
                if have == 0:
                    raise _unreachable(url, exc) from None
                raise ImageError(
                    f"download of {url} was interrupted {failures} times ({exc}); {have} bytes kept in {part}",
                    "run the same command again: it resumes where it stopped",
                ) from None
            time.sleep(backoff * failures)
    algos = {"sha256"} | ({expected.algo} if expected else set())
    hashes = checksums.hash_file(part, sorted(algos))
    if expected is not None and hashes[expected.algo] != expected.hex:
        _discard(part)
        raise ImageError(
            f"checksum mismatch for {url}: expected {expected}, got {expected.algo}:{hashes[expected.algo]}; "
            "the download was deleted",
            "run the command again; if it fails the same way, the mirror or the image definition is wrong",
        )
    _validator_path(part).unlink(missing_ok=True)
    part.replace(dest)
    return hashes


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def _transfer(url: str, part: Path, progress: ProgressFn | None, timeout: float) -> None:
    """One HTTP request: continue `part` from its current size, or start it over."""
    offset = part.stat().st_size if part.exists() else 0
    headers: dict[str, str] = {}
    validator_file = _validator_path(part)
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = validator_file.read_text().strip() if validator_file.exists() else ""
        if validator:
            headers["If-Range"] = validator
    try:
        response = _open(url, headers, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            raise _Restart() from None
        if exc.code >= 500 or exc.code == 408:
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from None
        raise ImageError(f"download of {url} failed: HTTP {exc.code} {exc.reason}", _stale_hint()) from None
    with response:
        status = response.status or 200
        total: int | None
        if offset and status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match[1]) != offset:
                raise _Restart()
            total = None if match[3] == "*" else int(match[3])
            mode = "ab"
        elif status == 200:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            offset, mode = 0, "wb"
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
            try:
                validator_file.write_text(validator)
            except OSError as exc:
                if not hostdisk.is_full(exc):
                    raise
                raise _NoRoom(total or 0, total is not None) from None
        else:
            raise ImageError(f"download of {url} failed: unexpected HTTP {status}", _stale_hint())
        done = offset
        if total is not None and hostdisk.free_bytes(part) < total - offset:
            raise _NoRoom(total, True)  # said before a byte is written
        if progress:
            progress(done, total)
        try:
            with part.open(mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Interrupted(f"connection lost after {done} bytes: {type(exc).__name__}") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except OSError as exc:  # the write, or the flush as the file closes
            if not hostdisk.is_full(exc):
                raise
            raise _NoRoom(total if total is not None else done, total is not None) from None
        if total is not None and done < total:
            raise _Interrupted(f"connection closed after {done} of {total} bytes")


def _fetch_artifact(artifact: definitions.Artifact, suffix: str, progress: ProgressFn | None) -> tuple[Path, str]:
    """Download and verify one file into the blob store; (path, sha256 hex)."""
    if artifact.digest is not None:
        expected = artifact.digest
    else:
        expected = checksums.lookup(fetch_text(artifact.checksum_url), artifact.filename, artifact.checksum_url)
    if expected.algo == "sha256" and cache.blob_path(expected.hex, suffix).is_file():
        return cache.blob_path(expected.hex, suffix), expected.hex
    key = hashlib.sha256(artifact.url.encode()).hexdigest()[:16]
    staging = cache.tmp_dir() / f"dl-{key}{suffix}"
    hashes = download(artifact.url, staging, expected=expected, progress=progress)
    blob = cache.blob_path(hashes["sha256"], suffix)
    blob.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(blob)
    return blob, hashes["sha256"]


def pull(
    name: str,
    arch: str | None = None,
    *,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> ImageRecord:
    """Download image `name` for `arch` (default: the host's), verify it, record it in the cache.

    Returns the cached record without network access when this image was pulled
    before, unless `force`. When the network is unreachable, the error's hint
    names `devenv image build NAME`.
    """
    arch = definitions.normalize_arch(arch)
    definition = definitions.load(name)
    source = definition.source(arch)
    if not force:
        existing = cache.read_record(name, arch)
        if existing is not None and existing.source == "pulled":
            return existing
    try:
        disk, disk_sha = _fetch_artifact(source.disk, ".qcow2", progress)
        kernel = _fetch_artifact(source.kernel, ".vmlinuz", progress)[0] if source.kernel else None
        initrd = _fetch_artifact(source.initrd, ".initrd", progress)[0] if source.initrd else None
    except NetworkUnreachable as exc:
        exc.hint = offline_hint(definition)
        raise
    record = ImageRecord(
        name=name,
        arch=arch,
        source="pulled",
        disk=disk,
        size=disk.stat().st_size,
        digest=f"sha256:{disk_sha}",
        kernel=kernel,
        initrd=initrd,
        cmdline=source.cmdline,
        origin=source.disk.url,
        created=cache.now(),
    )
    with hostdisk.translated(cache.record_path(name, arch), None, f"the cache's record of {name}"):
        cache.write_record(record)
    return record


def offline_hint(definition: definitions.ImageDefinition) -> str:
    if definition.builder:
        return (
            f"offline? build the image locally instead: `devenv image build {definition.name}` "
            "(Linux, root); or set HTTPS_PROXY"
        )
    return f"connect to the network or set HTTPS_PROXY; `{definition.name}` has no offline builder (try debian-12)"
