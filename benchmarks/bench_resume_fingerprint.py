"""Benchmark of the per-shard content fingerprint a resumed run takes of every shard (``helpers.hashing``).

A resumed run fingerprints every shard of the corpus before it decides what to reuse, so the fingerprint
must cost little beside reading the shards. This writes N shard files of S MiB (random bytes) and reports,
in the same run, the time of ``file_fingerprint`` over all of them (size + mtime + SHA-256 of the first and
last 64 KiB) beside the baseline of a full SHA-256 of every file (``sha256_file``).

The page cache makes both fast on a second pass, so the files are written first and the fingerprint, which
reads least, is timed before the full hash; on a cold disk or network storage the gap is larger.

    python benchmarks/bench_resume_fingerprint.py [--n 200] [--mib 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from helpers.hashing import file_fingerprint, sha256_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="shard files")
    parser.add_argument("--mib", type=float, default=8.0, help="size of each file in MiB")
    args = parser.parse_args()
    size = int(args.mib * (1 << 20))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i:05d}.tar" for i in range(args.n)]
        block = os.urandom(min(size, 1 << 20))
        for path in paths:
            with open(path, "wb") as fh:
                for start in range(0, size, len(block)):
                    fh.write(block[: min(len(block), size - start)])
        started = time.perf_counter()
        for path in paths:
            file_fingerprint(path)
        fingerprint_s = time.perf_counter() - started
        started = time.perf_counter()
        for path in paths:
            sha256_file(path)
        full_s = time.perf_counter() - started
    total_mib = args.n * args.mib
    print(f"{args.n} shards x {args.mib:g} MiB = {total_mib:g} MiB")
    print(
        f"file_fingerprint (size, mtime, 2 x 64 KiB sha256): {fingerprint_s:8.3f} s  ({1e3 * fingerprint_s / args.n:.3f} ms/shard)"
    )
    print(f"baseline: full sha256 of every file              : {full_s:8.3f} s  ({1e3 * full_s / args.n:.3f} ms/shard)")
    print(f"speed-up over the full hash: {full_s / max(fingerprint_s, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
