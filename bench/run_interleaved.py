#!/usr/bin/env python3
# Alternates two configurations of `strata run --rm busybox /bin/true` in one loop, so a shared,
# noisy machine slows both alike; prints medians (ms).
#   run_interleaved.py [N]                  two binaries (before/after a change: edit `bins`), per driver
#   run_interleaved.py N drivers [BINARY]   one binary, the overlay driver against the fuse one
# `root` is a store with busybox imported (strata import fixtures/busybox-rootfs.tar busybox:latest).
import subprocess, time, statistics, sys
root = "/var/tmp/strata-bench-root"
bins = {"before": "/var/tmp/strata-after-etc", "after": "/var/tmp/strata-volatile"}


def interleave(configs, n):
    """configs: label -> (binary, driver); n timed rounds after 3 warm-up ones, the order flipped each round."""
    t = {k: [] for k in configs}
    for i in range(n + 3):
        order = list(configs.items()) if i % 2 == 0 else list(reversed(configs.items()))
        for k, (b, driver) in order:
            s = time.perf_counter()
            r = subprocess.run([b, "--root", root, "run", "--rm", "--driver", driver, "busybox", "/bin/true"])
            e = time.perf_counter()
            assert r.returncode == 0
            if i >= 3:
                t[k].append((e - s) * 1000)
    return " ".join("%s median %.1f ms (min %.1f, p25 %.1f, p75 %.1f)" % (k, statistics.median(v), min(v), *statistics.quantiles(v, n=4)[0:3:2]) for k, v in t.items())


n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
if len(sys.argv) > 2 and sys.argv[2] == "drivers":
    b = sys.argv[3] if len(sys.argv) > 3 else "target/release/strata"
    print(interleave({"overlay": (b, "overlay"), "fuse": (b, "fuse")}, n))
else:
    for driver in ["overlay", "fuse"]:
        print(driver, interleave({k: (b, driver) for k, b in bins.items()}, n))
