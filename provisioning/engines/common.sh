# shellcheck shell=sh
# Shared by docker.sh, podman.sh and containerd.sh (sourced, never run).
# Everything here is idempotent: a second run changes nothing.

# shellcheck source-path=SCRIPTDIR source=busybox.sh
. "$(dirname "$0")/busybox.sh"

DEVENV_USER=${DEVENV_USER:-devenv}
DEVENV_IMAGE=${DEVENV_IMAGE:-devenv/busybox:latest}

log() {
    echo "devenv-engine: $*"
}

# Let the devenv user use the engine's socket (takes effect at its next login).
add_user_to_group() {
    getent group "$1" >/dev/null || groupadd --system "$1"
    if id -nG "$DEVENV_USER" | tr ' ' '\n' | grep -qx "$1"; then
        return 0
    fi
    usermod -aG "$1" "$DEVENV_USER"
}

# wait_for_socket PATH SECONDS: polled every 0.2 s (the engine's first answer
# is what the host waits for).
wait_for_socket() {
    i=0
    while [ ! -S "$1" ]; do
        i=$((i + 1))
        if [ "$i" -gt $(($2 * 5)) ]; then
            log "socket $1 did not appear within $2 s"
            return 1
        fi
        sleep 0.2
    done
}

# Start a unit, or restart it when it already runs so new drop-ins apply.
start_unit() {
    if systemctl is-active --quiet "$1"; then
        systemctl restart "$1"
    else
        systemctl start "$1"
    fi
}

