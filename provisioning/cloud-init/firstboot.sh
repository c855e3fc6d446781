#!/bin/sh
# devenv first boot: run once per instance, as root.
#
#   firstboot.sh            set up the engine, check the guest agent, run the
#                           user's provision scripts in order, then announce.
#                           cloud-init runs it (runcmd) on pulled images;
#                           devenv-provision.service on images devenv built.
#   firstboot.sh early      on images devenv built, before sshd: configure,
#                           enable and start the engine without waiting for
#                           it (devenv/provision/earlyboot.py runs this, and
#                           enables and starts the devenv units itself); the
#                           plain run then only waits for the engine.
#   firstboot.sh announce   re-announce the outcome; devenv-ready.service runs
#                           this on every later boot
#   firstboot.sh line TEXT  announce TEXT (announce(), bounded by `timeout`)
#
# The host waits for one line on the serial console instead of guessing with
# timeouts: "DEVENV-READY", or "DEVENV-FAILED step=NAME rc=N log=PATH".
# The outcome is also kept in /var/lib/devenv/{provisioned,failed}, and the
# whole output in /var/log/devenv-provision.log (root only: scripts may print secrets).
set -u

LIB=/usr/local/lib/devenv
STATE=/var/lib/devenv
LOG=/var/log/devenv-provision.log
GUEST_USER=devenv

announce_now() {
    # Every char device that exists gets the line; duplicates are harmless
    # (the host takes the first), a console that swallows it is not. Each is
    # written by a subshell of its own, a fork without an exec (a `timeout sh`
    # per console cost ~1 s of a TCG boot before the host could log in), so one
    # that blocks (a tty waiting for its carrier) holds up none of the others;
    # what runs this bounds the wait (devenv-ready.service's TimeoutStartSec,
    # announce() below).
    for dev in /dev/virtio-ports/io.devenv.0 /dev/console /dev/ttyS0 /dev/ttyAMA0 /dev/hvc0; do
        [ -c "$dev" ] || continue
        (printf '%s\n' "$1" > "$dev") 2>/dev/null &
    done
    wait
    echo "$1"
}

# The first boot's announcements: its unit and cloud-init wait without a bound.
announce() {
    timeout 15 /bin/sh "$0" line "$1" || echo "$1"
}

if [ "${1:-}" = line ]; then
    announce_now "$2"
    exit 0
fi

if [ "${1:-}" = announce ]; then
    if [ -e "$STATE/provisioned" ]; then
        announce_now "DEVENV-READY"
    elif [ -e "$STATE/failed" ]; then
        announce_now "DEVENV-FAILED $(cat "$STATE/failed")"
    fi
    exit 0
fi

mkdir -p "$STATE"
touch "$LOG" && chmod 0600 "$LOG"
exec >>"$LOG" 2>&1
echo "== devenv first boot${1:+ ($1)} $(date -u +%Y-%m-%dT%H:%M:%SZ)"
rm -f "$STATE/failed" "$STATE/provisioned"

fail() {
    printf 'step=%s rc=%s log=%s\n' "$1" "$2" "$LOG" > "$STATE/failed"
    echo "== FAILED in step $1 (exit code $2)"
    announce "DEVENV-FAILED step=$1 rc=$2 log=$LOG"
    exit "$2"
}

step() {
    name=$1
    shift
    echo "== step $name"
    "$@"
    rc=$?
    [ "$rc" -eq 0 ] || fail "$name" "$rc"
}

# How to start a provision script: its own #! line, else bash.
interpreter() {
    if [ "$(head -c 2 "$1")" = "#!" ]; then echo "$1"; else echo "/bin/bash $1"; fi
}

# shellcheck disable=SC1091,SC2046 # env.sh exists in the guest; the interpreter line is split on purpose
run_provision() {
    case "$1" in
        *-user.sh) runuser -l "$GUEST_USER" -c ". $LIB/env.sh; exec $(interpreter "$1")" ;;
        *) (cd / && . "$LIB/env.sh" && exec $(interpreter "$1")) ;;
    esac
}

# The config's env and the host's proxy variables (whose URLs may carry a
# password) arrive 0600: the guest user reads them, nobody else
# (devenv/provision/userdata.py: GUEST_USER_READABLE).
# The early part did this already: not twice (two processes a file).
if [ "${1:-}" = early ] || [ ! -e "$STATE/early" ]; then
    for secret in "$LIB/env.sh" /etc/environment /etc/apt/apt.conf.d/90devenv-proxy; do
        [ -e "$secret" ] || continue
        chgrp "$GUEST_USER" "$secret" && chmod 0640 "$secret"
    done
fi

RUNTIME=$(cat /etc/devenv/engine 2>/dev/null || echo docker)

case "$RUNTIME" in
    docker) READY_AFTER=docker.socket ;;
    podman) READY_AFTER=podman.socket ;;
    *) READY_AFTER="$RUNTIME.service" ;;
esac
mkdir -p /etc/systemd/system/devenv-ready.service.d
printf '[Unit]\nAfter=%s\n' "$READY_AFTER" > /etc/systemd/system/devenv-ready.service.d/engine.conf
ENGINE="$LIB/engines/$RUNTIME.sh"

if [ "${1:-}" = early ]; then
    # The engine: its start is what the host waits for last.
    step "engine-$RUNTIME" sh "$ENGINE" early
    date -u +%Y-%m-%dT%H:%M:%SZ > "$STATE/early"
    echo "== early part done"
    exit 0
fi

if [ -e "$STATE/early" ]; then
    step "engine-$RUNTIME" sh "$ENGINE" ready
else
    # what a pulled cloud image lacks: the engine, sshfs... (an image devenv built has them all)
    step packages sh "$LIB/install-missing.sh" --for "$RUNTIME"
    step systemd sh -c 'systemctl daemon-reload && systemctl enable devenv-ready.service devenv-guestagent.service devenv-mounts.service && systemctl enable --now devenv-guestagent.socket devenv-relay.service devenv-reclaim.timer'
    step "engine-$RUNTIME" sh "$ENGINE"
    # compiled once here: the agent's unit imports it (protocol.GUEST_LAUNCH) as the
    # devenv user, who cannot write the bytecode cache in this root-owned directory
    step guestagent-bytecode python3 -m py_compile "$LIB/guestagent.py"
    step guestagent python3 "$LIB/guestagent.py" --version
fi
for script in "$LIB"/provision/*.sh; do
    [ -e "$script" ] || continue
    step "provision:$(basename "$script" .sh)" run_provision "$script"
done
# sshd may have started before cloud-init wrote the pinned host key: make it
# re-read its keys (the early part writes them before sshd starts).
[ -e "$STATE/early" ] || systemctl try-reload-or-restart ssh.service || true

date -u +%Y-%m-%dT%H:%M:%SZ > "$STATE/provisioned"
# cloud-init only on first boot: on later boots it would cost ~20 s under
# emulation and has nothing left to do (keys, user, provisioning are done).
if [ -d /etc/cloud ]; then touch /etc/cloud/cloud-init.disabled; fi
echo "== ready"
announce "DEVENV-READY"
