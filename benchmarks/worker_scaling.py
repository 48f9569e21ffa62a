"""Worker scaling of encode/decode on the exact path: wall seconds and CPU seconds (this process
plus its worker processes) for each worker count, on the same images and chains; the bytes and
the decoded pixels must be identical.

    python benchmarks/worker_scaling.py MODEL IMAGES.npy N CHAINS [WORKERS, default 1,2,1,2]

One JSON line per run (results: benchmarks/results/speed/workers-*.jsonl). On a shared machine
compare the CPU columns: equal total CPU with 2 workers means ~2x on 2 idle cores.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from bbans_vae.checkpoint import load_model
from bbans_vae.pipeline import compress, decompress


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system   # children: joined workers


def main() -> None:
    name, path, n, chains = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    workers = [int(v) for v in (sys.argv[5] if len(sys.argv) > 5 else "1,2,1,2").split(",")]
    model, cfg, _ = load_model(name)
    x = np.ascontiguousarray(np.load(path, mmap_mode="r")[:n])
    sha = cfg["weights_sha256"]
    compress(model, name, sha, x[:chains], n_chains=chains)            # builds the exact networks
    first = None
    for w in workers:
        c0, t0 = cpu_seconds(), time.perf_counter()
        data, _ = compress(model, name, sha, x, n_chains=chains, workers=w)
        c1, t1 = cpu_seconds(), time.perf_counter()
        pixels = decompress(data, model, sha, workers=w)[0]
        c2, t2 = cpu_seconds(), time.perf_counter()
        first = first or data
        assert data == first and np.array_equal(pixels, x)
        print(json.dumps({"model": name, "n": n, "chains": chains, "workers": w, "enc_wall_s": t1 - t0,
                          "enc_cpu_s": c1 - c0, "dec_wall_s": t2 - t1, "dec_cpu_s": c2 - c1, "bytes": len(data)}),
              flush=True)


if __name__ == "__main__":
    main()
