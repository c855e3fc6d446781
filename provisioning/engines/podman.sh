#!/bin/sh
# devenv: enable Podman's Docker-compatible API for the devenv user.
#
# Choice: the rootful podman.socket (/run/podman/podman.sock), usable by the
# group `podman`, rather than a rootless user socket with lingering. It behaves
# like Docker (ports below 1024, one image store that the host's docker CLI,
# `podman` in the guest and provisioning all share) and needs no subuid setup;
# the VM is the isolation boundary. Run as root at first boot; idempotent.
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

SOCK=/run/podman/podman.sock

configure() {
    docker_off_for_another_runtime
    apparmor_fix_for_unit podman.service
    # Debian's tmpfiles.d makes /run/podman 0700 root:root at every boot, so the group never reached the
    # socket inside it: the same file in /etc (which wins) with that one line opened to the group.
    src=/usr/lib/tmpfiles.d/podman.conf
    { [ -f "$src" ] && awk '$2 != "/run/podman"' "$src"; echo 'D! /run/podman 0750 root podman'; } \
        > /etc/tmpfiles.d/podman.conf
    mkdir -p /run/podman
    chgrp podman /run/podman
    chmod 0750 /run/podman
    mkdir -p /etc/systemd/system/podman.socket.d
    printf '[Socket]\nSocketGroup=podman\nSocketMode=0660\n' > /etc/systemd/system/podman.socket.d/10-devenv-group.conf
    # `podman` run by the devenv user talks to the same rootful service.
    printf 'export CONTAINER_HOST=unix://%s\n' "$SOCK" > /etc/profile.d/devenv-podman.sh
    # ... also for commands the guest agent runs (its unit reads /etc/environment, not profile.d).
    grep -q '^CONTAINER_HOST=' /etc/environment 2>/dev/null ||
        printf 'CONTAINER_HOST="unix://%s"\n' "$SOCK" >> /etc/environment
}

# the group whose members may use the engine's socket
GROUP=podman
ENABLE=podman.socket
START=podman.socket

ready() {
    wait_for_socket "$SOCK" 60
    import_local_image podman
    log "podman ready: $SOCK (group podman, Docker API)"
}

engine_main "$@"
