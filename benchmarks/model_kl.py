"""How many bits does z carry in each bundled model? (issue 18, item 1: "report the KL of every
bundled model": the gaps instrument needs a VAE whose encoder matters.)

For every bundled model on the full test set of its dataset: KL(q(z|x) || p(z)) in bits per image
and per pixel (exact Gaussian KL, ± standard error over images), its share of the test -ELBO
recorded in the model's config, and the active latent dimensions (Burda et al. 2016: Cov_x E_q[z_d]
> 0.01). Encoder passes only, one thread.

    OMP_NUM_THREADS=1 python benchmarks/model_kl.py --out benchmarks/results/models/kl.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.checkpoint import bundled_models, load_model  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402
from bbans_vae.objectives import gaussian_kl_bits  # noqa: E402


@torch.no_grad()
def kl_stats(model, images: np.ndarray, batch: int = 1000) -> dict:
    kls, mus = [], []
    for i in range(0, len(images), batch):
        mu, sigma = model.posterior(torch.from_numpy(np.ascontiguousarray(images[i:i + batch])))
        kls.append(gaussian_kl_bits(mu, sigma).double().numpy())   # (B,)
        mus.append(mu.double().numpy())                              # (B, D)
    kl, mu = np.concatenate(kls), np.concatenate(mus)
    return {"kl_bits": float(kl.mean()), "kl_bits_se": float(kl.std(ddof=1) / np.sqrt(len(kl))),
            "latent_dims": int(mu.shape[1]), "active_dims": int((mu.var(0) > 0.01).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Markdown table; a .json beside it")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, lines = [], ["| model | dataset | test -ELBO bpd | KL bits / image | KL bpd | KL share of -ELBO | active dims |",
                       "|---|---|---:|---:|---:|---:|---:|"]
    for name in sorted(bundled_models()):
        model, cfg, _ = load_model(name)
        model.eval()
        images = load_dataset(cfg["dataset"], "test")
        s = kl_stats(model, images)
        pixels = model.cfg.n_pixels
        elbo = cfg.get("metrics", {}).get("test_neg_elbo_bpd")
        row = {"model": name, "dataset": cfg["dataset"], "test_neg_elbo_bpd": elbo, "images": len(images),
               "kl_bpd": s["kl_bits"] / pixels, **s}
        rows.append(row)
        share = f"{row['kl_bpd'] / elbo:.1%}" if elbo else "-"
        lines.append(f"| {name} | {cfg['dataset']} | {elbo:.4f} | {s['kl_bits']:.1f} ± {s['kl_bits_se']:.2f} | "
                     f"{row['kl_bpd']:.4f} | {share} | {s['active_dims']} of {s['latent_dims']} |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows},
                                                        indent=1))


if __name__ == "__main__":
    main()
