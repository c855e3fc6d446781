"""ssh-config rendering and the import budget of the paramiko-free transport helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devenv.errors import UsageError
from devenv.transport.sshconfig import SSHConfigEntry, host_alias, known_hosts_line, render_ssh_config


def test_render_without_control_master() -> None:
    entry = SSHConfigEntry(
        name="dev",
        port=2222,
        user="devenv",
        identity_file=Path("/home/u/.local/share/devenv/instances/dev/ssh/id_ed25519"),
        known_hosts_file=Path("/home/u/.local/share/devenv/instances/dev/ssh/known_hosts"),
    )
    assert entry.render() == (
        "Host devenv-dev\n"
        "  HostName 127.0.0.1\n"
        "  Port 2222\n"
        "  User devenv\n"
        "  IdentityFile /home/u/.local/share/devenv/instances/dev/ssh/id_ed25519\n"
        "  IdentitiesOnly yes\n"
        "  IdentityAgent none\n"
        "  PreferredAuthentications publickey\n"
        "  PasswordAuthentication no\n"
        "  BatchMode yes\n"
        "  HostKeyAlias devenv-dev\n"
        "  UserKnownHostsFile /home/u/.local/share/devenv/instances/dev/ssh/known_hosts\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  UpdateHostKeys no\n"
        "  CheckHostIP no\n"
        "  LogLevel ERROR\n"
    )


def test_render_quotes_spaces_escapes_percent_and_adds_control_master() -> None:
    entry = SSHConfigEntry(
        name="dev",
        port=2222,
        user="devenv",
        identity_file=Path("/Users/Jane Doe/100%/id"),
        known_hosts_file=Path("/k"),
        control_path=Path("/tmp/ctl"),
        control_persist="5m",
    )
    text = entry.render()
    assert '  IdentityFile "/Users/Jane Doe/100%%/id"\n' in text
    assert text.endswith("  ControlMaster auto\n  ControlPath /tmp/ctl\n  ControlPersist 5m\n")


def test_render_refuses_quotes() -> None:
    entry = SSHConfigEntry("dev", 1, "u", Path('/a"b'), Path("/k"))
    with pytest.raises(UsageError, match="cannot put"):
        entry.render()


def test_several_entries_and_alias() -> None:
    a = SSHConfigEntry("a", 1, "u", Path("/i"), Path("/k"))
    b = SSHConfigEntry("b", 2, "u", Path("/i"), Path("/k"))
    assert render_ssh_config([a, b]) == a.render() + "\n" + b.render()
    assert host_alias("a") == "devenv-a"


def test_known_hosts_line() -> None:
    assert known_hosts_line("dev", "ssh-ed25519 AAAAC3Nz host@comment\n") == "devenv-dev ssh-ed25519 AAAAC3Nz\n"
    with pytest.raises(UsageError, match="not an OpenSSH public key"):
        known_hosts_line("dev", "garbage")


def test_cli_helpers_do_not_import_paramiko() -> None:
    code = (
        "import sys, devenv.transport, devenv.transport.cpspec, devenv.transport.sshconfig;"
        "bad = [m for m in ('paramiko', 'cryptography', 'typer', 'devenv.config') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
