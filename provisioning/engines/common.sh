# shellcheck shell=sh
# Shared by docker.sh, podman.sh and containerd.sh (sourced, never run).
# Everything here is idempotent: a second run changes nothing.

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

wait_for_socket() {
    i=0
    while [ ! -S "$1" ]; do
        i=$((i + 1))
        if [ "$i" -gt "$2" ]; then
            log "socket $1 did not appear within $2 s"
            return 1
        fi
        sleep 1
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

find_busybox() {
    for candidate in "$(command -v busybox 2>/dev/null)" /bin/busybox /usr/bin/busybox /usr/lib/initramfs-tools/bin/busybox; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# make_busybox_rootfs DIR: a tiny root filesystem (busybox, its applets as
# symlinks, the shared libraries a dynamic busybox needs). Returns 1 when the
# guest has no busybox at all.
make_busybox_rootfs() {
    root=$1
    bb=$(find_busybox) || return 1
    mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    if ldd "$bb" >/dev/null 2>&1; then
        ldd "$bb" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | while read -r lib; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    fi
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
}

# make_docker_archive ROOTFS OUT.tar NAME ARCH: the `docker save` layout
# (manifest.json, config, one layer), which `ctr images import` and
# `podman load` read without any registry.
# import_local_image CLI: build $DEVENV_IMAGE from the guest's busybox with
# `CLI import` (docker and podman take the same arguments), unless it exists.
import_local_image() {
    if "$1" image inspect "$DEVENV_IMAGE" >/dev/null 2>&1; then
        log "$DEVENV_IMAGE exists"
        return 0
    fi
    rootfs=$(mktemp -d)
    if make_busybox_rootfs "$rootfs"; then
        tar -C "$rootfs" -c . | "$1" import -c 'CMD ["/bin/sh"]' - "$DEVENV_IMAGE"
        log "built $DEVENV_IMAGE"
    else
        log "WARNING: no busybox in this guest; $DEVENV_IMAGE not built (add busybox to the image)"
    fi
    rm -rf "$rootfs"
}

make_docker_archive() {
    rootfs=$1
    out=$2
    work=$(mktemp -d)
    tar -C "$rootfs" -cf "$work/layer.tar" .
    layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mkdir "$work/$layer"
    mv "$work/layer.tar" "$work/$layer/layer.tar"
    printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$4" "$layer" > "$work/config.json"
    config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    mv "$work/config.json" "$work/$config.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config" "$3" "$layer" > "$work/manifest.json"
    tar -C "$work" -cf "$out" manifest.json "$config.json" "$layer"
    rm -rf "$work"
}

guest_arch() {
    dpkg --print-architecture 2>/dev/null || uname -m
}
