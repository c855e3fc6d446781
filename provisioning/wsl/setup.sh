#!/bin/sh
# devenv: run once in a WSL distro right after `wsl.exe --import`, as root,
# before its first start (devenv/backends/drivers/wsl2.py). It turns the VM
# image's root filesystem into a distro: WSL mounts the root, configures the
# network and resolv.conf itself, and there is no seed disk to look for.
#   setup.sh OWNER-LINE
set -eu
mkdir -p /etc/devenv
# The marker: stop, delete and every listing act on a distro only when this file names the instance.
printf '%s\n' "$1" > /etc/devenv/wsl-owner
chmod 0644 /etc/devenv/wsl-owner
cat > /etc/wsl.conf <<'CONF'
# devenv: a WSL2 distro made from a devenv image (devenv/backends/drivers/wsl2.py).
[boot]
systemd=true

[interop]
# Windows' PATH in the distro makes every command lookup slow and is not the VM image's
appendWindowsPath=false

[network]
generateResolvConf=true
CONF
printf '# devenv: WSL mounts the root filesystem itself\n' > /etc/fstab
for unit in devenv-seed.service systemd-networkd.service systemd-networkd.socket \
    systemd-networkd-wait-online.service systemd-resolved.service; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
# resolved's stub, which is masked now: WSL writes its own file on the next start
if [ -L /etc/resolv.conf ]; then rm -f /etc/resolv.conf; fi
