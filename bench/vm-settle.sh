#!/usr/bin/env bash
# vm-settle.sh — take the hypervisor's memory reclaim out of the union benchmarks.
#
#   bench/vm-settle.sh          stop free page reporting and back all free memory once
#   bench/vm-settle.sh restore  put page reporting back as it was
#
# This VM (Firecracker, `page_reporting` in the kernel command line) hands free memory back
# to the host a moment after it is freed, and every page touched again afterwards costs a
# fault in the host. A cold read allocates its page cache right after the cache drop that
# freed it, so its speed depends on how much the host took back meanwhile: a 1 GiB cold
# `dd` through kernel overlayfs or strata ran at about 1.9 GB/s straight after
# `drop_caches` and at 0.7-0.9 GB/s five seconds later; the first figure of a run, and
# whichever union ran first, were the slowest. With reporting stopped and memory backed
# once, both read at 1.9-2.0 GB/s either way. It changes the machine for every union
# alike; the host gets the memory back once `restore` runs.
set -euo pipefail
param=/sys/module/page_reporting/parameters/page_reporting_order
saved=/run/strata-bench-page-reporting-order

if [ "${1:-}" = restore ]; then
  if [ -f "$saved" ]; then
    cat "$saved" > "$param"
    rm -f "$saved"
    echo "vm-settle: page reporting order back to $(cat "$param")"
  fi
  exit 0
fi

if [ ! -w "$param" ]; then
  echo "vm-settle: no free page reporting here ($param); nothing to do"
  exit 0
fi
[ -f "$saved" ] || cat "$param" > "$saved"
# No free block is of order 11 (MAX_PAGE_ORDER is 10 on x86-64): nothing is reported.
# This VM's kernel takes it; a kernel that refuses it keeps reporting, and then the run
# would not be settled.
if ! echo 11 2>/dev/null > "$param" || [ "$(cat "$param")" != 11 ]; then
  echo "vm-settle: the kernel refused page_reporting_order=11; page reporting stays on" \
    "(order $(cat "$param")), cold-read figures will swing" >&2
  exit 1
fi
avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
gib=$(( avail_kib / 1048576 - 2 ))
[ "$gib" -gt 0 ] || exit 0
echo "vm-settle: page reporting off (was order $(cat "$saved")); touching $gib GiB once"
python3 - "$gib" <<'EOF'
import sys
chunks = []
for _ in range(int(sys.argv[1])):
    b = bytearray(1 << 30)
    b[::4096] = b"\x01" * len(range(0, 1 << 30, 4096))
    chunks.append(b)
EOF
echo "vm-settle: done"
