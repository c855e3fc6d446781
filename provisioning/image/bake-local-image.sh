#!/bin/sh
# devenv: run once by `devenv image build` (devenv/images/bake.py) as the
# kernel's init (init=/usr/local/lib/devenv/bake-local-image.sh) on the new
# image's disk, before any instance exists; never in an instance.
#
# It imports the local devenv/busybox image into the guest's own dockerd, so
# an instance's first boot does not: there the import waited for dockerd to be
# up and then cost ~3 s of its CPU under TCG, all of it on the path to ready,
# where later boots wait for neither. No systemd: the
# kernel, its modules and the engine's own binaries, as little else as
# possible, so nothing per-instance is made here (machine-id, host keys,
# logs). What dockerd makes that is its own identity or state of a running
# engine (engine-id, its trust key, the network store) is removed after.
#
# Its one line on the console tells the build how it went:
#   DEVENV-BAKED ok
#   DEVENV-BAKED failed step=NAME
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
SOCK=/run/devenv-bake/docker.sock

# shellcheck source=/dev/null
. /usr/local/lib/devenv/engines/busybox.sh

finish() {
    echo "DEVENV-BAKED $1"
    sync
    mount -o remount,ro / 2>/dev/null
    sync
    # init must not exit (the kernel would panic); the build's QEMU runs
    # with -no-reboot and ends here
    echo o > /proc/sysrq-trigger
    sleep 30
    poweroff -f
}

fail() {
    finish "failed step=$1"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail cgroup
mount -o remount,rw / || fail remount
ip link set lo up
modprobe overlay || fail modprobe

# what existed before, so only what this run made is removed
had_key=no
[ -e /etc/docker/key.json ] && had_key=yes
had_containerd=no
[ -e /var/lib/containerd ] && had_containerd=yes

mkdir -p /run/devenv-bake
containerd >/run/devenv-bake/containerd.log 2>&1 &
containerd_pid=$!
# the package's daemon.json says "iptables": false; no bridge: nothing here
# needs a network, and docker0 is made at the instance's own first start
dockerd --containerd=/run/containerd/containerd.sock --bridge=none -H "unix://$SOCK" \
    --pidfile /run/devenv-bake/docker.pid >/run/devenv-bake/dockerd.log 2>&1 &
dockerd_pid=$!
i=0
until docker -H "unix://$SOCK" version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 600 ] || ! kill -0 "$dockerd_pid" 2>/dev/null; then
        tail -20 /run/devenv-bake/dockerd.log
        fail dockerd
    fi
    sleep 0.5
done
[ -s "$LOCAL_ROOTFS_TAR" ] || fail rootfs
docker -H "unix://$SOCK" import -c 'CMD ["/bin/sh"]' "$LOCAL_ROOTFS_TAR" devenv/busybox:latest >/dev/null || fail import
docker -H "unix://$SOCK" image inspect devenv/busybox:latest >/dev/null || fail inspect
kill "$dockerd_pid"
wait "$dockerd_pid"
kill "$containerd_pid"
wait "$containerd_pid"

rm -f /var/lib/docker/engine-id
rm -rf /var/lib/docker/network
[ "$had_key" = yes ] || rm -f /etc/docker/key.json
[ "$had_containerd" = yes ] || rm -rf /var/lib/containerd
# docker.sh's ready skips the import when this exists (provisioning/engines/common.sh)
mkdir -p /var/lib/devenv
: > /var/lib/devenv/local-image
finish ok
