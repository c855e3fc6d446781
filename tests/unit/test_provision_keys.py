"""Per-instance SSH keys: made once on the host, private files 0600, pinned host key."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from devenv import paths
from devenv.errors import StateError
from devenv.provision import keys

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@posix_only
def test_files_and_modes(tmp_path: Path) -> None:
    k = keys.ensure_keys(tmp_path, "demo")
    assert mode(tmp_path / paths.SSH_DIR) == 0o700
    assert mode(tmp_path / paths.SSH_KEY) == 0o600
    assert mode(tmp_path / paths.SSH_HOST_KEY) == 0o600
    assert mode(tmp_path / paths.SSH_KNOWN_HOSTS) == 0o600
    assert mode(tmp_path / paths.SSH_PUBKEY) == 0o644
    assert (tmp_path / paths.SSH_KEY).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert (tmp_path / paths.SSH_HOST_KEY).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert k.client_public.startswith("ssh-ed25519 ") and k.client_public.endswith(" devenv@demo")
    assert k.host_public.startswith("ssh-ed25519 ") and k.host_public.endswith(" root@demo")
    assert (tmp_path / paths.SSH_PUBKEY).read_text() == k.client_public + "\n"
    assert k.client_public.split()[1] != k.host_public.split()[1]


def test_known_hosts_pins_the_host_key_under_the_alias(tmp_path: Path) -> None:
    k = keys.ensure_keys(tmp_path, "demo")
    assert k.alias == "devenv-demo"
    line = (tmp_path / paths.SSH_KNOWN_HOSTS).read_text()
    assert line == f"devenv-demo ssh-ed25519 {k.host_key_base64}\n"
    assert keys.pinned_host_key(tmp_path, "demo") == ("ssh-ed25519", k.host_key_base64)
    assert k.host_fingerprint().startswith("SHA256:") and len(k.host_fingerprint()) == 50


def test_idempotent_keeps_existing_keys(tmp_path: Path) -> None:
    first = keys.ensure_keys(tmp_path, "demo")
    private = (tmp_path / paths.SSH_KEY).read_bytes()
    host_private = (tmp_path / paths.SSH_HOST_KEY).read_bytes()
    second = keys.ensure_keys(tmp_path, "demo")
    assert second == first
    assert (tmp_path / paths.SSH_KEY).read_bytes() == private
    assert (tmp_path / paths.SSH_HOST_KEY).read_bytes() == host_private


def test_missing_public_files_and_pin_are_rederived(tmp_path: Path) -> None:
    first = keys.ensure_keys(tmp_path, "demo")
    (tmp_path / paths.SSH_PUBKEY).unlink()
    (tmp_path / paths.SSH_HOST_PUBKEY).unlink()
    (tmp_path / paths.SSH_KNOWN_HOSTS).write_text("devenv-demo ssh-ed25519 AAAAwrong\n")
    again = keys.ensure_keys(tmp_path, "demo")
    assert again.client_public == first.client_public
    assert again.host_public == first.host_public
    assert (tmp_path / paths.SSH_KNOWN_HOSTS).read_text() == f"devenv-demo ssh-ed25519 {first.host_key_base64}\n"


@posix_only
def test_loose_mode_on_existing_private_key_is_tightened(tmp_path: Path) -> None:
    keys.ensure_keys(tmp_path, "demo")
    os.chmod(tmp_path / paths.SSH_KEY, 0o644)
    keys.ensure_keys(tmp_path, "demo")
    assert mode(tmp_path / paths.SSH_KEY) == 0o600


def test_corrupt_private_key_is_an_error_not_replaced(tmp_path: Path) -> None:
    keys.ensure_keys(tmp_path, "demo")
    (tmp_path / paths.SSH_HOST_KEY).write_text("garbage")
    with pytest.raises(StateError) as err:
        keys.ensure_keys(tmp_path, "demo")
    assert "is not a readable OpenSSH private key" in str(err.value)
    assert (tmp_path / paths.SSH_HOST_KEY).read_text() == "garbage"


def test_load_keys_never_creates(tmp_path: Path) -> None:
    with pytest.raises(StateError) as err:
        keys.load_keys(tmp_path, "demo")
    assert str(err.value).startswith("instance `demo` has no SSH key")
    assert not (tmp_path / paths.SSH_DIR).exists()


def test_paramiko_can_use_the_client_key_and_sees_the_pinned_host_key(tmp_path: Path) -> None:
    paramiko = pytest.importorskip("paramiko")
    k = keys.ensure_keys(tmp_path, "demo")
    client = paramiko.Ed25519Key.from_private_key_file(str(k.client_key))
    assert client.get_base64() == k.client_public.split()[1]
    host = paramiko.Ed25519Key.from_private_key_file(str(k.host_key))
    assert (host.get_name(), host.get_base64()) == keys.pinned_host_key(tmp_path, "demo")
    known = paramiko.HostKeys(str(k.known_hosts))
    assert known.lookup("devenv-demo")["ssh-ed25519"].get_base64() == k.host_key_base64


def test_ssh_config_uses_the_instance_keys_and_the_pin(tmp_path: Path) -> None:
    """What plain `ssh` gets (devenv ssh-config) points at these files and this alias."""
    from devenv.transport.sshconfig import SSHConfigEntry

    k = keys.ensure_keys(tmp_path, "demo")
    entry = SSHConfigEntry("demo", 2222, keys.GUEST_USER, k.client_key, k.known_hosts).render()
    opts = [line.strip() for line in entry.splitlines()]
    assert f"IdentityFile {tmp_path / paths.SSH_KEY}" in opts
    assert f"HostKeyAlias {k.alias}" in opts and k.alias == "devenv-demo"
    assert "StrictHostKeyChecking yes" in opts
    assert f"UserKnownHostsFile {tmp_path / paths.SSH_KNOWN_HOSTS}" in opts


@pytest.mark.skipif(sys.platform == "win32", reason="ssh-keygen check is for POSIX hosts")
def test_ssh_keygen_reads_the_keys_if_present(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    k = keys.ensure_keys(tmp_path, "demo")
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(k.host_key)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == k.host_public.split()[:2]
    fp = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / paths.SSH_HOST_PUBKEY)], capture_output=True, text=True
    )
    assert k.host_fingerprint() in fp.stdout
