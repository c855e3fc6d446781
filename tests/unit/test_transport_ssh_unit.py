"""Pure parts of devenv.transport.ssh: the remote script, pinned-key parsing, signal names."""

from __future__ import annotations

import subprocess

import pytest

from devenv.errors import UsageError
from devenv.transport.sftpcopy import guest_path as _guest_path
from devenv.transport.ssh import (
    ExecResult,
    _host_key_types,
    _signal_name,
    build_script,
    describe,
    parse_pinned_keys,
)

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def test_script_for_argv_with_env_and_cwd() -> None:
    script = build_script(["echo", "a b", "$x"], env={"K": "it's"}, cwd="/w d")
    assert script == (
        "printf 'devenv-pid:%s\\n' \"$$\" >&2\nexport K='it'\"'\"'s'\ncd -- '/w d' || exit 1\nexec echo 'a b' '$x'"
    )


def test_script_runs_in_a_posix_shell() -> None:
    script = build_script(["printf", "%s|", "$HOME", "a'b"], env={"V": "x y"}, report_pid=False)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    assert out == "$HOME|a'b|"


def test_script_for_a_string_and_for_a_shell() -> None:
    assert build_script("ls | wc -l", report_pid=False) == "ls | wc -l"
    assert build_script(None, cwd="/x", report_pid=False, login_shell=True) == (
        'cd -- /x 2>/dev/null || cd\nexec "${SHELL:-/bin/sh}" -l'
    )
    assert describe(["a", "b c"]) == "a 'b c'"


@pytest.mark.parametrize(("env", "message"), [({"1X": "v"}, "`1X`"), ({"A-B": "v"}, "`A-B`"), ({"": "v"}, "``")])
def test_bad_env_names(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=f"invalid environment variable name {message}"):
        build_script("true", env=env)


def test_empty_argv() -> None:
    with pytest.raises(UsageError, match="no command given"):
        build_script([])


@pytest.mark.parametrize(
    "text",
    [
        ED25519,
        ED25519 + " root@host",
        "devenv-x " + ED25519,
        "[127.0.0.1]:2222 " + ED25519 + " comment",
        "# comment\n\n@revoked * ssh-rsa AAAA\n" + ED25519,
    ],
)
def test_pinned_key_formats(text: str) -> None:
    keys = parse_pinned_keys(text)
    assert len(keys) == 1
    assert keys[0].get_name() == "ssh-ed25519"
    assert _host_key_types(keys) == ("ssh-ed25519",)


@pytest.mark.parametrize("text", ["", "ssh-ed25519", "ssh-ed25519 !!!", "nonsense line here"])
def test_pinned_key_invalid(text: str) -> None:
    with pytest.raises(UsageError, match="not a valid OpenSSH public key"):
        parse_pinned_keys(text)


@pytest.mark.parametrize(("sig", "name"), [(2, "INT"), ("SIGTERM", "TERM"), ("hup", "HUP"), (9, "KILL")])
def test_signal_names(sig: int | str, name: str) -> None:
    assert _signal_name(sig) == name


def test_unknown_signal() -> None:
    with pytest.raises(UsageError, match="unknown signal `WINCHY`"):
        _signal_name("WINCHY")


@pytest.mark.parametrize(("path", "sftp"), [("~", "."), ("~/a", "a"), ("", "."), ("/abs", "/abs"), ("rel", "rel")])
def test_guest_paths(path: str, sftp: str) -> None:
    assert _guest_path(path) == sftp


def test_exec_result_check() -> None:
    assert ExecResult("true", 0, b"", b"").check().ok
    from devenv.errors import CommandFailed

    with pytest.raises(CommandFailed) as err:
        ExecResult("make", 2, b"out\n", b"e1\ne2\n").check("hint")
    assert err.value.message == "`make` failed in the guest with exit code 2\ne1\ne2"
    assert err.value.hint == "hint"
