#!/bin/sh
# devenv: at boot, as root, mount the host folders QEMU shares with virtio-9p,
# as the kernel command line names them: devenv.mount=TAG:PATH:rw|ro (written
# by the host, devenv/hostagent/mounts.py boot_mount_args). Otherwise the host
# agent mounts them after its login, through a session of sshd, a shell and
# sudo: under TCG that came ~1.5 s after the rest of the guest was ready. The
# host agent finds them mounted (/proc/mounts) and leaves them as they are; one
# that fails here is left to it, so this never fails the boot.
set -f
OPTS=trans=virtio,version=9p2000.L,msize=262144,cache=mmap
# the two files it reads, other ones for the tests only (tests/unit/test_hostagent.py)
CMDLINE=${DEVENV_TEST_CMDLINE:-/proc/cmdline}
MOUNTS=${DEVENV_TEST_MOUNTS:-/proc/mounts}
read -r cmdline < "$CMDLINE"
for word in $cmdline; do
    case "$word" in
        devenv.mount=*:*:r[ow]) ;;
        *) continue ;;
    esac
    spec=${word#devenv.mount=}
    tag=${spec%%:*}
    rest=${spec#*:}
    path=${rest%:*}
    opts=$OPTS
    [ "${rest##*:}" = ro ] && opts="$opts,ro"
    if grep -qsF "$tag $path 9p " "$MOUNTS"; then
        continue
    fi
    if mkdir -p "$path" && mount -t 9p -o "$opts" "$tag" "$path"; then
        echo "mounted $tag at $path"
    else
        echo "could not mount $tag at $path; the host agent mounts it after its login" >&2
    fi
done
exit 0
