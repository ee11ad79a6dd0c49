#!/bin/bash
# bench/seq-cold-memory.sh [BIN]: the cold sequential read row of ../shared/bench/unionfs.sh
# (dd bs=1M of the 1 GiB lower file after the find and stat phases and a cache drop), strata
# and kernel overlayfs alternating (REV=1: kernel first), ROUNDS rounds (default 3). Prints
# MB/s, the requests vda served and dd's system CPU time. With PREFAULT=GiB, a process
# writes and frees that much memory right before each dd, so the page cache the read fills
# is memory the VM's host still backs (see the "cold sequential read" note of
# unionfs-results.txt: with free page reporting, guest pages freed long ago are given back
# to the host, and the first touch of each costs a fault there).
set -u
L=${LAYERS:-/var/tmp/bench-unionfs/layers}
BIN=${1:-$(dirname "$0")/../target/release/strata-unionfs}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
prefault() {
  [ -n "${PREFAULT:-}" ] && python3 -c "b = b'\x01' * ($PREFAULT << 30)"
  return 0
}
one() {  # $1 = strata | kernel
  local w p s0 s1 t0 t1 sys
  w=$(mktemp -d /var/tmp/seqcold.XXXXXX)
  mkdir -p "$w/u" "$w/w" "$w/m"
  local opts="lowerdir=$L/l3:$L/l2:$L/l1,upperdir=$w/u,workdir=$w/w"
  drop
  p=""
  if [ "$1" = kernel ]; then
    mount -t overlay overlay -o "$opts" "$w/m"
  else
    "$BIN" -f -o "$opts" "$w/m" > /dev/null 2>&1 &
    p=$!
  fi
  for _ in $(seq 100); do mountpoint -q "$w/m" && break; sleep 0.05; done
  drop
  for _ in 1 2; do find "$w/m" -type f > /dev/null; done
  drop
  for _ in 1 2; do find "$w/m" -printf '%s\n' > /dev/null; done
  stat -c %s "$w/m/data/big.bin" > /dev/null
  drop
  prefault
  read -ra s0 < /sys/block/vda/stat
  t0=$(date +%s%N)
  sys=$( { /usr/bin/time -f %S dd if="$w/m/data/big.bin" of=/dev/null bs=1M status=none; } 2>&1)
  t1=$(date +%s%N)
  read -ra s1 < /sys/block/vda/stat
  echo "$1 $((1073741824 * 1000 / (t1 - t0))) MB/s, $((s1[0] - s0[0])) reads from vda, dd system time ${sys} s"
  umount "$w/m"
  [ -n "$p" ] && wait "$p"
  rm -rf "$w"
}
for _ in $(seq "${ROUNDS:-3}"); do
  if [ -n "${REV:-}" ]; then one kernel; one strata; else one strata; one kernel; fi
done
