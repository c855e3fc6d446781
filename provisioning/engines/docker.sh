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

import_local_image docker
log "docker ready: /var/run/docker.sock (group docker)"
