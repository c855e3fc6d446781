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

# The phase engine_main runs (all, early, ready, image, off).
PHASE=${1:-all}

# put_file PATH: stdin becomes PATH, only when the bytes differ. systemd marks a
# unit as needing a daemon-reload when one of its files' mtime moves, even to the
# same content; an image built with the engine configured (phase image) gets the
# same files again at first boot, and must not pay a reload (~2 s under TCG) and
# an engine restart for them.
put_file() {
    # builtins where they do: under TCG each process costs ~0.1 s at first boot
    [ -d "${1%/*}" ] || mkdir -p "${1%/*}"
    cat > "$1.devenv-new"
    if cmp -s "$1.devenv-new" "$1"; then
        rm -f "$1.devenv-new"
    else
        mv "$1.devenv-new" "$1"
    fi
}

# Let the devenv user use the engine's socket (takes effect at its next login).
# At image build time the group is made, the user (made at first boot) not yet.
# /etc/group is read with builtins: the guest's accounts are all local, and
# under TCG each process costs ~0.1 s at first boot.
ETC_GROUP=/etc/group

add_user_to_group() {
    exists=no
    member=no
    while IFS=: read -r name _ _ members; do
        [ "$name" = "$1" ] || continue
        exists=yes
        case ",$members," in *",$DEVENV_USER,"*) member=yes ;; esac
    done < "$ETC_GROUP"
    [ "$exists" = yes ] || groupadd --system "$1"
    [ "$PHASE" != image ] || return 0
    [ "$member" = yes ] || usermod -aG "$1" "$DEVENV_USER"
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
    ' "$src" | put_file "/etc/systemd/system/$unit"
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
    # At image build time this is the build host's kernel, not the guest's:
    # the first boot decides (images devenv builds boot with apparmor=0).
    [ "$PHASE" != image ] || return 0
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
    printf '[Service]\nBindReadOnlyPaths=/usr/local/lib/devenv/apparmor-disabled:/sys/module/apparmor/parameters/enabled\n' | put_file "$dropin"
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

# stale_units UNIT...: those of the units whose files changed since systemd
# loaded them (NeedDaemonReload). At first boot an engine's units were never
# loaded, so none is stale; on an image built with the engine configured and
# running, a file the seed brought (the proxy drop-in) makes its unit stale.
stale_units() {
    # one block of properties per unit, blank lines between, in systemd's order
    systemctl show -p Id -p NeedDaemonReload "$@" 2>/dev/null | awk -F= '
        function flush() { if (need == "yes" && id != "") printf "%s ", id; id = ""; need = "" }
        $0 == "" { flush(); next }
        $1 == "Id" { id = $2 }
        $1 == "NeedDaemonReload" { need = $2 }
        END { flush() }'
}

# units_among "CHANGED" UNIT...: those of the units named in CHANGED (a space-
# separated list), each followed by a space, with builtins only.
# devenv/provision/earlyboot.py passes the units whose files the seed wrote
# or changed (DEVENV_CHANGED_UNITS): when the image's configure ran and this
# one did not, no other file of theirs can have changed since systemd loaded
# them, and asking systemd (stale_units) costs a systemctl run, ~0.4 s of a
# first boot under TCG.
units_among() {
    changed=" $1 "
    shift
    for unit in "$@"; do
        case "$changed" in *" $unit "*) printf '%s ' "$unit" ;; esac
    done
}

# Debian's image devenv built has docker configured and enabled (its default
# engine; vmimages/builders/debian/configure.sh): another runtime first turns
# it off with the image's own docker.sh, which knows what it set up.
docker_off_for_another_runtime() {
    grep -qx 'DEVENV_ENGINE_ENABLED="docker"' /etc/devenv/image.env 2>/dev/null || return 0
    sh "$(dirname "$0")/docker.sh" off
}

# The scripts that configured the engine when the image was built (phase
# image), as sha256sum prints them: the first boot skips configure and enable
# when the same scripts would run again (each of their few dozen processes costs
# ~0.1 s under TCG, on the path to sshd).
ENGINE_CONFIGURED=/etc/devenv/engine-configured

