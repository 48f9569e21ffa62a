"""Multi-sample bits-back (#18 item 2): real file sizes with `--importance-samples K` for K in
{1, 2, 8}, every file decoded and verified, on a seeded random subset of each test set, including
out of distribution (fashion-mnist coded with an MNIST model). Exact coder path, 1 thread.

    OMP_NUM_THREADS=1 python benchmarks/importance_study.py [N] > benchmarks/results/importance/README.md
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import bbans_vae as bv
from bbans_vae.data import load_dataset

CASES = [("mnist-bin", "mnist-bin"), ("mnist-bin-ctx", "mnist-bin"), ("mnist", "mnist"), ("mnist-ctx", "mnist"),
         ("fashion-mnist-ctx", "fashion-mnist"), ("mnist-ctx", "fashion-mnist"), ("mnist", "fashion-mnist")]
KS = (1, 2, 8)
SEED = 18


def main(n: int) -> None:
    rows = []
    print(f"# Multi-sample bits-back (coupled BB-IS)\n\n{n} seeded random test images per row "
          f"(`np.random.default_rng({SEED}).choice`), exact path, 1 thread, chains = 1 per 100 images, "
          "real files decoded and verified.\n")
    print("| model | dataset | K | actual bpd | ideal bpd | vs K=1 | enc img/s | dec img/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, ds in CASES:
        images = load_dataset(ds, "test")
        x = images[np.sort(np.random.default_rng(SEED).choice(len(images), n, replace=False))]
        codec = bv.load(name)
        base = None
        for k in KS:
            data, rep = codec.compress(x, chains=max(1, n // 100), importance_samples=k, report=True)
            t = time.perf_counter()
            ok = np.array_equal(codec.decompress(data), x)
            dec = n / (time.perf_counter() - t)
            assert ok
            base = rep["actual_bpd"] if base is None else base
            row = dict(model=name, dataset=ds, k=k, actual_bpd=rep["actual_bpd"], ideal_bpd=rep["ideal_bpd"],
                       rel=rep["actual_bpd"] / base - 1, enc=rep["encode_images_per_second"], dec=dec)
            rows.append(row)
            print(f"| {name} | {ds} | {k} | {row['actual_bpd']:.4f} | {row['ideal_bpd']:.4f} | "
                  f"{100 * row['rel']:+.2f}% | {row['enc']:.0f} | {dec:.0f} |", flush=True)
    Path("benchmarks/results/importance/results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
