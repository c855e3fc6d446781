"""Time zone and proxy settings the guest inherits from the host; the readiness line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devenv.provision import hostenv
from devenv.provision.readiness import scan_console


def test_timezone_from_etc_timezone(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/timezone").write_text("America/New_York\n")
    assert hostenv.host_timezone(tmp_path) == "America/New_York"


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
@pytest.mark.parametrize(
    ("target", "zone"),
    [
        ("/usr/share/zoneinfo/Europe/Berlin", "Europe/Berlin"),
        ("/var/db/timezone/zoneinfo/Asia/Tokyo", "Asia/Tokyo"),  # macOS
        ("../usr/share/zoneinfo/posix/Etc/UTC", "Etc/UTC"),
        ("/usr/share/zoneinfo/../../../etc/passwd", None),
        ("/etc/some-file", None),
    ],
)
def test_timezone_from_localtime_symlink(tmp_path: Path, target: str, zone: str | None) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/localtime").symlink_to(target)
    assert hostenv.host_timezone(tmp_path) == zone


def test_timezone_unknown(tmp_path: Path) -> None:
    assert hostenv.host_timezone(tmp_path) is None


@pytest.mark.parametrize(
    ("environ", "host_address", "expected"),
    [
        ({}, "10.0.2.2", {}),
        (
            {"http_proxy": "http://127.0.0.1:3128"},
            "10.0.2.2",
            {"HTTP_PROXY": "http://10.0.2.2:3128", "NO_PROXY": "localhost,127.0.0.1,::1"},
        ),
        (
            {"HTTP_PROXY": "http://u:p@localhost:8080/", "http_proxy": "http://ignored", "NO_PROXY": "a,localhost"},
            None,
            {"HTTP_PROXY": "http://u:p@localhost:8080/", "NO_PROXY": "a,localhost,127.0.0.1,::1"},
        ),
        (
            {"HTTPS_PROXY": "http://proxy.corp:3128"},
            "10.0.2.2",
            {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "localhost,127.0.0.1,::1"},
        ),
        ({"NO_PROXY": "x"}, None, {"NO_PROXY": "x"}),
    ],
)
def test_host_proxies(environ: dict[str, str], host_address: str | None, expected: dict[str, str]) -> None:
    assert hostenv.host_proxies(environ, host_address) == expected


@pytest.mark.parametrize(
    ("text", "ready", "failed", "detail"),
    [
        ("", False, False, {}),
        ("[  12.0] systemd[1]: Started ssh.service\r\n", False, False, {}),
        ("boot noise\r\nDEVENV-READY\r\n", True, False, {}),
        ("\x00[  30.1] cloud-init[512]: DEVENV-READY\n", True, False, {}),
        ("DEVENV-READYX\n", False, False, {}),
        (
            "DEVENV-FAILED step=provision:01-system rc=2 log=/var/log/devenv-provision.log\nDEVENV-READY\n",
            False,
            True,
            {"step": "provision:01-system", "rc": "2", "log": "/var/log/devenv-provision.log"},
        ),
    ],
)
def test_scan_console(text: str, ready: bool, failed: bool, detail: dict[str, str]) -> None:
    r = scan_console(text)
    assert (r.ready, r.failed, r.detail) == (ready, failed, detail)


def test_failed_description() -> None:
    r = scan_console("DEVENV-FAILED step=engine-docker rc=1 log=/var/log/devenv-provision.log\n")
    assert r.describe() == (
        "provisioning failed in step `engine-docker` (exit code 1); see /var/log/devenv-provision.log in the guest"
    )
