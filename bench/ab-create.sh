#!/bin/bash
# bench/ab-create.sh A B: the create row of ../shared/bench/unionfs.sh (one python process
# makes 5000 files of 0.5-4 KiB), on two fresh mounts of its layers each round, the side
# that goes first alternating. A and B as for ab-tar.sh. REPS rounds (default 5).
# ext4 without a journal makes a new inode scan past those freed in the last minute
# (recently_deleted), so the seconds depend on what was deleted before; alternating puts
# both sides in the same state.
set -u
. "$(dirname "$0")/ab-lib.sh"
for r in $(seq "${REPS:-5}"); do
  ab_mount "$1" "$2"
  order=$([ $((r % 2)) = 1 ] && echo "0 1" || echo "1 0")
  for i in $order; do
    sync
    t0=$(date +%s.%N)
    python3 -c '
import os, sys
d = sys.argv[1]
os.mkdir(d)
buf = b"x" * 4096
for i in range(5000):
    with open("%s/n%05d.txt" % (d, i), "wb") as f:
        f.write(buf[: 512 + (i * 37) % 3584])
' "$W/m$i/newfiles"
    t1=$(date +%s.%N)
    echo "$i $(echo "$t1 - $t0" | bc)"
  done
  ab_umount
done | awk '{a[$1] = a[$1] " " substr($2, 1, 5)} END {print "A:" a[0]; print "B:" a[1]}'
