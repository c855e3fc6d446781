# shellcheck shell=sh
# The busybox root filesystem of the local devenv/busybox image (sourced, never
# run): by common.sh in the guest, and by the image builder
# (vmimages/builders/debian/configure.sh), which makes it once at build time.

# The root filesystem as one tar, made by `devenv image build` so a first boot
# does not spend seconds (hundreds of applet symlinks, emulated) on it.
# shellcheck disable=SC2034 # used by the files that source this one
LOCAL_ROOTFS_TAR=/usr/local/lib/devenv/busybox-rootfs.tar

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
