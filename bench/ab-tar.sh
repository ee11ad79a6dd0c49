#!/bin/bash
# bench/ab-tar.sh A B: warm (COLD=1: cold, caches dropped before each pass)
# `tar cf - MNT | wc -c` alternating between two mounts of the
# layers ../shared/bench/unionfs.sh leaves in $LAYERS (default
# /var/tmp/bench-unionfs/layers). A and B: a strata-unionfs binary (or any program taking
# fuse-overlayfs's command line), or "kernel" for overlayfs. REPS rounds (default 5);
# POL_A / POL_B (e.g. -b) chrt the servers' threads. Both sides share one machine state,
# so a difference of a few percent shows through the noise separate runs have.
set -u
. "$(dirname "$0")/ab-lib.sh"
ab_mount "$1" "$2"
for i in 0 1; do
  tar cf - -C "$W/m$i" . | wc -c > /dev/null # the cold pass
done
for i in 0 1; do
  pol=$([ $i = 0 ] && echo "${POL_A:-}" || echo "${POL_B:-}")
  if [ -n "$pol" ] && [ -n "${PID[$i]}" ]; then
    for t in /proc/"${PID[$i]}"/task/*; do chrt "$pol" -p 0 "${t##*/}"; done
  fi
done
for _ in $(seq "${REPS:-5}"); do
  for i in 0 1; do
    if [ "${COLD:-0}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1; fi
    t0=$(date +%s.%N); tar cf - -C "$W/m$i" . | wc -c > /dev/null; t1=$(date +%s.%N)
    echo "$i $(echo "$t1 - $t0" | bc)"
  done
done | awk '{a[$1] = a[$1] " " substr($2, 1, 5)} END {print "A:" a[0]; print "B:" a[1]}'
ab_umount
