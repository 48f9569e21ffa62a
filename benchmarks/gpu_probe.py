"""Milliseconds per lockstep Adam step of the GPU study's workloads, each alone on the GPU, with and
without CUDA graphs: what a plan for `benchmarks/gpu_study.py` on a given machine should assume.
(The first GPU run shared the chip between 4-7 processes under MPS and ran at 2-8 ms per step.)

    python benchmarks/gpu_probe.py --steps 300 --json OUT.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.batched import (LockstepTrainer, Stacked, neg_elbo_bits_stacked, shared_pixel_out,  # noqa: E402
                               stacked_pixel_out)
from bbans_vae.checkpoint import load_model  # noqa: E402
from bbans_vae.models import build_model, preset_config  # noqa: E402

B = 100


def workload(kind: str, R: int, device: str):
    """(params, loss, inputs) of one study workload with R stacked models, on random images."""
    if kind in ("train", "refit"):
        cfg = preset_config("mlp-paper")
        models = [build_model(cfg) for _ in range(R)]
        enc = Stacked([m.encoder for m in models]).to(device)
        dec = Stacked([m.decoder for m in models]).to(device)
        params = list(enc.parameters()) + (list(dec.parameters()) if kind == "train" else [])
        if kind == "refit":
            dec.requires_grad_(False)
        pix, model = stacked_pixel_out(dec), models[0]
        batch = B
    else:                                   # rha-mlp / rha-ctx: shared frozen decoder, 2B images per run
        model = load_model("mnist-bin-paper" if kind == "rha-mlp" else "mnist-bin-ctx")[0].to(device).eval()
        model.requires_grad_(False)
        enc = Stacked([copy.deepcopy(model.encoder) for _ in range(R)]).to(device)
        params, pix, batch = list(enc.parameters()), shared_pixel_out(model), 2 * B
    P, D = model.cfg.n_pixels, model.cfg.latent_dim
    x_all = (torch.rand(10_000, P, device=device) < 0.2).float()
    inputs = {"idx": torch.randint(0, 10_000, (R, batch), device=device)}

    def loss(inp):
        xf = x_all[inp["idx"]]                                                    # (R, batch, P)
        if kind.startswith("rha"):
            with torch.no_grad():                                                 # the dreams of half the batch
                dream = model.sample_given(torch.randn(R * B, D, device=device)).view(R, B, P)
            xf = torch.cat([xf[:, :B], dream], 1)
        return neg_elbo_bits_stacked(model, enc, pix, xf, torch.randn(R, batch, D, device=device)).mean(-1)

    return params, loss, inputs


def time_steps(trainer: LockstepTrainer, steps: int, device: str) -> float:
    for _ in range(10):
        trainer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [("train", 1, True), ("train", 1, False), ("train", 3, True), ("refit", 12, True), ("refit", 36, True),
             ("rha-mlp", 9, True), ("rha-ctx", 9, True), ("rha-ctx", 9, False)]
    rows = []
    for kind, R, graph in cases:
        if device == "cpu" and graph:
            continue
        params, loss, inputs = workload(kind, R, device)
        t0 = time.perf_counter()
        trainer = LockstepTrainer(params, loss, inputs, lr=1e-3, use_graph=graph)
        setup = time.perf_counter() - t0
        ms = time_steps(trainer, args.steps if kind != "rha-ctx" else max(20, args.steps // 5), device)
        row = {"workload": kind, "stacked": R, "graph": trainer.graph is not None, "graph_error": trainer.graph_error,
               "ms_per_step": round(ms, 3), "setup_seconds": round(setup, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                                               "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
