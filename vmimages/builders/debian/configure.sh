#!/bin/sh
# Runs inside the new root (chroot ROOT /bin/sh /tmp/devenv-configure.sh PHASE)
# during `devenv image build`, never on a running guest. Its bytes are part of
# the build's cache key: edit it and the next build starts afresh.
#
#   pre   before the apt-get steps (the kernel's among them): keep daemons
#         from starting in the chroot, keep docs/man pages/translations out
#         of every later install, and make the initrd small.
#   post  after all packages are in: boot-path hygiene, networking, the
#         first-boot unit, sshd, docker configured and enabled (the others
#         installed but disabled), then shrink.
#
# Environment: DEVENV_IMAGE, DEVENV_BUILDER_VERSION, DEVENV_ENGINES (words).
# Files: /tmp/devenv-image/ holds provisioning/image/* and provisioning/engines/*
# (devenv/images/debian.py copies them in; their bytes are in the cache key too).
set -eu
phase="${1:?usage: configure.sh pre|post}"

pre() {
    # invoke-rc.d asks policy-rc.d; 101 = "do not start anything". Without it
    # docker.io's postinst would start dockerd inside the chroot, on the host.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d

    cat > /etc/dpkg/dpkg.cfg.d/90-devenv-nodoc <<'EOF'
# devenv: a container host needs no manuals or translations (also applies to
# packages installed later inside the guest).
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
    cat > /etc/apt/apt.conf.d/90-devenv <<'EOF'
// devenv: the same rule as the build, inside the guest.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF

    # --- initrd: only what finds and mounts root (the virtio disk on
    # PCI or, on microvm, mmio; ext4 and its checksum) and the virtio NIC, not
    # Debian's MODULES=most. This runs before the kernel is installed, so its
    # one initrd generation is the small one. Measured under TCG: MODULES=most
    # made a 125 MiB initrd (748 modules) that the kernel spent 3.9 s
    # unpacking. The NIC's driver is here although root does not need it:
    # left to the booted system's udev, it loaded 2 s after sshd was up, and
    # the host's login and the engine (after network-online) waited for it.
    # An initrd rebuilt later inside the guest keeps the same rule.
    mkdir -p /etc/initramfs-tools/conf.d
    printf '# devenv: see vmimages/builders/debian/configure.sh\nMODULES=list\n' \
        > /etc/initramfs-tools/conf.d/devenv.conf
    for m in virtio_pci virtio_mmio virtio_blk ext4 crc32c_generic virtio_net; do
        grep -qx "$m" /etc/initramfs-tools/modules || echo "$m" >> /etc/initramfs-tools/modules
    done
    # The initrd's /init is devenv's own (provisioning/image/initrd-init.sh):
    # it loads the modules above by name, runs udevd without its coldplug,
    # mounts root by its label and hands over to systemd. initramfs-tools'
    # own init runs each of its scripts and helpers as a process, which
    # under TCG cost ~3.2 s to the mounted root against 1.2-1.9 s for this
    # one. udevd still runs (initramfs-tools' udev hook puts it in), so the
    # devices those modules bring up (the disk, the NIC) are named and
    # recorded in /run/udev, which the booted system keeps: networkd
    # configures the NIC at once instead of after the booted udev's own
    # coldplug. The hook below puts the init in place after initramfs-tools
    # has copied its own (mkinitramfs runs hooks last), so an initrd rebuilt
    # later inside the guest gets it too.
    mkdir -p /usr/local/lib/devenv /etc/initramfs-tools/hooks
    install -m 0755 /tmp/devenv-image/initrd-init.sh /usr/local/lib/devenv/initrd-init
    cat > /etc/initramfs-tools/hooks/devenv-init <<'EOF'
#!/bin/sh
# devenv: the initrd's /init is devenv's; see vmimages/builders/debian/configure.sh
case "$1" in prereqs) exit 0 ;; esac
cp /usr/local/lib/devenv/initrd-init "${DESTDIR:?}/init"
chmod 0755 "${DESTDIR}/init"
EOF
    chmod 0755 /etc/initramfs-tools/hooks/devenv-init
    # gzip, said outright (the chroot has no zstd, initramfs.conf's default,
    # and mkinitramfs falls back to gzip with a warning): the image builder
    # unpacks it on the host (devenv/images/debian.py), because under TCG the
    # kernel took 1.5 s to gunzip it and 0.4 s to read the plain cpio.
    printf 'COMPRESS=gzip\nCOMPRESSLEVEL=1\n' >> /etc/initramfs-tools/conf.d/devenv.conf
}

