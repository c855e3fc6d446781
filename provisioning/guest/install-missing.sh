#!/bin/sh
# devenv: install-missing.sh --for RUNTIME
#         install-missing.sh PROGRAM DEBIAN_PACKAGE FEDORA_PACKAGE [PROGRAM DEB FEDORA ...]
#
# Installs what devenv needs in the guest and the image lacks, at the first
# boot of a pulled cloud image (firstboot.sh): the engine (Debian's, Ubuntu's
# and Fedora's cloud images ship none), sshfs for the project folder, busybox
# for the local image, Hyper-V's KVP daemon on Hyper-V. A program already
# there is left alone, so an image devenv built, which has them all, installs
# nothing and never touches the network.
#
# Through the distribution's own package manager and mirror, as Lima's and
# Colima's first boots do: apt reads the host's proxy from
# /etc/apt/apt.conf.d/90devenv-proxy, dnf from the environment (env.sh).
# Exit 3 when something is missing and the image has neither apt-get nor dnf.
set -eu
PATH="$PATH:${DEVENV_SBIN:-/usr/local/sbin:/usr/sbin:/sbin}"
ENV_SH=${DEVENV_ENV_SH:-/usr/local/lib/devenv/env.sh}
INITRAMFS_BUSYBOX=${DEVENV_INITRAMFS_BUSYBOX:-/usr/lib/initramfs-tools/bin/busybox}

# --for RUNTIME: what devenv needs in the guest for that engine, as program / Debian package / Fedora package
if [ "${1:-}" = --for ] && [ $# -eq 2 ]; then
    case "$2" in
        docker) set -- dockerd docker.io moby-engine ;;
        *) set -- "$2" "$2" "$2" ;;
    esac
    set -- "$@" sshfs sshfs fuse-sshfs
    # the local image's root filesystem (engines/busybox.sh also takes initramfs-tools' copy)
    [ -x "$INITRAMFS_BUSYBOX" ] || set -- "$@" busybox busybox busybox
    # on Hyper-V the guest's address reaches the host through the KVP daemon (Get-VMNetworkAdapter)
    if [ "$(systemd-detect-virt 2>/dev/null)" = microsoft ]; then
        set -- "$@" hv_kvp_daemon hyperv-daemons hyperv-daemons
    fi
fi

debian=""
fedora=""
while [ $# -ge 3 ]; do
    if ! command -v "$1" >/dev/null 2>&1; then
        debian="$debian $2"
        fedora="$fedora $3"
    fi
    shift 3
done
if [ $# -ne 0 ]; then
    echo "install-missing.sh: arguments come in threes (program, Debian package, Fedora package)" >&2
    exit 2
fi
[ -n "$debian" ] || exit 0

# shellcheck disable=SC2086 # the package lists are split on purpose
if command -v apt-get >/dev/null 2>&1; then
    echo "devenv: installing${debian} (apt-get; the image lacks them)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $debian
elif command -v dnf >/dev/null 2>&1; then
    # dnf takes the host's proxy from the environment, which env.sh exports
    # shellcheck disable=SC1090 # written by the seed
    if [ -r "$ENV_SH" ]; then . "$ENV_SH"; fi
    echo "devenv: installing${fedora} (dnf; the image lacks them)"
    dnf install -y -q $fedora
else
    echo "devenv: this image lacks${debian} and has neither apt-get nor dnf to install them;" \
        "use an image that has them (\`devenv image build debian-12\` makes one)" >&2
    exit 3
fi
