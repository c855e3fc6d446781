#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host for devenv: system packages, a venv with devenv
# and its test tools, and (with --engine) a running docker engine for the
# native backend. Safe to run again; each step checks before it acts.
#
#   bash ci/setup-linux.sh            packages + .venv
#   bash ci/setup-linux.sh --engine   ... and make sure a docker engine answers
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
want_engine=0
for arg in "$@"; do
  case "$arg" in
    --engine) want_engine=1 ;;
    *) echo "setup-linux.sh: unknown argument $arg" >&2; exit 64 ;;
  esac
done

log() { printf '==> %s\n' "$*" >&2; }

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo); else
    echo "setup-linux.sh: installing system packages needs root or sudo" >&2; exit 77
  fi
fi

# Runtime needs: qemu + qemu-img (VM backends), openssh client (ssh-config users), a C
# compiler for the native `devenv` launcher (devenv/launcher; without one devenv is all Python).
# Test and image-build needs: debootstrap, e2fsprogs (mkfs.ext4 -d), openssh-server
# (the transport tests run a real sshd), socat, docker.io (a real engine for the
# native backend and the real docker CLI), python3-venv, systemd-container (systemd-nspawn: the
# stand-in wsl.exe's distros, tests/integration/test_wsl2_stand_in.py).
# Provisioning tests: shellcheck (engine scripts), busybox (the local image's
# rootfs), python3-yaml and cloud-init's own dependencies (schema check of the
# user-data against Debian's cloud-init, unpacked, never installed on the host).
# The libvirt backend: the daemon (libvirt-daemon-system, which also makes its accounts), virsh,
# and libvirt-dev + pkg-config, which the `libvirt` extra (libvirt-python) builds against; dnsmasq-base
# (DHCP) and iptables (NAT; Debian 12's libvirt 9 has no nftables backend) for its network `default`.
packages=(
  qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-server openssh-client socat procps gcc libc6-dev
  libvirt-daemon-system libvirt-clients libvirt-dev pkg-config dnsmasq-base
  docker.io iptables python3-venv python3-pip ca-certificates curl sshfs
  shellcheck busybox python3-yaml python3-jsonschema python3-jinja2 python3-configobj
  python3-requests python3-netifaces python3-oauthlib python3-jsonpatch
  docker-compose podman systemd-container
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# cloud-init's Python package, unpacked (not installed: it would run at the host's next boot).
cloudinit_dir=/opt/devenv-ci/cloud-init
if [ ! -d "$cloudinit_dir/usr/lib/python3/dist-packages/cloudinit" ]; then
  log "unpacking Debian's cloud-init for the user-data schema test"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q cloud-init >/dev/null)
  "${sudo_cmd[@]}" mkdir -p "$cloudinit_dir"
  "${sudo_cmd[@]}" dpkg-deb -x "$tmp"/cloud-init_*.deb "$cloudinit_dir"
  rm -rf "$tmp"
fi

# The developer tools tests/e2e/test_tools.py drives against an instance: Debian's docker-compose and
# podman (above), and the Dev Containers CLI from npm, kept outside the repo when root installs it
# (the tests' user reads it there) and in .venv otherwise.
if [ "$(id -u)" = 0 ]; then npm_prefix=/opt/devenv-ci/npm; else npm_prefix="$here/.venv/npm"; fi
if [ ! -x "$npm_prefix/node_modules/.bin/devcontainer" ]; then
  if ! command -v npm >/dev/null; then
    log "installing npm"
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends nodejs npm
  fi
  log "installing @devcontainers/cli into $npm_prefix"
  mkdir -p "$npm_prefix"
  npm install -q --no-audit --no-fund --prefix "$npm_prefix" @devcontainers/cli@0.89 >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$python" -m venv .venv
fi
# pip 26 writes console scripts that no longer import re: ~10 ms off every `devenv` call.
# Best effort: an older pip still installs a working devenv.
log "upgrading pip in .venv"
.venv/bin/python -m pip install -q --upgrade 'pip>=26' || log "pip could not be upgraded; devenv works, its start-up is ~10 ms slower"
log "installing devenv and its test tools into .venv"
.venv/bin/pip install -q -e '.[test,libvirt]'
# An editable install has no .pyc files (a regular one gets them from pip), and where
# PYTHONDONTWRITEBYTECODE is set every `devenv` call would compile its modules again (~15 ms).
.venv/bin/python -m compileall -q devenv >/dev/null

engine_answers() {
  curl -sf --max-time 2 --unix-socket /var/run/docker.sock http://docker/_ping >/dev/null 2>&1
}
if [ "$want_engine" = 1 ] && ! engine_answers; then
  log "starting a docker engine"
  if [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl start docker
  else
    "${sudo_cmd[@]}" sh -c 'nohup dockerd >/var/log/devenv-ci-dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do engine_answers && break; sleep 0.5; done
  engine_answers || { echo "setup-linux.sh: dockerd did not answer; see /var/log/devenv-ci-dockerd.log" >&2; exit 69; }
fi
log "setup done"
