#!/usr/bin/env bash
# A stand-in for "another host" running libvirtd, for tests/e2e/test_libvirt_remote.py: a second sshd on
# 127.0.0.1:PORT with its own host key and config, which lets in root (whose libvirt connection reaches
# qemu:///system without polkit, which needs a D-Bus these machines lack) with one key, and nobody else.
# The key pair is made for CLIENT_USER, the test user, who may read its private half; the test pins the
# host key it is told of in a known_hosts of its own. Safe to run again: the keys are kept, sshd started
# once. Prints the environment the test reads. Run as root:
#   eval "$(bash ci/remote-libvirt-host.sh CLIENT_USER [PORT])"
set -euo pipefail
client=$1
port=${2:-22622}
dir=/etc/devenv-ci/remote-sshd
client_home=$(getent passwd "$client" | cut -d: -f6)
keydir="$client_home/.devenv-ci-remote"
mkdir -p "$dir" /run/sshd
chmod 0755 "$dir"
[ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C devenv-ci-remote-host -f "$dir/ssh_host_ed25519_key"
mkdir -p "$keydir"
[ -f "$keydir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C devenv-ci-remote-client -f "$keydir/id_ed25519"
chown -R "$client:" "$keydir"
chmod 0700 "$keydir"
install -m 0600 "$keydir/id_ed25519.pub" "$dir/authorized_keys"
# UsePAM yes: without PAM, sshd refuses a root whose password is locked ("!"), even for a key
cat >"$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile /run/devenv-ci-remote-sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
AllowTcpForwarding yes
CONF
/usr/sbin/sshd -t -f "$dir/sshd_config"
pid=$(cat /run/devenv-ci-remote-sshd.pid 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  /usr/sbin/sshd -f "$dir/sshd_config"
fi
echo "export DEVENV_TEST_LIBVIRT_REMOTE=root@127.0.0.1:$port"
echo "export DEVENV_TEST_LIBVIRT_REMOTE_KEY=$keydir/id_ed25519"
echo "export DEVENV_TEST_LIBVIRT_REMOTE_HOST_KEY=$dir/ssh_host_ed25519_key.pub"
