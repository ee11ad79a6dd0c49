#!/usr/bin/env python3
# Alternates two strata binaries (before/after a change) on `run --rm busybox /bin/true`,
# so a shared, noisy machine slows both alike; prints medians per driver.
# Edit `root`/`bins`; the store needs busybox imported (strata import fixtures/busybox-rootfs.tar busybox:latest).
import subprocess, time, statistics, sys
root = "/var/tmp/strata-bench-root"
bins = {"before": "/var/tmp/strata-after-etc", "after": "/var/tmp/strata-volatile"}
n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
for driver in ["overlay", "fuse"]:
    t = {k: [] for k in bins}
    for i in range(n + 3):
        for k, b in (bins.items() if i % 2 == 0 else reversed(list(bins.items()))):
            s = time.perf_counter()
            r = subprocess.run([b, "--root", root, "run", "--rm", "--driver", driver, "busybox", "/bin/true"])
            e = time.perf_counter()
            assert r.returncode == 0
            if i >= 3:
                t[k].append((e - s) * 1000)
    print(driver, " ".join("%s median %.1f ms (min %.1f, p25 %.1f, p75 %.1f)" % (k, statistics.median(v), min(v), *statistics.quantiles(v, n=4)[0:3:2]) for k, v in t.items()))
