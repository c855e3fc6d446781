#!/bin/sh
# devenv: give the guest's clean page cache back to the host while the guest is
# not busy (devenv-reclaim.timer runs this as root).
#
# The host already caches the disk image (QEMU's cache=writeback), so the file
# pages the guest caches are held twice. Dropped here, they become free pages,
# which free-page reporting (virtio-balloon) hands back to the host: QEMU's
# resident memory falls by as much. A later read of the same file comes from
# the host's cache. Only clean pages go (drop_caches never drops unwritten
# data). WSL2 does the same (autoMemoryReclaim=dropcache). A guest whose load
# is at or above its CPU count is busy: its cache is left alone until the next run.
#
# The two paths can be overridden so that a test runs this anywhere.
set -u
LOADAVG=${DEVENV_LOADAVG:-/proc/loadavg}
DROP_CACHES=${DEVENV_DROP_CACHES:-/proc/sys/vm/drop_caches}
read -r load _ < "$LOADAVG"
cpus=$(nproc)
if [ "${load%%.*}" -lt "$cpus" ]; then
    echo 1 > "$DROP_CACHES"
    echo "devenv-reclaim: page cache dropped (load $load, $cpus CPUs)"
else
    echo "devenv-reclaim: busy (load $load, $cpus CPUs): cache kept"
fi
