#!/bin/sh
# devenv: give memory and disk space the guest no longer uses back to the host
# while the guest is not busy (devenv-reclaim.timer runs this as root;
# `reclaim.sh --now` runs it whatever the load).
#
# Memory: the host already caches the disk image (QEMU's cache=writeback), so
# the file pages the guest caches are held twice. Dropped here, they become
# free pages, which free-page reporting (virtio-balloon) hands back to the
# host: QEMU's resident memory falls by as much. A later read of the same file
# comes from the host's cache. Only clean pages go (drop_caches never drops
# unwritten data). WSL2 does the same (autoMemoryReclaim=dropcache).
#
# Disk: the overlay is attached with discard=unmap, so blocks the root file
# system trims are punched out of the host's qcow2 file: deleting a large
# file in the guest shrinks the instance's disk on the host at the next run.
#
# A guest whose load is at or above its CPU count is busy: both wait for the
# next run. The paths can be overridden so that a test runs this anywhere.
set -u
LOADAVG=${DEVENV_LOADAVG:-/proc/loadavg}
DROP_CACHES=${DEVENV_DROP_CACHES:-/proc/sys/vm/drop_caches}
TRIM_ROOT=${DEVENV_TRIM_ROOT:-/}
read -r load _ < "$LOADAVG"
cpus=$(nproc)
if [ "${1:-}" != --now ] && [ "${load%%.*}" -ge "$cpus" ]; then
    echo "devenv-reclaim: busy (load $load, $cpus CPUs): nothing given back this time"
    exit 0
fi
echo 1 > "$DROP_CACHES"
echo "devenv-reclaim: page cache dropped (load $load, $cpus CPUs)"
if command -v fstrim >/dev/null 2>&1; then
    fstrim -v "$TRIM_ROOT" || echo "devenv-reclaim: fstrim $TRIM_ROOT failed (a disk without discard?)"
fi
