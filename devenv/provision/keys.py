"""SSH keys of one instance, all made on the host before the first boot.

Two ed25519 pairs live in the instance's ssh/ folder (0700):

* the client key (ssh/id_ed25519, 0600, OpenSSH format) that the host logs in
  with; its public half becomes the guest user's authorized key;
* the guest's host key (ssh/ssh_host_ed25519_key): the first boot installs it in the
  guest (cloud-init's ssh_keys, or devenv-seed.json), so the host knows the key before the guest ever answers and
  can pin it. Nothing is ever accepted on first use.

The pin is written to ssh/known_hosts under the alias `devenv-NAME` rather
than `[127.0.0.1]:PORT`: the forwarded SSH port may change on every start, the
alias does not, so the file is written once and never edited. OpenSSH reads it
with `-o HostKeyAlias=devenv-NAME` (see openssh_options); paramiko callers use
pinned_host_key() and compare the key the server offers.

paramiko cannot generate ed25519 keys, so `cryptography` (a paramiko
dependency) does. Everything is idempotent: keys that exist are kept, because
replacing either key would lock the host out of an existing guest.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from devenv import paths
from devenv.atomicfile import write_atomic
from devenv.errors import StateError
from devenv.transport.sshconfig import host_alias, known_hosts_line

GUEST_USER = "devenv"


@dataclass(frozen=True)
class InstanceKeys:
    """Where the keys of one instance are and their public halves (never the private ones)."""

    client_key: Path  # private, 0600; pass to paramiko / ssh -i
    client_public: str  # "ssh-ed25519 AAAA... devenv@NAME"
    host_key: Path  # private host key that the first boot installs in the guest
    host_public: str  # "ssh-ed25519 AAAA... root@NAME"
    known_hosts: Path
    alias: str  # the name the pin is filed under in known_hosts

    @property
    def host_key_type(self) -> str:
        return self.host_public.split()[0]

    @property
    def host_key_base64(self) -> str:
        return self.host_public.split()[1]

    def host_fingerprint(self) -> str:
        """SHA256:... as `ssh-keygen -l` prints it; safe to log."""
        return fingerprint(self.host_public)


def fingerprint(public_key_line: str) -> str:
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ensure_keys(instance_dir: Path, name: str) -> InstanceKeys:
    """Create whatever key file is missing and return the instance's keys.

    Existing private keys are kept; a missing public file or known_hosts line is
    re-derived from the private key. A private key that cannot be read is an
    error, not something to silently replace.
    """
    paths.ensure_private_dir(instance_dir / paths.SSH_DIR)
    client_public = _ensure_pair(instance_dir / paths.SSH_KEY, instance_dir / paths.SSH_PUBKEY, f"devenv@{name}")
    host_public = _ensure_pair(instance_dir / paths.SSH_HOST_KEY, instance_dir / paths.SSH_HOST_PUBKEY, f"root@{name}")
    alias = host_alias(name)
    known_hosts = instance_dir / paths.SSH_KNOWN_HOSTS
    line = known_hosts_line(name, host_public)
    current = known_hosts.read_text(encoding="utf-8") if known_hosts.exists() else None
    if current != line:
        write_atomic(known_hosts, line.encode(), 0o600)
    return InstanceKeys(
        client_key=instance_dir / paths.SSH_KEY,
        client_public=client_public,
        host_key=instance_dir / paths.SSH_HOST_KEY,
        host_public=host_public,
        known_hosts=known_hosts,
        alias=alias,
    )


def load_keys(instance_dir: Path, name: str) -> InstanceKeys:
    """The keys of an instance that must already have them (never creates anything)."""
    try:
        client_public = _public_line(instance_dir / paths.SSH_KEY, "")
        host_public = _public_line(instance_dir / paths.SSH_HOST_KEY, "")
    except FileNotFoundError as e:
        raise StateError(
            f"instance `{name}` has no SSH key {e.filename}",
            f"delete the instance and create it again: devenv delete -n {name} && devenv start -n {name}",
        ) from None
    return InstanceKeys(
        client_key=instance_dir / paths.SSH_KEY,
        client_public=client_public,
        host_key=instance_dir / paths.SSH_HOST_KEY,
        host_public=host_public,
        known_hosts=instance_dir / paths.SSH_KNOWN_HOSTS,
        alias=host_alias(name),
    )


def pinned_host_key(instance_dir: Path, name: str) -> tuple[str, str]:
    """(key type, base64 blob) the guest must present; compare with paramiko's
    `transport.get_remote_server_key().get_name()` / `.get_base64()`."""
    keys = load_keys(instance_dir, name)
    return keys.host_key_type, keys.host_key_base64


def _ensure_pair(private_path: Path, public_path: Path, comment: str) -> str:
    if not private_path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        write_atomic(private_path, pem, 0o600)
    elif os.name == "posix" and private_path.stat().st_mode & 0o077:
        os.chmod(private_path, 0o600)  # ssh refuses keys others can read
    public = _public_line(private_path, comment)
    existing = public_path.read_text(encoding="utf-8").strip() if public_path.exists() else None
    if existing is None or existing.split()[:2] != public.split()[:2]:
        write_atomic(public_path, (public + "\n").encode(), 0o644)
    elif existing != public:
        public = existing  # same key, keep the comment the file already has
    return public


def _public_line(private_path: Path, comment: str) -> str:
    """The OpenSSH public line of a private key file, checked to be an unencrypted ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = private_path.read_bytes()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise StateError(
            f"{private_path} is not a readable OpenSSH private key ({e})",
            "restore the file from a backup, or delete the instance and create it again",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StateError(f"{private_path} is not an ed25519 key", "delete the instance and create it again")
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = blob.decode()
    if not comment:
        public_file = private_path.with_name(private_path.name + ".pub")
        if public_file.exists():
            parts = public_file.read_text(encoding="utf-8").split()
            if parts[:2] == line.split()[:2] and len(parts) > 2:
                return " ".join(parts)
        return line
    return f"{line} {comment}"
