#!/bin/sh
# devenv: each start of a WSL distro, as root, through `wsl.exe --exec`
# (devenv/backends/drivers/wsl2.py). Its process is what keeps the distro
# running: WSL stops a distro that no wsl.exe holds. It gives sshd the port
# of this instance (every WSL2 distro shares one network, so port 22 is
# anybody's), applies the first-boot seed once, starts sshd and waits.
#   boot.sh PORT
set -u
port="$1"
state=/var/lib/devenv
mkdir -p /etc/ssh/sshd_config.d
printf '# devenv: a port of its own (WSL2 distros share one network)\nPort %s\n' "$port" \
    > /etc/ssh/sshd_config.d/05-devenv-port.conf
if [ ! -e "$state/seeded" ] && [ ! -e "$state/failed" ] && [ -e "$state/wsl/devenv-seed.json" ]; then
    echo "devenv: first boot from the seed"
    # it records a failure in $state/failed, which the host reads over SSH; WSL sizes the root filesystem
    DEVENV_KEEP_ROOT_SIZE=1 python3 -I -S "$state/wsl/devenv-earlyboot.py" "$state/wsl/devenv-seed.json" || true
fi
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    # it failed at boot while there was no host key yet, often enough to be refused another start
    systemctl reset-failed ssh.service 2>/dev/null
    systemctl restart ssh.service
else
    echo "devenv: systemd is not running in this distro (is [boot] systemd=true honoured?): sshd started by hand"
    mkdir -p /run/sshd
    /usr/sbin/sshd
fi
echo "devenv: ready for SSH on port $port"
exec sleep infinity
