#!/bin/sh
# devenv: enable containerd for the devenv user (group `containerd` on its
# socket) and import devenv/busybox:latest from a docker-archive made here.
# nerdctl is not packaged in Debian 12: when it is missing, use `sudo ctr` in
# the guest. Run as root at first boot; idempotent.
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

SOCK=/run/containerd/containerd.sock

add_user_to_group containerd
# containerd has no SocketGroup; set it after each start instead of editing config.toml.
mkdir -p /etc/systemd/system/containerd.service.d
printf '[Service]\nExecStartPost=/bin/sh -c "chgrp containerd %s && chmod 0660 %s"\n' "$SOCK" "$SOCK" \
    > /etc/systemd/system/containerd.service.d/10-devenv-socket.conf
systemctl daemon-reload
systemctl enable containerd.service
start_unit containerd.service
wait_for_socket "$SOCK" 60

if command -v nerdctl >/dev/null 2>&1; then
    log "nerdctl: $(command -v nerdctl)"
else
    log "NOTE: nerdctl is not available in this distribution; use 'sudo ctr' in the guest"
fi

if ctr -n default images ls -q | grep -qx -e "$DEVENV_IMAGE" -e "docker.io/$DEVENV_IMAGE"; then
    log "$DEVENV_IMAGE exists"
else
    rootfs=$(mktemp -d)
    if make_busybox_rootfs "$rootfs"; then
        make_docker_archive "$rootfs" "$rootfs.tar" "$DEVENV_IMAGE" "$(guest_arch)"
        ctr -n default images import "$rootfs.tar"
        rm -f "$rootfs.tar"
        log "built $DEVENV_IMAGE"
    else
        log "WARNING: no busybox in this guest; $DEVENV_IMAGE not built (add busybox to the image)"
    fi
    rm -rf "$rootfs"
fi
log "containerd ready: $SOCK (group containerd)"
