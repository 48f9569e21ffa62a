"""Study: shrinking the amortization gap (issue 5; README, "Shrinking the amortization gap"), in real bits.

For each model: the baseline encoder, a Reverse Half-Asleep (RHA) encoder fine-tuned with the
decoder frozen, and transmit-free refinement with K steps, alone and combined. Every row is a
real bitstream of the test images (encoded, decoded, verified), with its -ELBO and speed.

    python benchmarks/amortization_study.py      # defaults: mnist-bin mnist-bin-paper mnist, 10k, K 0 1 2 5 10

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
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.checkpoint import load_model  # noqa: E402
from bbans_vae.pipeline import compress, decompress  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402
from bbans_vae.gaps import elbo_bits, refit_encoder  # noqa: E402
from bbans_vae.ans.refine import DEFAULT_REFINE_LR, refine_posterior  # noqa: E402


def rha_encoder(model_ref: str, dataset: str, epochs: int, runs: Path, objective: str) -> tuple[str, str]:
    out = runs / f"{model_ref}-{objective}-{epochs}"
    cmd = [sys.executable, "-m", "vaecompress_cli.main", "train", "-d", dataset, "-m", "from-init", "--init", model_ref,
           "--encoder-objective", objective, "-e", str(epochs), "-o", str(out), "-q"]
    if not (out / "checkpoints" / f"epoch_{epochs:04d}").is_dir():
        subprocess.run(cmd, check=True, cwd=ROOT)
    return str(out / "checkpoints" / f"epoch_{epochs:04d}"), " ".join(["vaecompress"] + cmd[3:])


def code_row(model, ref: str, sha: str, images: np.ndarray, steps: int, chains: int) -> dict:
    data, rep = compress(model, ref, sha, images, names_stem="test", n_chains=chains, refine_steps=steps,
                         with_neg_elbo=False, coder_path="float32")
    pixels, _, drep = decompress(data, model, sha)
    return {"actual_bpd": rep["actual_bpd"], "ideal_bpd": rep["ideal_bpd"], "bytes": len(data),
            "encode_images_per_second": rep["encode_images_per_second"],
            "decode_images_per_second": drep["decode_images_per_second"],
            "verified": bool(np.array_equal(pixels, images))}


def refined_elbo_bits(model, images: np.ndarray, steps: int, samples: int, batch: int = 1000) -> np.ndarray:
    """Per-image -ELBO (gaps.elbo_bits, seeded) under the K-step refined posterior (K=0: the encoder)."""
    if steps == 0:
        return elbo_bits(model, images, samples)
    mus, sigmas = [], []
    for i in range(0, len(images), batch):
        mu, sigma = refine_posterior(model, torch.from_numpy(images[i:i + batch]), steps, DEFAULT_REFINE_LR)
        mus.append(mu)
        sigmas.append(sigma)
    return elbo_bits(model, images, samples, posterior=(torch.cat(mus), torch.cat(sigmas)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["mnist-bin", "mnist-bin-paper", "mnist"])
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 5, 10])
    ap.add_argument("--rha-epochs", type=int, default=5)
    ap.add_argument("--objectives", nargs="+",
                    default=["reverse-half-asleep", "reverse-half-asleep-recon", "encoder-elbo"])
    ap.add_argument("--chains", type=int, default=10)
    ap.add_argument("--refit-epochs", type=int, default=100)
    ap.add_argument("--elbo-samples", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/amortization")
    ap.add_argument("--runs", default="runs/amortization")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    refits = {}
    t_start = time.time()
    for ref in args.models:
        base, config, _ = load_model(ref)
        dataset = config["dataset"]
        images = load_dataset(dataset, "test")[: args.limit]
        # AIGG reference: the encoder refit on these test images with the decoder frozen (gaps.refit_encoder,
        # the code `vaecompress gaps` runs), once per model; every encoder shares the decoder.
        t0 = time.time()
        refit = refit_encoder(base, images, args.refit_epochs).model
        refit_nelbo = elbo_bits(refit, images, args.elbo_samples).mean() / base.cfg.n_pixels
        refits[ref] = {"refit_neg_elbo_bpd": float(refit_nelbo), "refit_epochs": args.refit_epochs,
                       "refit_seconds": time.time() - t0}
        print(json.dumps({"model": ref, **refits[ref]}), flush=True)
        encoders = [("baseline", ref, None)]
        for obj in args.objectives:
            path, cmd = rha_encoder(ref, dataset, args.rha_epochs, Path(args.runs), obj)
            encoders.append((obj, path, cmd))
        for name, enc_ref, cmd in encoders:
            model, cfg, _ = load_model(enc_ref)
            for k in args.steps:
                nelbo = refined_elbo_bits(model, images, k, args.elbo_samples).mean() / model.cfg.n_pixels
                r = code_row(model, enc_ref, cfg["weights_sha256"], images, k, args.chains)
                row = {"model": ref, "dataset": dataset, "encoder": name, "refine_steps": k,
                       "neg_elbo_bpd": float(nelbo), "aigg_bpd": float(nelbo - refit_nelbo),
                       "n_images": len(images), "train_command": cmd, **r}
                rows.append(row)
                print(json.dumps(row), flush=True)
                save(result_of(args, rows, refits, t_start), out)  # partial results survive an interruption
    save(result_of(args, rows, refits, t_start), out)


def result_of(args, rows: list, refits: dict, t_start: float) -> dict:
    return {"command": "python " + " ".join(sys.argv), "cpus": os.cpu_count(), "platform": platform.platform(),
              "torch": torch.__version__, "constriction": version("constriction"), "torch_threads": args.threads,
              "seconds": time.time() - t_start, "chains": args.chains, "refits": refits,
              "protocol": (f"first {args.limit} test images of each model's dataset as one file, {args.chains} chains, "
                           f"latent bits 8, refinement lr {DEFAULT_REFINE_LR}; float32 coder path for every row "
                           "(refinement needs it); every file decoded and compared with the input. -ELBO: "
                           f"{args.elbo_samples} seeded MC samples per image under the posterior actually coded "
                           f"(K refinement steps). AIGG = that -ELBO minus the -ELBO of an encoder refit on the same "
                           f"test images for {args.refit_epochs} epochs with the decoder frozen (gaps.refit_encoder, "
                           f"from the baseline encoder; one reference per model). RHA/control encoders: "
                           f"{args.rha_epochs} epochs on the training set with the decoder frozen. "
                           f"Speeds: {args.threads} torch thread(s), one process."),
              "rows": rows}


def save(result: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2))
    write_readme(result, out)


def write_readme(result: dict, out: Path) -> None:
    rows = result["rows"]
    lines = ["# Amortization-gap study (issue 5)\n", f"Command: `{result['command']}`  ",
             f"Machine: {result['cpus']} CPUs, {result['platform']}, torch {result['torch']}, constriction "
             f"{result['constriction']}; {result['seconds']:.0f} s in all.  ", f"Protocol: {result['protocol']}\n",
             "Encoders: `baseline` = the bundled model; `reverse-half-asleep` = encoder trained on half real, half "
             "prior-dreamed batches; `reverse-half-asleep-recon` = half reconstruction-dreamed; `encoder-elbo` = the "
             "control: the same encoder-only fine-tuning on real images only. K = transmit-free refinement steps.\n",
             "| model | encoder | K | real bpd | vs baseline K=0 | -ELBO bpd | AIGG bpd | enc img/s | dec img/s | verified |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["model"]: r["actual_bpd"] for r in rows if r["encoder"] == "baseline" and r["refine_steps"] == 0}
    for r in rows:
        rel = 100 * (r["actual_bpd"] / base[r["model"]] - 1)
        lines.append(f"| {r['model']} | {r['encoder']} | {r['refine_steps']} | {r['actual_bpd']:.4f} | {rel:+.2f}% | "
                     f"{r['neg_elbo_bpd']:.4f} | {r['aigg_bpd']:+.4f} | {r['encode_images_per_second']:.0f} | "
                     f"{r['decode_images_per_second']:.0f} | {r['verified']} |")
    lines.append("\nAIGG references (refit encoder -ELBO, bpd): " + ", ".join(
        f"{m} {v['refit_neg_elbo_bpd']:.4f}" for m, v in result["refits"].items()))
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
