#!/bin/bash
# bench/ab-write.sh A B: `dd bs=4k` of a new 200 MB file, alternating between two mounts of
# the layers ../shared/bench/unionfs.sh leaves in $LAYERS (default
# /var/tmp/bench-unionfs/layers). A and B: a strata-unionfs binary (or any program taking
# fuse-overlayfs's command line), or "kernel" for overlayfs. REPS rounds (default 3).
# Many small writes to one file: each write(2) that costs the FUSE server a round trip
# shows here (before FUSE_HANDLE_KILLPRIV_V2 every one asked for security.capability).
set -u
. "$(dirname "$0")/ab-lib.sh"
ab_mount "$1" "$2"
for _ in $(seq "${REPS:-3}"); do
  for i in 0 1; do
    sync
    mbs=$(dd if=/dev/zero of="$W/m$i/new" bs=4k count=50000 2>&1 | awk '/copied/ {print $(NF-1) $NF}')
    rm "$W/m$i/new"
    echo "$i $mbs"
  done
done | awk '{a[$1] = a[$1] " " $2} END {print "A:" a[0]; print "B:" a[1]}'
ab_umount
