"""A containerd instance, end to end: its own CLI runs a container in the guest; docker-env says there is no API.

Its own instance (runtime = "containerd") for the module, deleted at its end.
Debian 12 packages no nerdctl, so the CLI the guest has is containerd's `ctr`.
It is started behind a host proxy whose URL holds a password (nothing here
pulls, so the proxy need not exist): the guest gets it, rewritten to reach
the host, and only the guest user and root can read it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Devenv
from tests.e2e.drivers import DriverCase, guest_side_only

PROXY_SECRET = "pr0xy-s3cret"
HOST_PROXY = f"http://proxyuser:{PROXY_SECRET}@127.0.0.1:3128"  # on the host's loopback: rewritten for the guest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the e2e VM runs on the Linux CI hosts"),
    guest_side_only,
]


@pytest.fixture(scope="module")
def machine(
    devenv_cli: Devenv, driver: DriverCase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Devenv, str]]:
    root = tmp_path_factory.mktemp("e2e-containerd")
    name = f"{driver.instance}-ctd"
    (root / "devenv.toml").write_text(f'name = "{name}"\nbackend = "{driver.backend}"\nruntime = "containerd"\n')
    env = {**devenv_cli.env, **driver.environment(), "HTTP_PROXY": HOST_PROXY, "NO_PROXY": "example.internal"}
    for var in ("http_proxy", "HTTPS_PROXY", "https_proxy", "no_proxy"):
        env.pop(var, None)
    d = Devenv(devenv_cli.home, env, root)
    started = d.ok("start", timeout=1200)
    assert b"docker context" not in started.stderr  # no Docker API: no context either
    yield d, name
    d.run("delete", "--force", "-n", name, timeout=300)


def test_ctr_runs_the_local_image_in_the_guest(machine: tuple[Devenv, str]) -> None:
    d, name = machine
    images = d.ok("exec", "-n", name, "--", "ctr", "images", "ls", "-q").stdout.decode().split()
    assert "docker.io/devenv/busybox:latest" in images, images  # the user may list them: group containerd
    ran = d.run(
        "exec", "-n", name, "--", "sudo", "ctr", "run", "--rm", "docker.io/devenv/busybox:latest", "e2e-hi",
        "sh", "-c", "echo hi from containerd; exit 3",
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (3, b"hi from containerd\n"), ran.stderr


def test_docker_env_says_plainly_there_is_no_docker_api(machine: tuple[Devenv, str]) -> None:
    d, name = machine
    r = d.run("docker-env", "-n", name)
    assert r.returncode == 71 and r.stdout == b"", r
    said = r.stderr.decode()
    assert "containerd has no Docker API for a docker CLI" in said, said
    assert f"devenv exec -n {name} -- ctr run --rm IMAGE ID CMD" in said, said


def _guest(d: Devenv, name: str, script: str) -> str:
    return d.ok("exec", "-n", name, "--", "sh", "-c", script).stdout.decode()


def test_the_images_docker_is_off_and_containerd_is_as_its_package_made_it(machine: tuple[Devenv, str]) -> None:
    """The image boots with docker configured and starting; a containerd instance's first boot undoes that."""
    d, name = machine
    script = (
        "systemctl is-enabled docker.service docker.socket devenv-docker-nat.service; "
        "systemctl is-active docker.service docker.socket containerd.service; "
        "systemctl show --value -p Type containerd.service; "
        "grep -c '^disabled_plugins' /etc/containerd/config.toml; "
        "test -e /etc/devenv/engine-configured && echo docker-record-left; true"
    )
    assert _guest(d, name, script).split() == [
        "disabled", "disabled", "disabled", "inactive", "inactive", "active", "notify", "0",
    ]  # fmt: skip


def test_the_host_proxy_reaches_the_guest_readable_by_its_user_alone(machine: tuple[Devenv, str]) -> None:
    d, name = machine
    lines = dict(
        line.split("=", 1) for line in _guest(d, name, "cat /etc/environment").splitlines() if "proxy=" in line.lower()
    )
    url = lines["HTTP_PROXY"].strip('"')
    host = url.removeprefix(f"http://proxyuser:{PROXY_SECRET}@").removesuffix(":3128")
    assert url == f"http://proxyuser:{PROXY_SECRET}@{host}:3128" and host not in ("", "127.0.0.1"), url
    assert lines["NO_PROXY"] == '"example.internal,localhost,127.0.0.1,::1"', lines
    assert lines["http_proxy"] == lines["HTTP_PROXY"], lines
    # what the user's commands see, through the guest agent (its unit reads /etc/environment)
    assert _guest(d, name, 'echo "$HTTP_PROXY|$NO_PROXY"') == f"{url}|example.internal,localhost,127.0.0.1,::1\n"
    apt = _guest(d, name, "cat /etc/apt/apt.conf.d/90devenv-proxy")
    assert apt == f'Acquire::http::Proxy "{url}";\n', apt
    user = _guest(d, name, "id -un").strip()
    dropin = "/etc/systemd/system/containerd.service.d/10-devenv-proxy.conf"
    modes = _guest(d, name, f"sudo stat -c '%n %a %U %G' /etc/environment /etc/apt/apt.conf.d/90devenv-proxy {dropin}")
    assert modes.splitlines() == [
        f"/etc/environment 640 root {user}",
        f"/etc/apt/apt.conf.d/90devenv-proxy 640 root {user}",
        f"{dropin} 600 root root",
    ], modes
    engine_env = _guest(d, name, "systemctl show containerd -p Environment")
    assert f"HTTP_PROXY={url}" in engine_env, engine_env
    # in the running containerd too: it started from the image's boot and was restarted for the drop-in
    running = _guest(d, name, "sudo cat /proc/$(systemctl show --value -p MainPID containerd)/environ | tr '\\0' '\\n'")
    assert f"HTTP_PROXY={url}" in running.splitlines(), running
    # any other account in the guest is refused
    other = d.run(
        "exec",
        "-n",
        name,
        "--",
        "sudo",
        "-u",
        "nobody",
        "cat",
        "/etc/environment",
        "/etc/apt/apt.conf.d/90devenv-proxy",
    )
    assert other.returncode != 0 and PROXY_SECRET.encode() not in other.stdout, other
    assert other.stderr.decode().count("Permission denied") == 2, other.stderr


def test_the_proxy_password_is_in_no_log_on_the_host(machine: tuple[Devenv, str]) -> None:
    d, name = machine
    d.ok("status", "-n", name)  # a status and its events, written since the start
    logs = [p for p in (d.home / "instances" / name).rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl")]
    assert logs, "the instance has no logs to look at"
    leaked = [str(p) for p in logs if PROXY_SECRET.encode() in Path(p).read_bytes()]
    assert leaked == [], leaked
    for args in (("status", "--json", "-n", name), ("list", "--json")):
        assert PROXY_SECRET.encode() not in d.ok(*args).stdout, args