# early_unit UNIT AFTER WANTS: UNIT as its package ships it, started as soon as
# systemd starts jobs instead of after basic.target. /etc/systemd/system/UNIT
# is the packaged file with its [Unit] After= and Wants= replaced by AFTER and
# WANTS (a drop-in can add ordering but never remove it), DefaultDependencies=no,
# and the shutdown ordering default dependencies would have given it. The rest
# (ExecStart, limits, Delegate, [Install]) stays the package's. Why, for the
# engines: provisioning/engines/docker.sh, start_engine_early.
early_unit() {
    unit=$1
    src=""
    for dir in /lib/systemd/system /usr/lib/systemd/system; do
        if [ -f "$dir/$unit" ]; then
            src="$dir/$unit"
            break
        fi
    done
    if [ -z "$src" ]; then
        log "no packaged $unit: its ordering is left as it is"
        return 0
    fi
    out=/etc/systemd/system/$unit
    awk -v src="$src" -v after="$2" -v wants="$3" '
        /^\[/ { section = $0 }
        section == "[Unit]" && /^(After|Wants|DefaultDependencies)=/ { next }
        { print }
        $0 == "[Unit]" {
            print "# devenv: " src " with only this ordering; see provisioning/engines/common.sh (early_unit)"
            print "DefaultDependencies=no"
            if (after != "") print "After=" after
            if (wants != "") print "Wants=" wants
            print "Conflicts=shutdown.target"
            print "Before=shutdown.target"
        }
    ' "$src" > "$out.devenv-new"
    mv "$out.devenv-new" "$out"
}

apparmor_enabled() {
    [ -d /sys/kernel/security/apparmor ] &&
        [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]
}

# Debian's docker.io fails every `docker run` ("AppArmor enabled on system but
# the docker-default profile could not be loaded") when the kernel has AppArmor
# on but apparmor_parser is missing. Three cases:
#   - kernel booted with apparmor=0: nothing to do;
#   - apparmor_parser present: make sure the profiles service runs; the engine
#     loads its own profile;
#   - parser missing: the unit gets a private, read-only "N" over
#     /sys/module/apparmor/parameters/enabled, so the engine (only it) sees
#     AppArmor as off and runs containers unconfined, as with apparmor=0.
#     The VM is the isolation boundary; install `apparmor` in the image to confine.
apparmor_fix_for_unit() {
    unit=$1
    dropin=/etc/systemd/system/$unit.d/20-devenv-apparmor.conf
    if ! apparmor_enabled; then
        log "AppArmor is off in this kernel: nothing to do for $unit"
        rm -f "$dropin"
        return 0
    fi
    if command -v apparmor_parser >/dev/null 2>&1; then
        log "AppArmor is on and apparmor_parser exists: $unit loads its own profile"
        systemctl start apparmor.service 2>/dev/null || true
        rm -f "$dropin"
        return 0
    fi
    log "AppArmor is on but apparmor_parser is missing: $unit sees AppArmor as off (install apparmor in the image to confine containers)"
    mkdir -p /usr/local/lib/devenv "/etc/systemd/system/$unit.d"
    echo N > /usr/local/lib/devenv/apparmor-disabled
    printf '[Service]\nBindReadOnlyPaths=/usr/local/lib/devenv/apparmor-disabled:/sys/module/apparmor/parameters/enabled\n' > "$dropin"
}

# local_rootfs_tar: print the path of the busybox root filesystem as a tar:
# the one the image builder made, else one made here in a temporary file
# (the caller removes it with drop_rootfs_tar). Returns 1 when the guest has
# no busybox at all.
local_rootfs_tar() {
    if [ -s "$LOCAL_ROOTFS_TAR" ]; then
        echo "$LOCAL_ROOTFS_TAR"
        return 0
    fi
    rootfs=$(mktemp -d)
    out=$(mktemp)
    if make_busybox_rootfs "$rootfs" >&2; then
        tar -C "$rootfs" -cf "$out" .
        rm -rf "$rootfs"
        echo "$out"
        return 0
    fi
    rm -rf "$rootfs" "$out"
    return 1
}

drop_rootfs_tar() {
    [ "$1" = "$LOCAL_ROOTFS_TAR" ] || rm -f "$1"
}

# Written once the local image is in the engine: asking the engine instead
# (`docker image inspect`) costs ~0.9 s of a first boot under TCG.
LOCAL_IMAGE_DONE=/var/lib/devenv/local-image

# import_local_image CLI: make $DEVENV_IMAGE from the busybox root filesystem
# with `CLI import` (docker and podman take the same arguments), once.
import_local_image() {
    if [ -e "$LOCAL_IMAGE_DONE" ]; then
        log "$DEVENV_IMAGE exists"
        return 0
    fi
    if layer=$(local_rootfs_tar); then
        "$1" import -c 'CMD ["/bin/sh"]' "$layer" "$DEVENV_IMAGE" >/dev/null
        drop_rootfs_tar "$layer"
        mkdir -p "$(dirname "$LOCAL_IMAGE_DONE")" && : > "$LOCAL_IMAGE_DONE"
        log "built $DEVENV_IMAGE"
    else
        log "WARNING: no busybox in this guest; $DEVENV_IMAGE not built (add busybox to the image)"
    fi
}

# make_docker_archive LAYER.tar OUT.tar NAME ARCH: the `docker save` layout
# (manifest.json, config, one layer), which `ctr images import` and
# `podman load` read without any registry.
make_docker_archive() {
    work=$(mktemp -d)
    layer=$(sha256sum "$1" | cut -d' ' -f1)
    mkdir "$work/$layer"
    cp "$1" "$work/$layer/layer.tar"
    printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$4" "$layer" > "$work/config.json"
    config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    mv "$work/config.json" "$work/$config.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config" "$3" "$layer" > "$work/manifest.json"
    tar -C "$work" -cf "$2" manifest.json "$config.json" "$layer"
    rm -rf "$work"
}

guest_arch() {
    dpkg --print-architecture 2>/dev/null || uname -m
}

# reload_if_needed UNIT...: one daemon-reload, only when systemd holds an older
# definition of one of the units than the files now say. At first boot the
# engine's units were never loaded, so the new files are read when they start:
# each reload costs ~2 s under TCG.
reload_if_needed() {
    if systemctl show -p NeedDaemonReload --value "$@" 2>/dev/null | grep -qx yes; then
        systemctl daemon-reload
    fi
}

# engine_main PHASE: the engine script's phases. Each script defines
# configure (files and groups only), ENABLE (units to enable), START (units to
# start) and ready (wait for the socket, import the local image).
#   all    (default) the whole job on a running system: configure,
#          daemon-reload, enable and start, ready. cloud-init runs this.
#   early  configure, enable and start without waiting and without a reload
#          unless one is needed: the first boot of an image devenv built
#          (devenv/provision/earlyboot.py), before sshd, so the engine starts
#          beside the rest of the boot.
#   ready  after early: wait for the socket, import the local image.
engine_main() {
    case "${1:-all}" in
        all)
            configure
            systemctl daemon-reload
            # shellcheck disable=SC2086 # word lists on purpose
            systemctl enable $ENABLE
            for unit in $START; do start_unit "$unit"; done
            ready
            ;;
        early)
            configure
            # SKIP_SYSV: docker has an init script too, and keeping its rc.d
            # links in step runs update-rc.d (perl) and two daemon-reloads.
            # shellcheck disable=SC2086
            SYSTEMCTL_SKIP_SYSV=1 systemctl enable --no-reload $ENABLE
            # shellcheck disable=SC2086
            reload_if_needed $ENABLE $START
            # shellcheck disable=SC2086
            systemctl start --no-block $START
            ;;
        ready) ready ;;
        *)
            log "unknown phase $1 (all, early, ready)"
            return 2
            ;;
    esac
}
