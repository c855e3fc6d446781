#!/bin/sh
# devenv: enable Docker (Debian's docker.io) for the devenv user, and build
# devenv/busybox:latest without a registry.
# Run as root at first boot (`docker.sh [all|early|ready]`, see engine_main in
# common.sh), or at image build time (`docker.sh image`: Debian's image devenv
# builds boots with docker configured and starting; `docker.sh off` undoes that
# for another runtime); idempotent.
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"

# dockerd's own iptables management runs iptables about a hundred times at every
# start: ~10 s of each boot under TCG (measured: "Loading containers" 10.6 s
# with it, 0.4 s without), ~1 s with KVM. A dev VM needs two things from it:
# published ports, which docker-proxy serves without iptables (it listens on
# the guest's 0.0.0.0:PORT, which devenv forwards to the host), and outbound
# NAT for containers, which devenv-docker-nat.service sets up once per boot
# with a MASQUERADE rule for docker's default address pools. Not kept:
# docker's isolation between networks and `internal` networks' block on
# outbound traffic. A user who wants docker's own rules removes "iptables"
# from /etc/docker/daemon.json; an existing daemon.json is never touched.
configure_docker_network() {
    mkdir -p /etc/docker /usr/local/lib/devenv
    if [ ! -e /etc/docker/daemon.json ]; then
        printf '{\n  "iptables": false\n}\n' > /etc/docker/daemon.json
    fi
    put_file /usr/local/lib/devenv/docker-nat.sh <<'NAT'
#!/bin/sh
# devenv: outbound NAT for containers while dockerd runs with "iptables": false.
set -eu
grep -q '"iptables": *false' /etc/docker/daemon.json 2>/dev/null || exit 0
sysctl -qw net.ipv4.ip_forward=1
for pool in 172.16.0.0/12 192.168.0.0/16; do
    rule="POSTROUTING -s $pool ! -d $pool -j MASQUERADE"
    # shellcheck disable=SC2086
    iptables -t nat -C $rule 2>/dev/null || iptables -t nat -A $rule
done
NAT
    chmod 0755 /usr/local/lib/devenv/docker-nat.sh
    put_file /etc/systemd/system/devenv-docker-nat.service <<'UNIT'
[Unit]
Description=devenv: outbound NAT for containers (dockerd runs with iptables off)
# After the engine, not beside it: its iptables runs cost ~3 s of CPU under TCG, which
# `devenv start` (waiting for dockerd) pays when they compete; containers need NAT only later.
After=network.target docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/devenv/docker-nat.sh

[Install]
WantedBy=multi-user.target
UNIT
}

# dockerd loads these while it starts (overlay2, the docker0 bridge, XFRM for
# its netlink), in the seconds `devenv start` waits for it: under TCG its log
# showed 1.5 s from "Loading containers" to done, most of it loading bridge and
# xfrm_user. systemd-modules-load loads them at sysinit instead, off that wait.
preload_docker_modules() {
    printf '# devenv: modules dockerd loads at start, loaded earlier in boot.\noverlay\nbridge\nxfrm_user\n' |
        put_file /etc/modules-load.d/devenv-docker.conf
}

# docker.service is ordered after containerd.service, which is Type=notify: so
# dockerd's Go start-up (2.5 s under TCG before its first log line) began only
# once containerd's had ended (4.3 s from "Starting" to ready). As Type=exec,
# containerd counts as started once it is executed, the two start side by side
# on the guest's two CPUs, and dockerd's client waits for containerd's socket
# itself (it retries the dial for up to 60 s). Measured in alternating boots of
# one instance under TCG: basic.target to dockerd answering 9.8 s (median of
# 3) against 11.5 s. NotifyAccess=main: containerd's READY=1 is not logged as
# unexpected. Its ExecStartPre (`modprobe overlay`, one more process on that
# path) goes too: systemd-modules-load has loaded overlay already.
start_containerd_beside_docker() {
    printf '# devenv: see provisioning/engines/docker.sh\n[Service]\nType=exec\nNotifyAccess=main\nExecStartPre=\n' |
        put_file /etc/systemd/system/containerd.service.d/20-devenv-beside-docker.conf
}

