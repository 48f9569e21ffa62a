"""Where more context phases gain (issue 18, item 1): per-pixel code length by pixel class.

For each model (bundled name, checkpoint or run directory) on a seeded random subset of the test
images: the -ELBO (10 seeded samples, the same noise for every model), the KL (bits carried by z)
and the reconstruction bits per pixel of each of the 7 pixel classes of the 2-level checkerboard
(`models.context.checkerboard_phases(H, W, 2)`): classes 0-3 are the (even, even) quarter, which
a 4-phase model codes without context (its phase 0) and a 7-phase model orders again in 4 phases;
classes 4-6 are the other quarters, phases 1-3 of the 4-phase order in both. Means ± standard
errors over images; differences to the first model are paired. Also reads the real-file results
of `vaecompress bench` runs given as --bench NAME=DIR.

    python benchmarks/ctx_phases_report.py --dataset mnist-bin --models mnist-bin-ctx runs/ctx-phases/bin-ctx4 \\
        runs/ctx-phases/bin-ctx7 --out benchmarks/results/ctx-phases/mnist-bin
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.checkpoint import load_model, write_json_atomic  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402
from bbans_vae.models.context import checkerboard_phases  # noqa: E402
from bbans_vae.objectives import gaussian_kl_bits  # noqa: E402

LN2 = math.log(2.0)
CLASS_NAMES = ["(0,0) mod 4", "(2,2) mod 4", "(0,2) mod 4", "(2,0) mod 4", "(odd,odd)", "(even,odd)", "(odd,even)"]


def pixel_bits(model, xf: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(B, P) -log2 p(x_i | z, context) per pixel."""
    lik = model.likelihood
    if model.cfg.likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(out, xf, reduction="none") / LN2
    mean, std = lik._split(out)
    return -torch.log2(lik._mass(xf, mean, std) + 2.0 ** -24)


@torch.no_grad()
def measure(model, x: np.ndarray, samples: int, seed: int, batch: int = 100) -> dict:
    cls = checkerboard_phases(*model.cfg.image_shape, 2).numpy()          # (P,) class per pixel
    elbo, kl, per_class = [], [], []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch])
        mu, sigma = model.posterior(xb)
        xf = model.flat_pixels(xb)
        rec = torch.zeros(xf.shape, dtype=torch.float64)
        for _ in range(samples):
            eps = torch.randn(mu.shape, generator=gen)
            rec += pixel_bits(model, xf, model.pixel_out(mu + sigma * eps, xf)).double()
        rec /= samples
        k = gaussian_kl_bits(mu, sigma).double()
        elbo.append(rec.sum(1) + k)
        kl.append(k)
        per_class.append(torch.stack([rec[:, torch.from_numpy(cls == c)].mean(1) for c in range(7)], 1))
    return {"neg_elbo_bits": torch.cat(elbo).numpy(), "kl_bits": torch.cat(kl).numpy(),
            "class_bpp": torch.cat(per_class).numpy()}


def se(a: np.ndarray) -> float:
    return float(a.std(ddof=1) / math.sqrt(len(a)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--bench", nargs="*", default=[], help="NAME=DIR of `vaecompress bench -o DIR` runs")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = load_dataset(args.dataset, "test")
    idx = np.sort(np.random.default_rng(args.seed).choice(len(x), min(args.images, len(x)), replace=False))
    x = np.ascontiguousarray(x[idx])
    rows, ref = [], None
    for name in args.models:
        model, cfg, path = load_model(name)
        model.eval()
        t0 = time.time()
        m = measure(model, x, args.samples, args.seed)
        P = model.cfg.n_pixels
        row = {"model": name, "path": str(path), "weights_sha256": cfg["weights_sha256"],
               "phases": int(getattr(model, "n_phases", 1)), "epoch": cfg.get("epoch"),
               "neg_elbo_bpd": float(m["neg_elbo_bits"].mean() / P), "neg_elbo_se_bpd": se(m["neg_elbo_bits"]) / P,
               "kl_bits": float(m["kl_bits"].mean()), "kl_se_bits": se(m["kl_bits"]),
               "class_bpp": [float(v) for v in m["class_bpp"].mean(0)],
               "class_se_bpp": [se(m["class_bpp"][:, c]) for c in range(7)], "seconds": time.time() - t0}
        if ref is None:
            ref = m
        d = (m["neg_elbo_bits"] - ref["neg_elbo_bits"]) / P
        row["vs_first_bpd"], row["vs_first_se_bpd"] = float(d.mean()), se(d)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("class_bpp", "class_se_bpp")}), flush=True)
    bench = {}
    for item in args.bench:
        name, d = item.split("=", 1)
        res = json.loads((Path(d) / "results.json").read_text())
        bench[name] = [r for r in res.get("bbans", res.get("rows", [])) if isinstance(r, dict)]
    out = {"command": " ".join(["python", "benchmarks/ctx_phases_report.py", *sys.argv[1:]]),
           "dataset": args.dataset, "images": len(x), "subset_seed": args.seed, "samples": args.samples,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "class_names": CLASS_NAMES,
           "bench": bench}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "report.json", out)
    lines = [f"{args.dataset}, {len(x)} seeded random test images, {args.samples}-sample -ELBO (same noise for "
             "every model), ± SE over images; Δ paired against the first row.", "",
             "| model | phases | epoch | -ELBO bpd | Δ vs first | KL bits |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['phases']} | {r['epoch']} | {r['neg_elbo_bpd']:.5f} ± {r['neg_elbo_se_bpd']:.5f} "
                     f"| {r['vs_first_bpd']:+.5f} ± {r['vs_first_se_bpd']:.5f} | {r['kl_bits']:.1f} ± {r['kl_se_bits']:.1f} |")
    lines += ["", "Reconstruction bits per pixel by pixel class (2-level checkerboard classes; a 4-phase model "
              "codes classes 0-3 from z alone):", "",
              "| model | " + " | ".join(f"{i}: {n}" for i, n in enumerate(CLASS_NAMES)) + " |",
              "|---|" + "---:|" * 7]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{v:.4f}" for v in r["class_bpp"]) + " |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
