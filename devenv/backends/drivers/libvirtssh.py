"""A libvirt daemon on another host, reached with the user's own OpenSSH, and never a host key taken on trust.

Two things log in to that host: libvirt's ssh transport (virsh's own way:
it runs `ssh` with the user's config, agent and known_hosts) and the proxy
command the guest's SSH goes through (`ssh -W guest:22 host`: the guest
is on the host's NAT network, which only the host reaches). Neither may
prompt, nor accept a host key it has not seen: devenv runs without a
terminal of its own to ask on (the host agent), and a key accepted silently
is the one an impostor would offer. So libvirt's URI gets `no_tty=1`
(libvirt then runs ssh with BatchMode=yes), `no_verify=1` is refused, the
proxy runs with BatchMode=yes and StrictHostKeyChecking=yes, and before
libvirt connects the host's key must already be in the user's known_hosts
(looked up where `ssh -G` says ssh looks: no network, no prompt), else a
devenv error says how to add it after checking it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from devenv.backends.drivers.libvirturi import Location, host_key_fix, locate
from devenv.errors import ConfigError, PermissionProblem

NO_PROMPT = ("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes")


def connect_uri(uri: str) -> str:
    """The URI devenv opens: an ssh transport gets no_tty=1 (BatchMode); no_verify=1 is refused."""
    where = locate(uri)
    if not where.over_ssh:
        return uri
    if where.params.get("no_verify", "0") not in ("", "0"):
        raise ConfigError(
            [f"libvirt_uri {uri}: no_verify=1 turns off the SSH host key check, which devenv never does"],
            "remove no_verify from the URI and add the host's key to known_hosts (ssh to it once)",
        )
    if where.params.get("no_tty") == "1":
        return uri
    parts = urlsplit(uri)
    query = urlencode({**where.params, "no_tty": "1"})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def ssh_options(where: Location) -> list[str]:
    """The port and key of the URI, as ssh takes them (keyfile= is libvirt's own parameter for the key)."""
    opts: list[str] = []
    if where.port:
        opts += ["-p", str(where.port)]
    if where.params.get("keyfile"):
        opts += ["-i", where.params["keyfile"]]
    return opts


def proxy_command(uri: str) -> tuple[str, ...]:
    """The guest's sshd reached through the daemon's host: `ssh -W %h:%p host`, never prompting.

    For a transport that is not SSH (tls, tcp) the host is still logged in to with
    ssh (port 22 or the user's config): its NAT network is reachable from it alone.
    """
    where = locate(uri)
    opts = ssh_options(where) if where.over_ssh else []
    return ("ssh", *NO_PROMPT, *opts, "-W", "%h:%p", where.destination)


def parse_ssh_g(text: str) -> dict[str, list[str]]:
    """`ssh -G`'s effective config: a lowercase keyword, then its value(s) (one keyword can repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a host: bare on port 22, `[host]:port` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_files(config: dict[str, list[str]]) -> list[str]:
    files: list[str] = []
    for key in ("userknownhostsfile", "globalknownhostsfile"):
        for value in config.get(key, []):
            files += value.split()
    return files


Runner = Callable[[Sequence[str]], "str | None"]


def check_host_key(uri: str, runner: Runner | None = None) -> None:
    """Raise PermissionProblem, with the fix, when the SSH host of `uri` is not in a known_hosts ssh reads."""
    where = locate(uri)
    if not where.over_ssh or where.transport != "ssh":  # the libssh transports read known_hosts themselves
        return
    run = runner or _run
    said = run(["ssh", "-G", *ssh_options(where), where.destination])
    if said is None:
        return  # ssh itself could not say: libvirt's own connection then reports what goes wrong
    config = parse_ssh_g(said)
    name = (config.get("hostkeyalias") or config.get("hostname") or [where.host])[0]
    port = int((config.get("port") or ["22"])[0])
    lookup = name if config.get("hostkeyalias") else known_hosts_name(name, port)
    for f in known_hosts_files(config):
        if run(["ssh-keygen", "-F", lookup, "-f", _expand(f)]) is not None:
            return
    raise PermissionProblem(
        f"libvirt ({uri}): the SSH host key of {lookup} is not in your known_hosts, and devenv never accepts one"
        " by itself",
        host_key_fix(where),
    )


def _expand(path: str) -> str:
    """`~` as ssh reads it: the account's home from the password database, not $HOME."""
    if path == "~" or path.startswith("~/"):
        return pwd.getpwuid(os.getuid()).pw_dir + path[1:]
    return path


def _run(argv: Sequence[str]) -> str | None:
    """stdout of a local ssh tool that answers from files alone; None when it fails or is missing."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