scripts_sum() {
    sha256sum "$(dirname "$0")/common.sh" "$0"
}

# configured_by_image: the image's configure ran with these very scripts, and
# nothing it skipped at build time applies here (AppArmor on in this kernel).
configured_by_image() {
    [ -f "$ENGINE_CONFIGURED" ] && ! apparmor_enabled &&
        [ "$(cat "$ENGINE_CONFIGURED")" = "$(scripts_sum)" ]
}

# engine_main PHASE: the engine script's phases. Each script defines
# configure (files only), GROUP (whose members may use the socket; the devenv
# user joins it), ENABLE (units to enable), START (units to start) and ready
# (wait for the socket, import the local image).
#   all    (default) the whole job on a running system: configure,
#          daemon-reload, enable and start, ready. cloud-init runs this.
#   early  configure, enable and start without waiting and without a reload
#          unless one is needed: the first boot of an image devenv built
#          (devenv/provision/earlyboot.py), before sshd, so the engine starts
#          beside the rest of the boot. Configure and enable are skipped when
#          the image was configured by the same scripts; its units are then
#          in the boot's own transaction and are not started again. A unit
#          already running whose files changed (the image had the engine
#          running from boot, the seed added a proxy drop-in) is restarted;
#          the rest only started.
#   ready  after early: wait for the socket, import the local image.
#   image  at image build time, in the new root (no systemd running, no user
#          yet): configure and enable, so the image boots with the engine
#          starting at once and the first boot finds its files unchanged.
#   off    (docker.sh only) undo what image did, for another runtime.
engine_main() {
    case "$PHASE" in
        all)
            add_user_to_group "$GROUP"
            configure
            systemctl daemon-reload
            # shellcheck disable=SC2086 # word lists on purpose
            systemctl enable $ENABLE
            for unit in $START; do start_unit "$unit"; done
            ready
            ;;
        early)
            add_user_to_group "$GROUP"
            if configured_by_image; then
                log "configured and enabled when the image was built, by these same scripts"
                by_image=yes
            else
                configure
                # SKIP_SYSV: docker has an init script too, and keeping its rc.d
                # links in step runs update-rc.d (perl) and two daemon-reloads.
                # shellcheck disable=SC2086
                SYSTEMCTL_SKIP_SYSV=1 systemctl enable --no-reload $ENABLE
                by_image=no
            fi
            # shellcheck disable=SC2086
            if [ "$by_image" = yes ] && [ "${DEVENV_CHANGED_UNITS+set}" = set ]; then
                # configure did not run: only what the seed wrote can have changed
                stale=$(units_among "$DEVENV_CHANGED_UNITS" $ENABLE $START)
            else
                stale=$(stale_units $ENABLE $START)
            fi
            to_restart=""
            to_start=""
            for unit in $START; do
                case " $stale" in
                    *" $unit "*) to_restart="$to_restart $unit" ;;
                    # enabled in the image: this boot's own transaction starts it already
                    *) [ "$by_image" = yes ] || to_start="$to_start $unit" ;;
                esac
            done
            if [ -n "$stale" ]; then
                log "changed since systemd loaded them: ${stale% }; reloading"
                systemctl daemon-reload
            fi
            # shellcheck disable=SC2086
            [ -z "$to_restart" ] || systemctl restart --no-block $to_restart
            # shellcheck disable=SC2086
            [ -z "$to_start" ] || systemctl start --no-block $to_start
            ;;
        ready) ready ;;
        image)
            add_user_to_group "$GROUP"
            configure
            # shellcheck disable=SC2086
            systemctl enable $ENABLE
            mkdir -p "${ENGINE_CONFIGURED%/*}"
            scripts_sum > "$ENGINE_CONFIGURED"
            ;;
        off)
            if command -v off >/dev/null 2>&1; then
                off
            else
                log "phase off is docker.sh's only"
                return 2
            fi
            ;;
        *)
            log "unknown phase $PHASE (all, early, ready, image, off)"
            return 2
            ;;
    esac
}
