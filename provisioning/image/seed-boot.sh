#!/bin/sh
# devenv: baked into images devenv builds; devenv-seed.service runs it once per
# instance. It only finds the instance's seed (the ISO labelled cidata, a
# read-only virtio disk), mounts it and hands over to the devenv-earlyboot.py
# on it, so what a first boot does ships with devenv, not with the image.
set -u
SEED=/run/devenv/seed

failed() {
    for dev in /dev/console /dev/ttyS0 /dev/ttyAMA0 /dev/hvc0; do
        [ -c "$dev" ] && printf 'DEVENV-FAILED step=seed rc=1 log=journal (%s)\n' "$1" > "$dev" 2>/dev/null
    done
    mkdir -p /var/lib/devenv
    printf 'step=seed rc=1 log=journal\n' > /var/lib/devenv/failed
    echo "devenv seed: $1" >&2
    exit 1
}

# blkid reads the disks itself (no udev needed); the virtio disk driver is in
# the initrd, so the seed is there at once, but give it 10 s.
i=0
until dev=$(blkid -L cidata 2>/dev/null) && [ -n "$dev" ]; do
    i=$((i + 1))
    [ "$i" -le 100 ] || failed "no disk labelled cidata"
    sleep 0.1
done
mkdir -p "$SEED"
mount -t iso9660 -o ro "$dev" "$SEED" || failed "cannot mount $dev"
# -I -S: nothing from the environment or site-packages; it needs the stdlib only
python3 -I -S "$SEED/devenv-earlyboot.py" "$SEED/devenv-seed.json"
rc=$?
umount "$SEED" || true
exit "$rc"