unit_exists() {
    [ -e "/lib/systemd/system/$1" ] || [ -e "/etc/systemd/system/$1" ]
}

post() {
    # --- Disk: the whole virtio disk is one ext4 filesystem (no partitions), so
    # the first boot grows it with resize2fs after the host grows the overlay;
    # there is nothing for growpart to do. It is named by its
    # label (mkfs.ext4 -L devenv-root), as on the kernel command line: which
    # virtio disk is vda depends on the order the driver binds them.
    cat > /etc/fstab <<'EOF'
# devenv: root is the whole virtio disk, no partition table.
LABEL=devenv-root  /  ext4  defaults,discard,errors=remount-ro  0  0
EOF
    echo devenv > /etc/hostname
    echo 'LANG=C.UTF-8' > /etc/default/locale
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tdevenv\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts

    # --- Network: systemd-networkd DHCP on the virtio NIC whatever its name;
    # resolved for DNS.
    mkdir -p /etc/systemd/network
    cat > /etc/systemd/network/80-devenv-dhcp.network <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
LinkLocalAddressing=no
EOF
    systemctl enable systemd-networkd.service systemd-resolved.service
    ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
    # Nothing on the boot path needs network-online. Units that do (first-boot
    # provisioning fetching packages, engines) get it as soon as one link is up
    # instead of waiting for every link, for at most 15 s instead of 2 minutes.
    mkdir -p /etc/systemd/system/systemd-networkd-wait-online.service.d
    cat > /etc/systemd/system/systemd-networkd-wait-online.service.d/devenv.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=15
EOF
    # Timers that run apt in the background would compete with the user's
    # work under emulation; the user updates when they choose.
    for u in apt-daily.timer apt-daily-upgrade.timer; do
        if unit_exists "$u"; then systemctl disable "$u"; fi
    done
    # e2scrub checks ext4 filesystems on LVM, which the guest has none of; its
    # reaper ran at every boot beside dockerd (0.4 s of CPU under TCG).
    for u in e2scrub_reap.service e2scrub_all.timer; do
        if unit_exists "$u"; then systemctl disable "$u"; fi
    done

    # Generators for what a devenv guest has none of (LUKS, dm-integrity and
    # dm-verity volumes, a GPT root to discover, hibernation, offline system
    # updates): systemd runs every generator before it loads a unit, and
    # under TCG each of these took 0.1-0.25 s when run alone. A link to
    # /dev/null in /etc/systemd/system-generators is systemd's documented
    # way to turn one off.
    mkdir -p /etc/systemd/system-generators
    for g in cryptsetup gpt-auto hibernate-resume integritysetup veritysetup system-update; do
        ln -sf /dev/null "/etc/systemd/system-generators/systemd-$g-generator"
    done

    # --- First boot without cloud-init. devenv-seed.service runs the instance's
    # own first-boot program from its cidata seed before sshd starts (user,
    # keys, pinned host key, files, engine): under TCG cloud-init's four stages
    # cost ~22 s of a first boot and the reloads it led to ~20 s more. The
    # image has no cloud-init at all; pulled cloud images keep theirs.
    mkdir -p /usr/local/lib/devenv
    install -m 0755 /tmp/devenv-image/seed-boot.sh /usr/local/lib/devenv/seed-boot.sh
    install -m 0644 /tmp/devenv-image/devenv-seed.service /etc/systemd/system/devenv-seed.service
    systemctl enable devenv-seed.service
    # The root filesystem of the local devenv/busybox image, made here once
    # (hundreds of applet symlinks: seconds of a first boot under TCG).
    # shellcheck source=/dev/null
    . /tmp/devenv-image/busybox.sh
    rootfs=$(mktemp -d)
    make_busybox_rootfs "$rootfs"
    tar -C "$rootfs" -cf "$LOCAL_ROOTFS_TAR" .
    rm -rf "$rootfs"

    # --- sshd: keys only. Host keys made during the build are deleted so no two
    # instances share one; the first boot writes the host's pinned key.
    mkdir -p /etc/ssh/sshd_config.d
    cat > /etc/ssh/sshd_config.d/10-devenv.conf <<'EOF'
# devenv: public keys only.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
EOF
    rm -f /etc/ssh/ssh_host_*

    # --- Engines: installed, none enabled by its package. Docker, the default
    # runtime, is then configured and enabled by devenv's own docker.sh (its
    # `image` phase: the units, drop-ins and daemon.json a first boot would
    # write, minus the user's group), so an instance's first boot starts it as
    # early as every later boot does instead of ~7 s later, after the seed
    # service has configured it (measured under TCG: containerd up 16.3 s into
    # a first boot against 8.8 s in later ones). The seed still brings its
    # own copy of the scripts: the first boot skips them when they are these
    # same ones, else re-runs them, which rewrites nothing that is the same;
    # the engine is restarted only when one of its files changed (a proxy
    # drop-in). Another runtime's first boot turns docker off again with this
    # docker.sh (`off`). The scripts stay in the image.
    disabled=""
    for u in docker.service docker.socket containerd.service \
             podman.service podman.socket podman-restart.service podman-auto-update.service podman-auto-update.timer; do
        if unit_exists "$u"; then
            systemctl disable "$u"
            disabled="$disabled $u"
        fi
    done
    mkdir -p /usr/local/lib/devenv/engines
    for f in common.sh busybox.sh; do
        install -m 0644 "/tmp/devenv-image/$f" "/usr/local/lib/devenv/engines/$f"
    done
    for f in docker.sh podman.sh containerd.sh; do
        install -m 0755 "/tmp/devenv-image/$f" "/usr/local/lib/devenv/engines/$f"
    done
    enabled=""
    case " ${DEVENV_ENGINES:-} " in
        *" docker "*)
            sh /usr/local/lib/devenv/engines/docker.sh image
            enabled=docker
            # Run by the build after this script, as the image's init on its
            # disk: the local busybox image imported into that dockerd
            # (devenv/images/bake.py).
            install -m 0755 /tmp/devenv-image/bake-local-image.sh /usr/local/lib/devenv/bake-local-image.sh
            ;;
    esac
    mkdir -p /etc/devenv
    cat > /etc/devenv/image.env <<EOF
