#!/bin/sh
# devenv: enable Docker (Debian's docker.io, installed but disabled in the image)
# for the devenv user, and build devenv/busybox:latest without a registry.
# Run as root at first boot; idempotent.
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

apparmor_fix_for_unit docker.service
add_user_to_group docker
systemctl daemon-reload
systemctl enable docker.socket docker.service
start_unit docker.service
wait_for_socket /var/run/docker.sock 120

if docker image inspect "$DEVENV_IMAGE" >/dev/null 2>&1; then
    log "$DEVENV_IMAGE exists"
else
    rootfs=$(mktemp -d)
    if make_busybox_rootfs "$rootfs"; then
        tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/sh"]' - "$DEVENV_IMAGE"
        log "built $DEVENV_IMAGE"
    else
        log "WARNING: no busybox in this guest; $DEVENV_IMAGE not built (add busybox to the image)"
    fi
    rm -rf "$rootfs"
fi
log "docker ready: /var/run/docker.sock (group docker)"
