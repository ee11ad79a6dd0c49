#!/usr/bin/env bash
# Layer benchmark: strata's write_layer / unpack_layer against the shell pipelines they
# replace, on the same ~1 GiB / ~20k-file tree in the same run, page cache warm for both.
#
#   bench/layer.sh            # tree in $BENCH_DATA (default /work/bench-data/layer), kept
#   BENCH_RUNS=3 bench/layer.sh
#   BENCH_NICE=-10 bench/layer.sh   # both sides at a higher priority, on a busy machine
#
# Writes:  strata  = walk + tar + sha256(tar) + zstd -3 (all cores) + sha256(blob) -> file
#          baseline = tar -c --sort=name | zstd -T0 -3 | tee file | sha256sum  (one sha256 only)
# Unpacks: strata  = zstd -d + sha256(tar) + hostile-safe extraction (openat2, whiteouts)
#          baseline = zstd -d -c | tar -x
# Peak RSS from /usr/bin/time (the largest process of a pipeline). CPU seconds (user+sys,
# all threads and processes) are reported too: on a loaded machine they are the steadier
# measure of the work each side does.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BENCH_DATA:-/work/bench-data/layer}
RUNS=${BENCH_RUNS:-3}
NICE=${BENCH_NICE:-0}
TREE=$DATA/tree
WORK=$DATA/work
command -v /usr/bin/time >/dev/null || { echo "missing /usr/bin/time: apt-get install -y time" >&2; exit 1; }
command -v zstd >/dev/null || { echo "missing zstd: apt-get install -y zstd" >&2; exit 1; }

if [ ! -d "$TREE" ]; then
    mkdir -p "$DATA"
    python3 bench/layer_tree.py "$TREE.tmp"
    mv "$TREE.tmp" "$TREE"
fi
if [ ! -d "$DATA/half" ]; then
    python3 bench/layer_tree.py "$DATA/half.tmp" 0.5
    mv "$DATA/half.tmp" "$DATA/half"
fi
cargo build --release -q -p strata-store --example layer_bench
BIN=target/release/examples/layer_bench
BYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
FILES=$(find "$TREE" -type f | wc -l)
rm -rf "$WORK"; mkdir -p "$WORK"
tar -c -C "$TREE" . >/dev/null; tar -c -C "$DATA/half" . >/dev/null   # warm the page cache

# run LABEL CMD...: appends "LABEL seconds maxrss_kib user sys" to $WORK/results
run() {
    local label=$1; shift
    sync
    nice -n "$NICE" /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$@" >/dev/null
    echo "$label $(cat "$WORK/time")" >>"$WORK/results"
}
fresh() { rm -rf "$1"; mkdir -p "$1"; }

for _ in $(seq "$RUNS"); do
    run strata_write "$BIN" write "$TREE" "$WORK/strata.tar.zst"
    run base_write sh -c "tar -c --sort=name -C '$TREE' . | zstd -q -T0 -3 | tee '$WORK/base.tar.zst' | sha256sum"
    run strata_write_half "$BIN" write "$DATA/half" "$WORK/half.tar.zst"
    fresh "$WORK/out"; run strata_unpack "$BIN" unpack "$WORK/strata.tar.zst" "$WORK/out"
    fresh "$WORK/out"; run base_unpack sh -c "zstd -q -d -c '$WORK/strata.tar.zst' | tar -x -C '$WORK/out'"
done
rm -rf "$WORK/out"

python3 - "$WORK/results" "$BYTES" "$FILES" "$(stat -c %s "$WORK/strata.tar.zst")" "$(stat -c %s "$WORK/base.tar.zst")" <<'PY'
import sys, statistics
results, nbytes, files, ours, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
runs = {}
for line in open(results):
    label, secs, rss, user, system = line.split()
    runs.setdefault(label, []).append((float(secs), int(rss), float(user) + float(system)))
med = {k: statistics.median(s for s, _, _ in v) for k, v in runs.items()}
rss = {k: max(r for _, r, _ in v) for k, v in runs.items()}
cpu = {k: statistics.median(c for _, _, c in v) for k, v in runs.items()}
mib = nbytes / (1 << 20)
print(f"tree: {files} files, {mib:.0f} MiB; blob: strata {ours / (1 << 20):.0f} MiB, baseline {base / (1 << 20):.0f} MiB; median of {len(runs['strata_write'])} runs")
for what in ("write", "unpack"):
    s, b = med[f"strata_{what}"], med[f"base_{what}"]
    print(f"{what:6}  strata {s:6.2f} s {mib / s:6.0f} MiB/s  rss {rss[f'strata_{what}'] / 1024:5.0f} MiB | "
          f"baseline {b:6.2f} s {mib / b:6.0f} MiB/s  rss {rss[f'base_{what}'] / 1024:5.0f} MiB | speed ratio strata/baseline {b / s:.2f}x")
    print(f"        cpu seconds: strata {cpu[f'strata_{what}']:.1f}, baseline {cpu[f'base_{what}']:.1f} (baseline/strata {cpu[f'base_{what}'] / cpu[f'strata_{what}']:.2f}x)")
print(f"load average during the run: {open('/proc/loadavg').read().split()[1]} (5 min) on {__import__('os').cpu_count()} cpus")
print(f"memory flat: write of the half-size tree peaks at {rss['strata_write_half'] / 1024:.0f} MiB, full tree {rss['strata_write'] / 1024:.0f} MiB")
PY
