"""Which libvirt daemon an instance uses, and libvirt's errors as devenv's.

The URI comes from devenv.toml's `libvirt_uri`, else $LIBVIRT_DEFAULT_URI
(the variable virsh and virt-manager read, so devenv goes where they go),
else qemu:///system when its socket lets this user in, else qemu:///session.
The system daemon is where virt-manager's VMs live and where a user of the
`libvirt` group expects them; the session daemon is the one every user has
(the client starts it on demand), so it is the fallback that always exists.

libvirt-python is imported inside the functions: `doctor` and config
validation read this module on hosts without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from devenv.errors import BackendUnavailable, CommandFailed, DevenvError, PermissionProblem

if TYPE_CHECKING:
    from devenv.hostos import Probe

SYSTEM = "qemu:///system"
SESSION = "qemu:///session"
URI_ENV = "LIBVIRT_DEFAULT_URI"
# the monolithic daemon's socket, then the modular one's (virtqemud, Fedora's default)
SYSTEM_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")
GROUP_FIX = 'sudo usermod -aG libvirt $USER, then log in again (or set libvirt_uri = "qemu:///session")'
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")  # libvirt's transports that log in to the host with SSH
LOCAL_TRANSPORTS = ("", "unix")


@dataclass(frozen=True)
class Location:
    """Where a libvirt URI's daemon is, in libvirt's own reading of it (remote.html's "Remote URIs").

    `driver+transport://user@host:port/path?params`: no host and a local
    transport (none or unix) is a daemon on this host; anything else goes
    over the network, even to 127.0.0.1, so nothing of this host (files,
    processes, logs) is the daemon's to see.
    """

    driver: str
    transport: str
    user: str
    host: str
    port: int | None
    path: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return bool(self.host) or self.transport not in LOCAL_TRANSPORTS

    @property
    def over_ssh(self) -> bool:
        return self.transport in SSH_TRANSPORTS

    @property
    def destination(self) -> str:
        """`user@host` as ssh takes it (the host alone without a user: the user's ssh config decides)."""
        return f"{self.user}@{self.host}" if self.user else self.host


def locate(uri: str) -> Location:
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    try:
        port = parts.port
    except ValueError:
        port = None
    return Location(
        driver=driver,
        transport=transport,
        user=parts.username or "",
        host=parts.hostname or "",
        port=port,
        path=parts.path,
        params=dict(parse_qsl(parts.query)),
    )


@dataclass(frozen=True)
class UriChoice:
    uri: str
    source: str  # "devenv.toml", URI_ENV or "default"
    why: str  # for doctor: why this URI, and for the default why not the other


def choose(configured: str) -> UriChoice:
    if configured:
        return UriChoice(configured, "devenv.toml", "libvirt_uri in devenv.toml")
    env = os.environ.get(URI_ENV, "").strip()
    if env:
        return UriChoice(env, URI_ENV, f"{URI_ENV} is set")
    problem = system_problem()
    if problem is None:
        return UriChoice(SYSTEM, "default", f"{SYSTEM} answers for this user")
    return UriChoice(SESSION, "default", f"not {SYSTEM}: {problem.detail} (to use it: {problem.fix})")


def system_problem() -> Probe | None:
    """Why qemu:///system does not let this user in, with the fix; None when it does."""
    from devenv.hostos import Probe

    socket = next((s for s in SYSTEM_SOCKETS if os.path.exists(s)), None)
    if socket is None:
        why = f"no system libvirtd runs (no socket at {SYSTEM_SOCKETS[0]})"
        return Probe(False, why, "sudo systemctl start libvirtd")
    if not os.access(socket, os.R_OK | os.W_OK):
        return Probe(False, f"this user may not use its socket {socket} (not in the `libvirt` group)", GROUP_FIX)
    try:
        connect(SYSTEM, "connect").close()
    except DevenvError as e:
        # a world-writable socket that polkit guards: without a polkit agent (or D-Bus) it refuses
        return Probe(False, f"it refused this user: {e.message}", GROUP_FIX)
    return None


def quiet() -> Any:
    """libvirt-python, with its habit of printing every error to stderr turned off (devenv reports them)."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def connect(uri: str, operation: str) -> Any:
    """A libvirt connection, or the devenv error that says why not (daemon down, permission, other)."""
    libvirt = quiet()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise translate(e, uri, operation) from None


def translate(e: Exception, uri: str, operation: str) -> DevenvError:
    """A libvirtError as a devenv error naming the URI and what devenv was doing, with the fix."""
    said = str(e).strip() or type(e).__name__
    text = f"libvirt ({uri}) could not {operation}: {said}"
    low = said.lower()
    ssh = _ssh_failure(low, locate(uri))
    if ssh is not None:
        cls, fix = ssh
        return cls(text, fix)
    if "dnsmasq" in low and ("binary" in low or "find" in low or "no such file" in low):
        return BackendUnavailable(
            text, f"install dnsmasq on {_host(uri)} ({DNSMASQ_FIX}): libvirt's NAT network needs it"
        )
    if "iptables" in low and ("find" in low or "execute" in low or "no such file" in low):
        return BackendUnavailable(text, f"install iptables on {_host(uri)} ({IPTABLES_FIX}): libvirt's NAT needs it")
    if "cannot access storage file" in low:
        return PermissionProblem(
            text, f"QEMU runs as another user there, who cannot open the instance's files: use {SESSION}"
        )
    if "permission denied" in low or "authentication" in low or "polkit" in low or "system bus" in low:
        fix = GROUP_FIX if uri == SYSTEM else "check the permissions of the libvirt socket"
        where = locate(uri)
        if where.remote:
            fix = f"the account {where.destination} may not use libvirt there: add it to the host's `libvirt` group"
        return PermissionProblem(text, fix)
    if "no such file" in low or "connection refused" in low or "failed to connect socket" in low:
        fix = "sudo systemctl start libvirtd (or virtqemud)" if uri == SYSTEM else "is libvirt installed here?"
        if uri == SESSION:
            fix = "the session daemon starts on demand: is /usr/sbin/libvirtd (or virtqemud) installed?"
        return BackendUnavailable(text, fix)
    if "storage pool" in low and "not found" in low:
        return CommandFailed(text, f"define the pool (`virsh -c {uri} pool-define-as ...`) or name another")
    return CommandFailed(text, f"see `virsh -c {uri}` and the domain's log (`devenv logs`)")


DNSMASQ_FIX = "Debian/Ubuntu: apt-get install dnsmasq-base; Fedora: dnf install dnsmasq"
IPTABLES_FIX = "Debian/Ubuntu: apt-get install iptables; Fedora: dnf install iptables-nft"


def _host(uri: str) -> str:
    where = locate(uri)
    return f"the host {where.host}" if where.remote and where.host else "this host"


def _ssh_failure(low: str, where: Location) -> tuple[type[DevenvError], str] | None:
    """What went wrong logging in to a remote daemon's host over SSH, and the fix; None when it was not that.

    libvirt's ssh transport runs the user's OpenSSH and reports its stderr;
    the libssh ones say it in their own words.
    """
    if not where.over_ssh:
        return None
    dest = where.destination
    port = f" -p {where.port}" if where.port else ""
    if "host key verification failed" in low or ("host key" in low and ("unknown" in low or "differs" in low)):
        return PermissionProblem, host_key_fix(where)
    if ("permission denied" in low and ("publickey" in low or "password" in low)) or "authentication failed" in low:
        return PermissionProblem, (
            f"{dest} refused the SSH login: devenv logs in without a prompt, with a key: "
            f"`ssh-copy-id{port} {dest}` (or load the key into ssh-agent), then `ssh{port} {dest} true` must work"
        )
    if "connection refused" in low or "could not resolve hostname" in low or "no route to host" in low:
        return (
            BackendUnavailable,
            f"is sshd running on {where.host}{port.replace(' -p', ' port')}? `ssh{port} {dest} true` must work",
        )
    if "connection timed out" in low or "operation timed out" in low:
        return BackendUnavailable, f"{where.host} did not answer: is it up and reachable from here?"
    return None


def host_key_fix(where: Location) -> str:
    """How to add a host's SSH key after checking it (devenv never adds one by itself)."""
    port = f" -p {where.port}" if where.port else ""
    return (
        f"devenv never accepts an SSH host key by itself: log in once with `ssh{port} {where.destination}` and"
        " compare the fingerprint it shows with the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`"
        f" there), or `ssh-keyscan{port} {where.host} >> ~/.ssh/known_hosts` once you have checked it"
    )
