#!/bin/bash
# bench/rtt.sh A B: the cost of one FUSE round trip, as a caller sees it: 20,000 isatty(3)
# (an IOCTL the server answers ENOTTY) and 20,000 getxattr(2) of a name a file does not
# have, on a mount of the layers ../shared/bench/unionfs.sh leaves, first by a caller free
# to move between CPUs, then by one pinned to CPU 0. A and B as for ab-tar.sh; with
# "kernel" neither leaves the kernel. Also counts the caller's CPU migrations.
set -u
. "$(dirname "$0")/ab-lib.sh"
ab_mount "$1" "$2"
probe='
import os, sys, time
path, n = sys.argv[1], 20000
fd = os.open(path, os.O_RDONLY)
def moves():
    for line in open("/proc/thread-self/sched"):
        if line.startswith("se.nr_migrations"):
            return int(line.split(":")[1])
out = []
for name, call in (("isatty", lambda: os.isatty(fd)), ("getxattr", lambda: os.getxattr(path, "user.none"))):
    m, t = moves(), time.perf_counter()
    for _ in range(n):
        try:
            call()
        except OSError:
            pass
    out.append("%s %.1f us (%d migrations)" % (name, (time.perf_counter() - t) / n * 1e6, moves() - m))
print(", ".join(out))
'
for i in 0 1; do
  side=$([ $i = 0 ] && echo A || echo B)
  file=$(find "$W/m$i" -type f -print -quit)
  echo "$side free:   $(python3 -c "$probe" "$file")"
  echo "$side pinned: $(taskset -c 0 python3 -c "$probe" "$file")"
done
ab_umount
