"""Downloads against a real local HTTP server: verify, reject corruption, resume, proxies.

The server (http.server in a thread) serves Range requests and can cut the
connection half-way through a response, like a flaky mirror.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devenv.errors import ImageError
from devenv.images import cache, definitions, download
from devenv.images.checksums import Digest
from devenv.images.download import NetworkUnreachable

PAYLOAD = bytes(range(256)) * 4096 * 3  # 3 MiB, several read chunks
ETAG = '"v1"'


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_next: int = 0  # cut this many upcoming file responses half-way
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (request target, Range header)


class Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.state
        state.requests.append((self.path, self.headers.get("Range")))
        path = self.path.split("://", 1)[1].split("/", 1)[1] if "://" in self.path else self.path.lstrip("/")
        body = state.files.get("/" + path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted and state.honour_range and self.headers.get("If-Range", ETAG) == ETAG:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", ETAG)
        self.end_headers()
        rest = body[start:]
        if state.cut_next > 0:
            state.cut_next -= 1
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(rest)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SHA256 = Digest("sha256", hashlib.sha256(PAYLOAD).hexdigest())
SHA512 = Digest("sha512", hashlib.sha512(PAYLOAD).hexdigest())


def test_download_verifies_and_reports_progress(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "img.qcow2"
    hashes = download.download(f"{url}/img.qcow2", dest, expected=SHA512, progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == PAYLOAD
    assert hashes == {"sha256": SHA256.hex, "sha512": SHA512.hex}
    assert seen[0] == (0, len(PAYLOAD))
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not (tmp_path / "img.qcow2.part").exists()


def test_corrupted_download_is_rejected_and_deleted(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD[:-1] + b"X"
    dest = tmp_path / "img.qcow2"
    with pytest.raises(ImageError) as info:
        download.download(f"{url}/img.qcow2", dest, expected=SHA256)
    assert info.value.message.startswith(f"checksum mismatch for {url}/img.qcow2: expected {SHA256}, got sha256:")
    assert info.value.message.endswith("the download was deleted")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    state.cut_next = 1
    dest = tmp_path / "img.qcow2"
    download.download(f"{url}/img.qcow2", dest, expected=SHA256, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert len(state.requests) == 2
    assert state.requests[0] == ("/img.qcow2", None)
    path, wanted = state.requests[1]
    half = len(PAYLOAD) // 2
    assert (path, wanted) == ("/img.qcow2", f"bytes={half}-")


def test_interrupted_download_is_kept_and_resumed_by_the_next_call(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    state.cut_next = 1
    dest = tmp_path / "img.qcow2"
    with pytest.raises(ImageError) as info:
        download.download(f"{url}/img.qcow2", dest, expected=SHA256, retries=0)
    half = len(PAYLOAD) // 2
    assert f"{half} bytes kept in" in info.value.message
    assert info.value.hint == "run the same command again: it resumes where it stopped"
    assert (tmp_path / "img.qcow2.part").stat().st_size == half
    assert not dest.exists()
    download.download(f"{url}/img.qcow2", dest, expected=SHA256)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests[-1] == ("/img.qcow2", f"bytes={half}-")


def test_server_ignoring_range_starts_over(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    state.honour_range = False
    state.cut_next = 1
    dest = tmp_path / "img.qcow2"
    download.download(f"{url}/img.qcow2", dest, expected=SHA256, backoff=0)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_fetched_again_after_416(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    (tmp_path / "img.qcow2.part").write_bytes(PAYLOAD + b"extra")
    download.download(f"{url}/img.qcow2", tmp_path / "img.qcow2", expected=SHA256)
    assert (tmp_path / "img.qcow2").read_bytes() == PAYLOAD


def test_http_error_names_the_status(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(ImageError, match=r"download of .*/missing.qcow2 failed: HTTP 404 Not Found"):
        download.download(f"{url}/missing.qcow2", tmp_path / "x", expected=SHA256)


def test_unreachable_host(tmp_path: Path) -> None:
    port = closed_port()
    with pytest.raises(NetworkUnreachable, match=r"cannot reach 127.0.0.1: .*Connection refused"):
        download.download(f"http://127.0.0.1:{port}/x.qcow2", tmp_path / "x", expected=SHA256)


def test_http_proxy_from_the_environment_is_used(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    monkeypatch.setenv("http_proxy", url)
    download.download("http://images.invalid/img.qcow2", tmp_path / "img.qcow2", expected=SHA256)
    assert state.requests == [("http://images.invalid/img.qcow2", None)]


def test_no_proxy_bypasses_the_proxy(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = server
    state.files["/img.qcow2"] = PAYLOAD
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    download.download(f"{url}/img.qcow2", tmp_path / "img.qcow2", expected=SHA256)
    assert state.requests == [("/img.qcow2", None)]


def test_unreachable_proxy_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("http_proxy", proxy)
    with pytest.raises(NetworkUnreachable, match=f"cannot reach images.invalid through proxy {proxy}"):
        download.download("http://images.invalid/x.qcow2", tmp_path / "x", expected=SHA256)


def _definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: str, builder: bool = False) -> None:
    folder = tmp_path / "vmimages"
    folder.mkdir()
    build = '\nbuilder = "debian"\n[build]\nsuite = "bookworm"\npackages = []\ncmdline = ""\n' if builder else ""
    (folder / "tiny-1.toml").write_text(
        f'name = "tiny-1"{build}\n[arch.x86_64]\nurl = "{base}/tiny-1-amd64.qcow2"\nchecksum_url = "{base}/SHA256SUMS"\n'
        f'[arch.aarch64]\nurl = "{base}/tiny-1-arm64.qcow2"\nchecksum_url = "{base}/SHA256SUMS"\n'
    )
    monkeypatch.setattr(definitions, "definitions_dir", lambda: folder)


def test_pull_checks_the_published_checksum_file_and_caches_by_content(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = server
    _definitions(tmp_path, monkeypatch, url)
    state.files["/tiny-1-amd64.qcow2"] = PAYLOAD
    state.files["/SHA256SUMS"] = f"{'0' * 64}  other.qcow2\n{SHA256.hex} *tiny-1-amd64.qcow2\n".encode()
    record = download.pull("tiny-1", "x86_64")
    assert record.source == "pulled"
    assert record.disk == cache.blob_path(SHA256.hex, ".qcow2")
    assert record.digest == str(SHA256)
    assert record.size == len(PAYLOAD)
    assert record.origin == f"{url}/tiny-1-amd64.qcow2"
    assert cache.read_record("tiny-1", "x86_64") == record
    count = len(state.requests)
    assert download.pull("tiny-1", "x86_64") == record
    assert len(state.requests) == count, "a cached image needs no network"
    assert list(cache.tmp_dir().iterdir()) == []


def test_pull_rejects_an_image_that_does_not_match_its_checksum_file(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = server
    _definitions(tmp_path, monkeypatch, url)
    state.files["/tiny-1-amd64.qcow2"] = PAYLOAD
    state.files["/SHA256SUMS"] = f"{'0' * 64}  tiny-1-amd64.qcow2\n".encode()
    with pytest.raises(ImageError, match="checksum mismatch"):
        download.pull("tiny-1", "x86_64")
    assert cache.read_record("tiny-1", "x86_64") is None
    assert not cache.blobs_dir().exists() or list(cache.blobs_dir().iterdir()) == []
    assert list(cache.tmp_dir().iterdir()) == []


def test_pull_offline_hint_names_the_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _definitions(tmp_path, monkeypatch, f"http://127.0.0.1:{closed_port()}", builder=True)
    with pytest.raises(NetworkUnreachable) as info:
        download.pull("tiny-1", "x86_64")
    assert "`devenv image build tiny-1`" in info.value.hint
    assert info.value.exit_code == 73