# This containerd serves dockerd alone, which uses neither its CRI plugin (the
# kubelet's API: CNI watchers, a streaming server, state recovery) nor the
# aufs, btrfs, zfs and devmapper snapshotters (probing aufs runs modprobe). Docker's own
# containerd.io package disables CRI for the same reason. In the guest under TCG,
# containerd's CPU until it serves fell from 0.79-0.86 s to 0.56-0.61 s, and
# "booted in" from 0.4 s to 0.2 s. Only Debian's stock file (version 2, no
# disabled_plugins line) is changed; any other choice stands.
CONTAINERD_CONF=/etc/containerd/config.toml

trimmed_plugins_line() {
    plugins='"io.containerd.grpc.v1.cri"'
    for s in aufs btrfs zfs devmapper; do plugins="$plugins, \"io.containerd.snapshotter.v1.$s\""; done
    echo "disabled_plugins = [$plugins]"
}

trim_containerd_plugins() {
    conf=$CONTAINERD_CONF
    [ -f "$conf" ] && grep -qx 'version = 2' "$conf" || return 0
    grep -q '^disabled_plugins' "$conf" && return 0
    sed -i "/^version = 2\$/a $(trimmed_plugins_line)" "$conf"
}

# The package's docker.service waits for basic.target and network-online.target,
# so dockerd (and containerd, after network.target) began with sshd, logind
# and the host's login, all on the guest's two CPUs. Under TCG dockerd's Go
# package init alone is ~2 s of CPU on an idle guest (GODEBUG=inittrace=1:
# 575 packages, aws-sdk's endpoint table 0.33 s of it); in that crowd it took
# 8-11 s to its first log line, and the engine answered 5-8 s after sshd.
# Meanwhile one of the two CPUs idles while systemd works through sysinit
# (host-side QEMU CPU ~110% of 200% for the first ~16 s). Nothing dockerd or
# containerd do at start needs sysinit or the network: the root filesystem is
# mounted read-write by the initrd, the kernel loads overlay/bridge/xfrm_user
# on first use (systemd-modules-load preloads them beside), and docker0 is not
# networkd's (its .network matches en*/eth*). So both start as soon as systemd
# starts jobs. Measured, alternating boots under TCG: the engine answered
# 0.1 s after the host's login instead of 1.7-2.9 s; `devenv start` 37.8-39.0 s
# against 41.7-49.1 s.
#
# The one thing dockerd took from that ordering: it reads /etc/resolv.conf once,
# when it starts, and gives containers systemd-resolved's upstream servers
# only if the file names resolved's stub (127.0.0.53); unreadable, every
# container gets Google's 8.8.8.8, which a VM without internet cannot reach.
# Started early, dockerd can run before resolved has written the stub file
# /etc/resolv.conf points to, so resolv-stub.sh writes systemd's fixed copy of
# it first (ExecStartPre); resolved replaces it with its own when it starts.
start_engine_early() {
    put_file /usr/local/lib/devenv/resolv-stub.sh <<'STUB'
#!/bin/sh
# devenv: before dockerd starts, make sure /etc/resolv.conf (the symlink to
# systemd-resolved's stub file) can be read; see provisioning/engines/docker.sh.
# It only creates the stub file when it is missing (set -C): a file resolved
# wrote is never replaced, and a resolv.conf that is not that symlink is left alone.
[ -e /etc/resolv.conf ] && exit 0
stub=/run/systemd/resolve/stub-resolv.conf
[ "$(readlink -m /etc/resolv.conf)" = "$stub" ] || exit 0
[ -r /usr/lib/systemd/resolv.conf ] || exit 0
mkdir -p /run/systemd/resolve
set -C
cat /usr/lib/systemd/resolv.conf 2>/dev/null > "$stub" || true
STUB
    chmod 0755 /usr/local/lib/devenv/resolv-stub.sh
    printf '# devenv: see provisioning/engines/docker.sh (start_engine_early)\n[Service]\nExecStartPre=-/bin/sh /usr/local/lib/devenv/resolv-stub.sh\n' |
        put_file /etc/systemd/system/docker.service.d/10-devenv-resolv-stub.conf
    printf '# devenv: see provisioning/engines/docker.sh (start_engine_early)\n[Unit]\nDefaultDependencies=no\nBefore=sockets.target shutdown.target\nConflicts=shutdown.target\n' |
        put_file /etc/systemd/system/docker.socket.d/10-devenv-early.conf
    early_unit containerd.service "" ""
    early_unit docker.service "docker.socket containerd.service" containerd.service
}

