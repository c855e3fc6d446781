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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devenv.errors import BackendUnavailable, CommandFailed, DevenvError, PermissionProblem

if TYPE_CHECKING:
    from devenv.hostos import Probe

SYSTEM = "qemu:///system"
SESSION = "qemu:///session"
URI_ENV = "LIBVIRT_DEFAULT_URI"
# the monolithic daemon's socket, then the modular one's (virtqemud, Fedora's default)
SYSTEM_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")
GROUP_FIX = 'sudo usermod -aG libvirt $USER, then log in again (or set libvirt_uri = "qemu:///session")'


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
    if "cannot access storage file" in low:
        return PermissionProblem(
            text, f"QEMU runs as another user there, who cannot open the instance's files: use {SESSION}"
        )
    if "permission denied" in low or "authentication" in low or "polkit" in low or "system bus" in low:
        return PermissionProblem(text, GROUP_FIX if uri == SYSTEM else "check the permissions of the libvirt socket")
    if "no such file" in low or "connection refused" in low or "failed to connect socket" in low:
        fix = "sudo systemctl start libvirtd (or virtqemud)" if uri == SYSTEM else "is libvirt installed here?"
        if uri == SESSION:
            fix = "the session daemon starts on demand: is /usr/sbin/libvirtd (or virtqemud) installed?"
        return BackendUnavailable(text, fix)
    if "storage pool" in low and "not found" in low:
        return CommandFailed(text, f"define the pool (`virsh -c {uri} pool-define-as ...`) or name another")
    return CommandFailed(text, f"see `virsh -c {uri}` and the domain's log (`devenv logs`)")
