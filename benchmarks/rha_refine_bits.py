"""How much of the RHA gain survives refinement, in real bits (issue 14, item 4: K in {0, 2, 10}).

The same decoder with three encoders: the baseline (bundled mnist-bin-ctx-v1), its Reverse
Half-Asleep fine-tune with prior dreams (seed 0; bundled as mnist-bin-ctx on 2026-12-04, mnist-bin-ctx-v2 since) and
the one with reconstruction dreams (seed 0; `runs/rha-rebundle`, made by `rha_rebundle.py`).
Each codes the same seeded random subset of the test images as one real file with K transmit-free
refinement steps (K = 0: the default exact path; K > 0: float32, as refinement needs it); every
file is decoded and verified (`gaps.coded_bits`). Differences to the baseline are paired per image
(code lengths at the coded latents) with their standard error. Results are cached per row.

    OMP_NUM_THREADS=1 python benchmarks/rha_refine_bits.py --out benchmarks/results/rha-refine
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

ENCODERS = {"baseline": "mnist-bin-ctx-v1", "rha-prior": "mnist-bin-ctx-v2",
            "rha-recon": "runs/rha-rebundle/mnist-bin-ctx-rha-recon-seed0"}


def table_lines(rows: list[dict]) -> list[str]:
    """Markdown table of the rows; the baseline's own same-K gain is the reference, not a number."""
    def signed(x: float) -> str:
        return f"{x + 0.0:+.5f}".replace("-0.00000", "+0.00000")   # no "-0.00000" from rounding
    lines = ["| K | encoder | real bpd | gain vs baseline, same K (paired SE) | gain vs baseline at K=0 |",
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        same_k = ("(reference)" if r["variant"] == "baseline"
                  else f"{signed(r['gain_vs_baseline_bpd'])} ± {r['gain_se_bpd']:.5f}")
        k0 = ("(reference)" if r["variant"] == "baseline" and r["refine_steps"] == 0
              else f"{signed(r['gain_vs_baseline_k0_bpd'])} ± {r['gain_vs_baseline_k0_se_bpd']:.5f}")
        lines.append(f"| {r['refine_steps']} | {r['variant']} | {r['actual_bpd']:.5f} | {same_k} | {k0} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=2000, help="seeded random test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refine", nargs="+", type=int, default=[0, 2, 10])
    ap.add_argument("--chains", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = load_dataset("mnist-bin", "test")
    idx = np.sort(np.random.default_rng(args.seed).choice(len(x), args.images, replace=False))
    x = np.ascontiguousarray(x[idx])
    args.out.mkdir(parents=True, exist_ok=True)
    rows, per = [], {}
    for k in args.refine:
        for variant, ref in ENCODERS.items():
            name = f"{variant}-k{k}"
            cache = args.out / f"{name}.json"
            if cache.is_file():
                row = json.loads(cache.read_text())
            else:
                model, cfg, _ = load_model(ref)
                t0 = time.time()
                c = G.coded_bits(model, x, args.chains, 8, None if k == 0 else "float32", refine_steps=k,
                                 name=name, sha256_hex=cfg["weights_sha256"])
                dims = len(x) * model.cfg.n_pixels
                row = {"variant": variant, "model": ref, "weights_sha256": cfg["weights_sha256"], "refine_steps": k,
                       "coder_path": c["coder_path"], "actual_bpd": c["actual_bits"] / dims,
                       "ideal_bpd": c["ideal_bits"] / dims, "initial_bpd": c["initial_bits"] / dims,
                       "verified": c["verified"], "seconds": time.time() - t0}
                np.save(args.out / f"{name}.ideal.npy", c["ideal_per_image"])
                write_json_atomic(cache, row)
            per[(variant, k)] = np.load(args.out / f"{name}.ideal.npy") / 784
            print(json.dumps(row), flush=True)
            rows.append(row)
    for row in rows:
        base = per[("baseline", row["refine_steps"])]
        d = per[(row["variant"], row["refine_steps"])] - base
        row["gain_vs_baseline_bpd"] = float(-d.mean())
        row["gain_se_bpd"] = float(d.std(ddof=1) / np.sqrt(len(d))) if row["variant"] != "baseline" else 0.0
        k0 = per[("baseline", 0)] - per[(row["variant"], row["refine_steps"])]
        row["gain_vs_baseline_k0_bpd"] = float(k0.mean())
        row["gain_vs_baseline_k0_se_bpd"] = float(k0.std(ddof=1) / np.sqrt(len(k0)))
    meta = {"command": " ".join(["python", "benchmarks/rha_refine_bits.py", *sys.argv[1:]]),
            "images": args.images, "subset_seed": args.seed, "chains": args.chains,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    write_json_atomic(args.out / "results.json", meta)
    lines = table_lines(rows)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