configure() {
    apparmor_fix_for_unit docker.service
    preload_docker_modules
    start_containerd_beside_docker
    start_engine_early
    trim_containerd_plugins
    configure_docker_network
}

# the group whose members may use the engine's socket
GROUP=docker
# containerd is started (a restart when its files changed, so its trimmed
# plugins apply) but not enabled: docker.service wants it.
ENABLE="docker.socket docker.service devenv-docker-nat.service"
START="containerd.service docker.socket docker.service"

# off: what `docker.sh image` set up, undone at the first boot of an instance
# that chose another runtime: docker's units disabled and stopped (it may be
# starting already), containerd's unit, drop-in, plugins line and the
# module list given back to the package's defaults, and the mark of the local
# image the build imported into docker removed. Files other than devenv's are
# left alone.
off() {
    SYSTEMCTL_SKIP_SYSV=1 systemctl disable --no-reload docker.socket docker.service devenv-docker-nat.service
    # containerd too: docker.service started it (the containerd runtime
    # restarts it on its own files). Awaited, then their failed state cleared:
    # stopped in the middle of their start, they can end `failed` (seen on
    # containerd), which a new instance must not show. Only the first boot of
    # a runtime other than the default pays this wait.
    systemctl stop docker.socket docker.service containerd.service || true
    systemctl reset-failed docker.socket docker.service containerd.service 2>/dev/null || true
    rm -f /etc/systemd/system/containerd.service \
        /etc/systemd/system/containerd.service.d/20-devenv-beside-docker.conf \
        /etc/modules-load.d/devenv-docker.conf
    if [ -f "$CONTAINERD_CONF" ] && grep -qxF "$(trimmed_plugins_line)" "$CONTAINERD_CONF"; then
        line=$(trimmed_plugins_line)
        awk -v line="$line" '$0 != line' "$CONTAINERD_CONF" > "$CONTAINERD_CONF.devenv-new"
        mv "$CONTAINERD_CONF.devenv-new" "$CONTAINERD_CONF"
    fi
    # the build imported the local image into docker's store alone
    # (provisioning/image/bake-local-image.sh): the chosen runtime imports its own
    rm -f "$LOCAL_IMAGE_DONE" "$ENGINE_CONFIGURED"
    log "docker turned off for another runtime"
}

ready() {
    wait_for_socket /var/run/docker.sock 120
    import_local_image docker
    # Queued, not awaited, and after the import it would compete with: its
    # iptables runs are ~1 s of CPU under TCG and containers need NAT only
    # later; a failed NAT never keeps the engine from starting (containers
    # then only lack a way out; see the journal). An image configured by these
    # scripts enabled it at build time: this boot's transaction starts it after
    # docker.service, and a systemctl run here (~0.4 s under TCG) would add nothing.
    configured_by_image || systemctl start --no-block devenv-docker-nat.service
    log "docker ready: /var/run/docker.sock (group docker)"
}

engine_main "$@"
