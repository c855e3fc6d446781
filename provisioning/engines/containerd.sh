#!/bin/sh
# devenv: enable containerd for the devenv user (group `containerd` on its
# socket) and import devenv/busybox:latest from a docker-archive made here.
# nerdctl is not packaged in Debian 12: when it is missing, use `sudo ctr` in
# the guest. Run as root at first boot; idempotent.
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

SOCK=/run/containerd/containerd.sock

configure() {
    docker_off_for_another_runtime
    # containerd has no SocketGroup; set it after each start instead of editing config.toml.
    mkdir -p /etc/systemd/system/containerd.service.d
    printf '[Service]\nExecStartPost=/bin/sh -c "chgrp containerd %s && chmod 0660 %s"\n' "$SOCK" "$SOCK" \
        > /etc/systemd/system/containerd.service.d/10-devenv-socket.conf
}

# the group whose members may use the engine's socket
GROUP=containerd
ENABLE=containerd.service
START=containerd.service

ready() {
    wait_for_socket "$SOCK" 60
    if command -v nerdctl >/dev/null 2>&1; then
        log "nerdctl: $(command -v nerdctl)"
    else
        log "NOTE: nerdctl is not available in this distribution; use 'sudo ctr' in the guest"
    fi
    if [ -e "$LOCAL_IMAGE_DONE" ]; then
        log "$DEVENV_IMAGE exists"
    elif layer=$(local_rootfs_tar); then
        archive=$(mktemp)
        make_docker_archive "$layer" "$archive" "$DEVENV_IMAGE" "$(guest_arch)"
        drop_rootfs_tar "$layer"
        ctr -n default images import "$archive"
        rm -f "$archive"
        : > "$LOCAL_IMAGE_DONE"
        log "built $DEVENV_IMAGE"
    else
        log "WARNING: no busybox in this guest; $DEVENV_IMAGE not built (add busybox to the image)"
    fi
    log "containerd ready: $SOCK (group containerd)"
}

engine_main "$@"
