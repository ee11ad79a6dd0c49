#!/usr/bin/env python3
# `strata run --rm --driver D busybox /bin/true` with the two drivers alternated in one loop (medians, ms).
# Usage: run_drivers.py [N]; edit `root` (a store with busybox imported) and `b` (the strata binary).
import subprocess, time, statistics, sys
root = "/var/tmp/argtest"
b = "/work/main/target/release/strata"
n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
t = {"overlay": [], "fuse": []}
for i in range(n + 3):
    for d in (["overlay", "fuse"] if i % 2 == 0 else ["fuse", "overlay"]):
        s = time.perf_counter()
        r = subprocess.run([b, "--root", root, "run", "--rm", "--driver", d, "busybox", "/bin/true"])
        e = time.perf_counter()
        assert r.returncode == 0
        if i >= 3:
            t[d].append((e - s) * 1000)
for d, v in t.items():
    q = statistics.quantiles(v, n=4)
    print("%s median %.1f ms (p25 %.1f, p75 %.1f)" % (d, statistics.median(v), q[0], q[2]))
