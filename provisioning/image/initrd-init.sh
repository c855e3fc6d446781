#!/bin/sh
# devenv's initrd /init: mount the root filesystem named on the kernel command
# line and hand over to its init, nothing else (no resume, no fsck, no RAID,
# LVM or network root, no break= shell: a devenv image has none of those, and
# fsck.mode=skip). Installed over initramfs-tools' own /init by the image's
# initramfs hook (vmimages/builders/debian/configure.sh). Why: under TCG every
# process the initrd starts costs tens of ms, and initramfs-tools' init runs
# each of its scripts and helpers as one: measured here, about 3.2 s from
# /init to the mounted root, where this takes 1.2-1.9 s. A failure says why on the
# console and powers the guest off, so `devenv start` reports it at once
# instead of waiting out its boot budget.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /dev /proc /sys /run /root /tmp
mount -t devtmpfs -o nosuid,mode=0755 udev /dev
mount -t proc -o nodev,noexec,nosuid proc /proc
mount -t sysfs -o nodev,noexec,nosuid sysfs /sys
mount -t tmpfs -o nodev,noexec,nosuid,size=10%,mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

fail() {
    echo "devenv initrd: $*" >&2
    echo "devenv initrd: the guest cannot boot; it powers off" >&2
    sleep 1
    poweroff -f
}

root='' rootflags=rw fstype='' init=/sbin/init
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in
    root=*) root=${arg#root=} ;;
    ro) rootflags=ro ;;
    rw) rootflags=rw ;;
    rootfstype=*) fstype=${arg#rootfstype=} ;;
    init=*) init=${arg#init=} ;;
    esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"

# udevd names the devices the modules bring up (the disk, the NIC) and records
# them in /run/udev, which the booted system keeps; no coldplug.
/lib/systemd/systemd-udevd --daemon --resolve-names=never
# shellcheck disable=SC2046 # one module name a word
modprobe -a -q $(cat /conf/modules 2>/dev/null)

case "$root" in
LABEL=*|UUID=*) ;;
/dev/*) ;;
*) fail "root=$root: give LABEL=, UUID= or a /dev path" ;;
esac
tries=0
while :; do
    case "$root" in
    /dev/*) [ -b "$root" ] && dev=$root && break ;;
    *) dev=$(blkid -l -o device -t "$root" 2>/dev/null) && [ -n "$dev" ] && break ;;
    esac
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || fail "no disk has $root after 30 s"
    sleep 0.1
done
mount ${fstype:+-t "$fstype"} -o "$rootflags" "$dev" /root || fail "cannot mount $dev ($root) on /root"
[ -x "/root$init" ] || [ -L "/root$init" ] || fail "no $init on $dev"
echo "devenv initrd: root $root is $dev"

udevadm control --exit
mount -n -o move /run /root/run
mount -n -o move /dev /root/dev
mount -n -o move /sys /root/sys
mount -n -o move /proc /root/proc
# shellcheck disable=SC2094 # the console, for reading and writing
exec run-init /root "$init" "$@" </root/dev/console >/root/dev/console 2>&1
