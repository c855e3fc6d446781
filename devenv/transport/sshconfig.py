"""Render the OpenSSH client config that lets plain `ssh devenv-NAME` reach a guest.

The same trust decisions as devenv.transport.ssh: the guest's host key is pinned
under a per-instance alias (HostKeyAlias) in a per-instance known_hosts file,
StrictHostKeyChecking is on, and only the instance's own key is offered. No
paramiko here: `devenv ssh-config` must stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import UsageError

HOST_PREFIX = "devenv-"


def host_alias(name: str) -> str:
    """The `Host` name (and HostKeyAlias) of an instance: devenv-NAME."""
    return f"{HOST_PREFIX}{name}"


def known_hosts_line(name: str, host_pubkey: str) -> str:
    """A known_hosts line pinning `host_pubkey` ("ssh-ed25519 AAAA... [comment]") to devenv-NAME.

    Keyed by the alias, not 127.0.0.1:PORT, so a port change never invalidates the pin
    and two instances that reuse a port never collide.
    """
    parts = host_pubkey.split()
    if len(parts) < 2:
        raise UsageError(f"not an OpenSSH public key: {host_pubkey[:40]!r}", "expected `ssh-ed25519 AAAA...`")
    return f"{host_alias(name)} {parts[0]} {parts[1]}\n"


def _arg(value: str | os.PathLike[str], *, expands_tokens: bool = True) -> str:
    """Quote one ssh_config argument; `%` is a token escape in path options, so double it."""
    text = os.fspath(value)
    if os.name == "nt":
        text = text.replace("\\", "/")
    if '"' in text or "\n" in text:
        raise UsageError(f"cannot put {text!r} in an ssh config", "use a path without quotes or newlines")
    if expands_tokens:
        text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) or not text else text


@dataclass(frozen=True)
class SSHConfigEntry:
    """Everything one `Host devenv-NAME` block needs."""

    name: str
    port: int
    user: str
    identity_file: Path
    known_hosts_file: Path
    hostname: str = "127.0.0.1"
    proxy_command: str = ""  # OpenSSH's ProxyCommand (%h, %p): how the guest's sshd is reached, e.g. a jump host
    control_path: Path | None = None  # set to share one connection between ssh runs
    control_persist: str = "10m"

    def render(self) -> str:
        alias = host_alias(self.name)
        lines = [
            f"Host {alias}",
            f"  HostName {self.hostname}",
            f"  Port {self.port}",
            f"  User {self.user}",
            f"  IdentityFile {_arg(self.identity_file)}",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  PreferredAuthentications publickey",
            "  PasswordAuthentication no",
            "  BatchMode yes",
            f"  HostKeyAlias {alias}",
            f"  UserKnownHostsFile {_arg(self.known_hosts_file)}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            "  CheckHostIP no",
            "  LogLevel ERROR",
        ]
        if self.proxy_command:
            lines.append(f"  ProxyCommand {self.proxy_command}")
        if self.control_path is not None:
            lines += [
                "  ControlMaster auto",
                f"  ControlPath {_arg(self.control_path)}",
                f"  ControlPersist {self.control_persist}",
            ]
        return "\n".join(lines) + "\n"


def render_ssh_config(entries: list[SSHConfigEntry]) -> str:
    """Blocks for several instances, separated by blank lines (for `Include` or ~/.ssh/config)."""
    return "\n".join(e.render() for e in entries)
