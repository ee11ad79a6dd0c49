#!/usr/bin/env python3
"""Makes the benchmark tree for bench/layer.sh: ~1 GiB in ~20k files over 400 directories.

Sizes are mixed (14k small 0.5-16 KiB, 5.8k medium 16-200 KiB, 200 large 1-3 MiB); content
is about 60% text-like (compresses ~3x with zstd -3) and 40% random (incompressible), cut
from 64 MiB pools at random offsets so files do not repeat each other inside zstd's window.
Deterministic (fixed seed): the same tree, byte for byte, on every run.
"""
import os
import random
import sys

root = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rng = random.Random(20261128)
POOL = 64 << 20

words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(5000)]
text = bytearray()
while len(text) < POOL:
    line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
    text += f"{len(text):08x}: {line}\n".encode()
text = bytes(text[:POOL])
binary = rng.randbytes(POOL)

def sizes():
    for _ in range(int(14000 * scale)):
        yield rng.randint(512, 16 << 10)
    for _ in range(int(5800 * scale)):
        yield rng.randint(16 << 10, 200 << 10)
    for _ in range(int(200 * scale)):
        yield rng.randint(1 << 20, 3 << 20)

total = 0
for i, size in enumerate(sizes()):
    d = os.path.join(root, f"d{i % 20:02d}", f"sub{(i // 20) % 20:02d}")
    os.makedirs(d, exist_ok=True)
    pool = text if rng.random() < 0.6 else binary
    start = rng.randrange(0, POOL - size)
    with open(os.path.join(d, f"f{i:05d}.dat"), "wb") as f:
        f.write(pool[start:start + size])
    total += size
print(f"{i + 1} files, {total / (1 << 20):.0f} MiB in {root}")
