#!/usr/bin/env python3
"""Cold mount time of FUSE union servers, to the millisecond.

unionfs.sh times a mount by polling `mountpoint -q` every 50 ms, itself a cold exec, so
its mount_s is either ~0.04 s (the first poll sees the mount) or ~0.08 s. This drops the
caches, starts each server in the foreground and polls /proc/self/mountinfo every 0.5 ms
from an already running process. Servers take turns, REPEAT times each.

usage: bench/mount_time.py [REPEAT]   (root; the bench layers from unionfs.sh must exist)
env: LAYERS (default /var/tmp/bench-unionfs/layers), STRATA_BIN (default target/release)
"""

import os
import shutil
import subprocess
import sys
import time

LAYERS = os.environ.get("LAYERS", "/var/tmp/bench-unionfs/layers")
BIN = os.environ.get("STRATA_BIN", os.path.join(os.path.dirname(__file__), "../target/release"))
RUN = "/var/tmp/strata-mount-time"
SERVERS = {
    "fuse-overlayfs": "fuse-overlayfs -f -o lowerdir={lower},upperdir={upper},workdir={work} {mnt}",
    "strata-unionfs": BIN + "/strata-unionfs -f -o lowerdir={lower},upperdir={upper},workdir={work} {mnt}",
    "strata mount": BIN + "/strata mount --foreground --driver fuse --lower {lower} "
    "--upper {upper} --work {work} {mnt}",
}


def mounted(mnt):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == mnt for line in f)


def one(template):
    shutil.rmtree(RUN, ignore_errors=True)
    dirs = {d: os.path.join(RUN, d) for d in ("upper", "work", "mnt")}
    for d in dirs.values():
        os.makedirs(d)
    lower = ":".join(os.path.join(LAYERS, l) for l in ("l3", "l2", "l1"))
    argv = template.format(lower=lower, **dirs).split()
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    start = time.perf_counter()
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not mounted(dirs["mnt"]):
        if server.poll() is not None or time.perf_counter() - start > 10:
            raise SystemExit(f"{argv[0]} did not mount")
        time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    subprocess.run(["umount", dirs["mnt"]], check=True)
    server.wait(timeout=10)
    return elapsed * 1000


def main():
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    times = {name: [] for name in SERVERS}
    for _ in range(repeat):
        for name, template in SERVERS.items():
            times[name].append(one(template))
    for name, ms in times.items():
        ms.sort()
        print(f"{name:16} median {ms[len(ms) // 2]:5.1f} ms   all: " + " ".join(f"{m:.0f}" for m in ms))
    shutil.rmtree(RUN, ignore_errors=True)


if __name__ == "__main__":
    main()
