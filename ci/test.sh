#!/usr/bin/env bash
# Install everything and run every check: lint, format, types, and the tests.
# When run as root (CI here), the tests themselves run as an ordinary user, so
# nothing that only root can do hides a permission bug; root only installs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash ci/setup-linux.sh --engine

log() { printf '==> %s\n' "$*" >&2; }

log "ruff check";   .venv/bin/ruff check devenv tests benchmarks hatch_build.py
log "ruff format";  .venv/bin/ruff format --check devenv tests benchmarks hatch_build.py
log "mypy";         .venv/bin/mypy devenv

# The built guest image is cached outside the repo, so later runs skip the build.
# Building needs root (debootstrap, chroot); the tests then only read the cache.
export DEVENV_CACHE="${DEVENV_CACHE:-/var/cache/devenv-ci}"
export DEVENV_CLOUDINIT_PYTHONPATH=/opt/devenv-ci/cloud-init/usr/lib/python3/dist-packages
mkdir -p "$DEVENV_CACHE"
if [ "$(id -u)" = 0 ]; then
  log "guest image (built once, then cached in $DEVENV_CACHE)"
  .venv/bin/devenv image build debian-12
  chmod -R a+rX "$DEVENV_CACHE"
fi

run_pytest() {
  set +e
  "$@"
  rc=$?
  set -e
  if [ "$rc" = 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure here" >&2
    exit 1
  fi
  return "$rc"
}

if [ "$(id -u)" = 0 ] && [ "${DEVENV_TEST_AS_ROOT:-0}" != 1 ]; then
  user=devenvci
  id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
  usermod -aG docker,tty "$user" 2>/dev/null || true  # the engine socket; a pty for the shell test
  # Desktops' udev makes /dev/fuse 0666 (FUSE mounts as a user); this machine has no udev.
  [ -c /dev/fuse ] && chmod 0666 /dev/fuse
  chmod 0755 "$DEVENV_CACHE"
  work=/tmp/devenv-ci-user
  rm -rf "$work"
  mkdir -p "$work"
  git ls-files -z | xargs -0 -I{} cp --parents {} "$work/" 2>/dev/null || cp -a . "$work/"
  chown -R "$user:" "$work"
  log "tests run as the ordinary user $user in $work"
  run_pytest runuser -u "$user" -- env DEVENV_CACHE="$DEVENV_CACHE" CI="${CI:-}" \
    DEVENV_CLOUDINIT_PYTHONPATH="$DEVENV_CLOUDINIT_PYTHONPATH" bash -c '
    set -e
    cd "$1"; shift
    /usr/bin/python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade "pip>=26" || true  # console scripts without `import re`
    .venv/bin/pip install -q -e ".[test]"
    exec .venv/bin/pytest -p no:cacheprovider "$@"
  ' _ "$work" "$@"
else
  run_pytest .venv/bin/pytest "$@"
fi