# Written by \`devenv image build\`; sourced by first-boot provisioning.
DEVENV_IMAGE="${DEVENV_IMAGE:-}"
DEVENV_IMAGE_BUILDER="debian"
DEVENV_IMAGE_BUILDER_VERSION="${DEVENV_BUILDER_VERSION:-}"
# Engines whose packages are installed.
DEVENV_ENGINES="${DEVENV_ENGINES:-}"
# The one configured and enabled at build time (provisioning/engines/docker.sh
# image); a first boot that chose another runs \`docker.sh off\`.
DEVENV_ENGINE_ENABLED="$enabled"
# Units their packages enabled and the build disabled.
DEVENV_DISABLED_UNITS="${disabled# }"
EOF

    # --- Shrink. The host boots the kernel and initrd it extracted, so the
    # initrd copy inside the disk is dead weight; kernel modules for hardware
    # a VM never has (GPUs, sound, wifi, ...) too.
    rm -f /boot/initrd.img-* /initrd.img /initrd.img.old
    for kdir in /usr/lib/modules/*; do
        [ -d "$kdir/kernel" ] || continue
        for d in drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
                 drivers/bluetooth drivers/iio drivers/isdn sound net/bluetooth net/wireless net/mac80211; do
            rm -rf "${kdir:?}/kernel/$d"
        done
        depmod -a "$(basename "$kdir")"
    done
    find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find /usr/share/doc -mindepth 1 -type d -empty -delete
    rm -rf /usr/share/man/* /usr/share/info/*
    find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/lib/dpkg/*-old
    find /var/log -type f -delete
    rm -rf /tmp/* /var/tmp/*
    # An empty machine-id makes systemd treat the first boot as first boot and
    # give every instance its own id.
    : > /etc/machine-id
    rm -f /var/lib/dbus/machine-id
    rm -f /usr/sbin/policy-rc.d
}

case "$phase" in
    pre) pre ;;
    post) post ;;
    *) echo "configure.sh: unknown phase $phase" >&2; exit 2 ;;
esac
