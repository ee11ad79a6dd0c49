#!/bin/bash
# bench/ab-seqread.sh A B: the sequential read rows of ../shared/bench/unionfs.sh (dd bs=1M
# of the 1 GiB lower file; cold: after dropping the caches, or with WARM=1 from the page
# cache), alternating between two mounts of its layers, the side that goes first
# alternating. A and B as for ab-tar.sh. REPS rounds (default 5); prints MB/s.
set -u
. "$(dirname "$0")/ab-lib.sh"
ab_mount "$1" "$2"
for i in 0 1; do cat "$W/m$i/data/big.bin" > /dev/null; done
for r in $(seq "${REPS:-5}"); do
  order=$([ $((r % 2)) = 1 ] && echo "0 1" || echo "1 0")
  for i in $order; do
    if [ -z "${WARM:-}" ]; then
      sync
      echo 3 > /proc/sys/vm/drop_caches
    fi
    t0=$(date +%s.%N)
    dd if="$W/m$i/data/big.bin" of=/dev/null bs=1M 2> /dev/null
    t1=$(date +%s.%N)
    echo "$i $(echo "1024 / ($t1 - $t0)" | bc)"
  done
done | awk '{a[$1] = a[$1] " " $2} END {print "A:" a[0]; print "B:" a[1]}'
ab_umount
