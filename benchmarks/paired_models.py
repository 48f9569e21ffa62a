"""Is a re-trained model better than the one it would replace? Real files, paired per image.

Codes the whole test set of a dataset with each model as one real .vae file on the default exact
path (10 chains, `gaps.coded_bits`), decodes and verifies every file, and reports real bpd and the
difference of each model to the first one with its paired per-image standard error (code length
of each image at its coded latent). Results are cached per model in --out (resumable).

    OMP_NUM_THREADS=1 python benchmarks/paired_models.py --dataset mnist-bin \\
        --models mnist-bin-ctx-v2 mnist-bin-ctx --out benchmarks/results/ctx-ft/mnist-bin
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.checkpoint import load_model, write_json_atomic  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402


def slug(ref: str) -> str:
    return ref.strip("/").replace("/", "_")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", nargs="+", required=True, help="the first is the reference")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--chains", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = np.ascontiguousarray(load_dataset(args.dataset, "test"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows, per = [], {}
    for ref in args.models:
        cache = args.out / f"{slug(ref)}.json"
        if cache.is_file():
            row = json.loads(cache.read_text())
        else:
            model, cfg, _ = load_model(ref)
            t0 = time.time()
            c = G.coded_bits(model, x, args.chains, 8, name=slug(ref), sha256_hex=cfg["weights_sha256"])
            dims = len(x) * model.cfg.n_pixels
            row = {"model": ref, "weights_sha256": cfg["weights_sha256"], "coder_path": c["coder_path"],
                   "images": len(x), "actual_bpd": c["actual_bits"] / dims, "ideal_bpd": c["ideal_bits"] / dims,
                   "initial_bpd": c["initial_bits"] / dims, "verified": c["verified"],
                   "encode_seconds": c["encode_seconds"], "decode_seconds": c["decode_seconds"],
                   "seconds": time.time() - t0}
            np.save(args.out / f"{slug(ref)}.ideal.npy", c["ideal_per_image"] / model.cfg.n_pixels)
            write_json_atomic(cache, row)
        per[ref] = np.load(args.out / f"{slug(ref)}.ideal.npy")
        rows.append(row)
    base = per[args.models[0]]
    for row in rows:
        d = base - per[row["model"]]          # bpd per image, positive: better than the reference
        row["gain_bpd"] = float(d.mean()) + 0.0
        row["gain_se_bpd"] = float(d.std(ddof=1) / np.sqrt(len(d)))
    write_json_atomic(args.out / "results.json", {
        "command": " ".join(["python", "benchmarks/paired_models.py", *sys.argv[1:]]), "dataset": args.dataset,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "chains": args.chains, "rows": rows})
    print(f"| model | real bpd | gain vs {args.models[0]} (paired SE) | encode s | decode s |\n|---|---:|---:|---:|---:|")
    for r in rows:
        gain = "(reference)" if r["model"] == args.models[0] else f"{r['gain_bpd']:+.5f} ± {r['gain_se_bpd']:.5f}"
        print(f"| {r['model']} | {r['actual_bpd']:.5f} | {gain} | {r['encode_seconds']:.1f} | {r['decode_seconds']:.1f} |")


if __name__ == "__main__":
    main()
