"""Study: shrinking the amortization gap (issue 5, SPEC §8), in real bits.

For each model: the baseline encoder, a Reverse Half-Asleep (RHA) encoder fine-tuned with the
decoder frozen, and transmit-free refinement with K steps, alone and combined. Every row is a
real bitstream of the test images (encoded, decoded, verified), with its -ELBO and speed.

    python benchmarks/amortization_study.py --models mnist-bin-paper mnist --limit 10000 \
        --rha-epochs 5 --steps 0 1 2 5 10 --out benchmarks/results/amortization

The RHA encoders are trained by the ordinary CLI (`vaecompress train --init MODEL
--encoder-objective reverse-half-asleep`), so the commands are in the output too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.checkpoint import load_model  # noqa: E402
from bbans_vae.compress import compress, decompress  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402
from bbans_vae.train import dataset_neg_elbo_bits  # noqa: E402


def rha_encoder(model_ref: str, dataset: str, epochs: int, runs: Path, objective: str) -> tuple[str, str]:
    out = runs / f"{model_ref}-{objective}-{epochs}"
    cmd = [sys.executable, "-m", "cli.main", "train", "-d", dataset, "-m", "from-init", "--init", model_ref,
           "--encoder-objective", objective, "-e", str(epochs), "-o", str(out), "-q"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return str(out), " ".join(["vaecompress"] + cmd[3:])


def code_row(model, ref: str, sha: str, images: np.ndarray, steps: int, chains: int) -> dict:
    data, rep = compress(model, ref, sha, images, names_stem="test", n_chains=chains, refine_steps=steps,
                         with_neg_elbo=False, coder_path="float32")
    pixels, _, drep = decompress(data, model, sha)
    return {"actual_bpd": rep["actual_bpd"], "ideal_bpd": rep["ideal_bpd"], "bytes": len(data),
            "encode_images_per_second": rep["encode_images_per_second"],
            "decode_images_per_second": drep["decode_images_per_second"],
            "verified": bool(np.array_equal(pixels, images))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["mnist-bin-paper", "mnist"])
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 5, 10])
    ap.add_argument("--rha-epochs", type=int, default=5)
    ap.add_argument("--objectives", nargs="+", default=["reverse-half-asleep", "encoder-elbo"])
    ap.add_argument("--chains", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/amortization")
    ap.add_argument("--runs", default="runs/amortization")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.time()
    for ref in args.models:
        base, config, _ = load_model(ref)
        dataset = config["dataset"]
        images = load_dataset(dataset, "test")[: args.limit]
        symbols = images
        encoders = [("baseline", ref, None)]
        for obj in args.objectives:
            path, cmd = rha_encoder(ref, dataset, args.rha_epochs, Path(args.runs), obj)
            encoders.append((obj, path, cmd))
        for name, enc_ref, cmd in encoders:
            model, cfg, _ = load_model(enc_ref)
            nelbo = dataset_neg_elbo_bits(model, symbols, n_samples=4).mean() / model.cfg.n_pixels
            for k in args.steps:
                r = code_row(model, enc_ref, cfg["weights_sha256"], symbols, k, args.chains)
                row = {"model": ref, "dataset": dataset, "encoder": name, "refine_steps": k,
                       "neg_elbo_bpd": float(nelbo), "n_images": len(symbols), "train_command": cmd, **r}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"command": " ".join(sys.argv), "cpus": os.cpu_count(), "platform": platform.platform(),
              "torch": torch.__version__, "seconds": time.time() - t_start, "chains": args.chains,
              "protocol": f"first {args.limit} test images as one file, {args.chains} chains, latent bits 8; "
                          "float32 coder path for every row (refinement needs it); decoded and verified; -ELBO with 4 MC samples (encoder before refinement)",
              "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Amortization-gap study\n", f"Command: `{result['command']}`  ", f"Machine: {result['cpus']} CPUs, "
             f"{result['platform']}, torch {result['torch']}; {result['seconds']:.0f} s in all.  ",
             f"Protocol: {result['protocol']}.\n",
             "| model | encoder | K | real bpd | -ELBO bpd (K=0 enc) | enc img/s | dec img/s | verified |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['encoder']} | {r['refine_steps']} | {r['actual_bpd']:.4f} | "
                     f"{r['neg_elbo_bpd']:.4f} | {r['encode_images_per_second']:.0f} | "
                     f"{r['decode_images_per_second']:.0f} | {r['verified']} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
