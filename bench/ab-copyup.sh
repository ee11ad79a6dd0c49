#!/bin/bash
# bench/ab-copyup.sh A B: the copy-up row of ../shared/bench/unionfs.sh (append one byte
# to the 1 GiB lower file, data/big.bin), alternating between two fresh mounts of its
# layers each round (a copy-up happens once per mount). A and B as for ab-tar.sh. The big
# file is read once through each mount first (warm, as in the bench, where tar read it),
# then `sync`. REPS rounds (default 5); the side that goes first alternates.
set -u
. "$(dirname "$0")/ab-lib.sh"
for r in $(seq "${REPS:-5}"); do
  ab_mount "$1" "$2"
  for i in 0 1; do cat "$W/m$i/data/big.bin" > /dev/null; done
  sync
  order=$([ $((r % 2)) = 1 ] && echo "0 1" || echo "1 0")
  for i in $order; do
    t0=$(date +%s.%N); printf x >> "$W/m$i/data/big.bin"; t1=$(date +%s.%N)
    sync
    echo "$i $(echo "$t1 - $t0" | bc)"
  done
  ab_umount
done | awk '{a[$1] = a[$1] " " substr($2, 1, 5)} END {print "A:" a[0]; print "B:" a[1]}'
