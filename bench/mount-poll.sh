#!/bin/bash
# bench/mount-poll.sh [REPS]: unionfs.sh's mount_s, taken apart. The script times a mount
# from its start until a `mountpoint -q` poll (a cold exec, every 50 ms) sees it, so a
# server gets either ~0.02 s (mounted before the first poll looked) or ~0.07 s. It starts
# fuse-overlayfs from a forked subshell, and a custom server through `bash -c "exec CMD"`,
# a cold bash that loads its locale first. This times, after a cache drop each time:
#   fo      fuse-overlayfs -f ... &             (as unionfs.sh starts it)
#   fo-bash bash -c "exec fuse-overlayfs -f ..." &   (as a custom one would be)
#   bash    bash -c "exec strata-unionfs -f ..." &   (as unionfs.sh starts a custom one)
#   direct  strata-unionfs -f ... &             (as fuse-overlayfs is started)
# and prints each one's milliseconds. STRATA_BIN: where strata-unionfs is (target/release);
# LAYERS: the layers unionfs.sh made.
set -u
L=${LAYERS:-/var/tmp/bench-unionfs/layers}
B=${STRATA_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}/strata-unionfs
W=$(mktemp -d /var/tmp/mount-poll.XXXXXX)
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
for _ in $(seq "${1:-5}"); do
  for kind in fo fo-bash bash direct; do
    rm -rf "$W/r" && mkdir -p "$W/r/u" "$W/r/w" "$W/r/m"
    M=$W/r/m
    o="lowerdir=$L/l3:$L/l2:$L/l1,upperdir=$W/r/u,workdir=$W/r/w"
    sync
    echo 3 > /proc/sys/vm/drop_caches
    t0=$(now_us)
    case $kind in
      fo) fuse-overlayfs -f -o "$o" "$M" > /dev/null 2>&1 & ;;
      fo-bash) bash -c "exec fuse-overlayfs -f -o $o $M" > /dev/null 2>&1 & ;;
      bash) bash -c "exec $B -f -o $o $M" > /dev/null 2>&1 & ;;
      direct) "$B" -f -o "$o" "$M" > /dev/null 2>&1 & ;;
    esac
    pid=$!
    for _ in $(seq 200); do mountpoint -q "$M" && break; sleep 0.05; done
    t1=$(now_us)
    echo "$kind $(((t1 - t0) / 1000))"
    umount "$M"
    wait "$pid"
  done
done | awk '{a[$1] = a[$1] " " $2} END {for (k in a) print k ":" a[k] " ms"}'
rm -rf "$W"
