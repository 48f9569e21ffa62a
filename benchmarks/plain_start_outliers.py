"""Why a few second-round images cost ~900 bits more at K > 0 (issue #14, rha-mnist-bin README).

Encodes the first N images of a study's 1,000-image code subset (10 chains, the float32 path with
K refinement steps, exactly as `rha_study.py` codes them) with a fine-tuned encoder, in three ways:

* `argmax`: the coder as it is. Round 1 is plain (an empty chain has no bits to give back); its
  lanes take z = the most probable bucket per dim, and push it with the uniform prior on top of
  the chain. Round 2 pops its z ~ q from those bits.
* `random-start`: every chain starts from 64 seeded random words, so round 1 pops with bits back
  from uniform bits (nothing is plain).
* `mean-bucket`: as `argmax`, but plain lanes take the bucket holding the posterior median.

For each it prints the mean per-image code length (bits at the coded latent), the images over
500 bits, and, for every pop, the lanes whose popped bucket has zero float64 mass under q (the
leaky quantisation keeps one unit of 2^24 for it, so it is codable but far in the tail). The
patched codecs change which bits are written; they are diagnostics, not a coder path.

    python benchmarks/plain_start_outliers.py runs/rha-study/mnist-bin/control-seed1 --refine 10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from safetensors.torch import load_file  # noqa: E402

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.ans import chains as CH  # noqa: E402
from bbans_vae.checkpoint import load_model  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402
from bbans_vae.ans.refine import DEFAULT_REFINE_LR  # noqa: E402
from bbans_vae.pipeline import lr_e4, make_coder_backend  # noqa: E402

MODES = ("argmax", "random-start", "mean-bucket")


def recording_posterior(pops: list, plain_z: str):
    """chains.posterior_codec that logs every pop (probs, z) and picks plain lanes' z by `plain_z`."""
    original = CH.posterior_codec

    def codec(probs: np.ndarray, plain: np.ndarray) -> CH.Codec:
        inner = original(probs, plain)

        def pop(msg):
            msg, z = inner.pop(msg)
            if plain_z == "mean-bucket":
                median = (np.cumsum(probs, -1) < 0.5 * probs.sum(-1, keepdims=True)).sum(-1)  # (lanes, D)
                z[plain] = median[plain]
            pops.append((probs, z.copy(), plain.copy()))
            return msg, z

        return CH.Codec(inner.push, pop, probs)

    return codec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("encoder_state", help="a fine-tuning state dir (encoder.safetensors)")
    ap.add_argument("--model", default="mnist-bin-v1", help="the model the encoder was fine-tuned from")
    ap.add_argument("--refine", type=int, default=10)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--chains", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, config, _ = load_model(args.model)
    model.encoder.load_state_dict(load_file(str(Path(args.encoder_state) / "encoder.safetensors")))
    model.eval()
    test = load_dataset(config["dataset"], "test")
    images = np.ascontiguousarray(test[G.random_subset(len(test), 1000, 0, G.SALT_SPLIT)][:args.images])
    # the backend rha_study's K > 0 files use (gaps.coded_bits): float32, default step size
    backend = make_coder_backend("float32", model, CH.DEFAULT_LATENT_BITS, args.refine,
                                 lr_e4(DEFAULT_REFINE_LR) if args.refine else 0)
    original = CH.posterior_codec
    for mode in MODES:
        pops: list = []
        CH.posterior_codec = recording_posterior(pops, "mean-bucket" if mode == "mean-bucket" else "argmax")
        words = None if mode != "random-start" else [
            np.random.default_rng(c).integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)
            for c in range(args.chains)]
        try:
            bits = CH.encode_images(model, images, args.chains, CH.DEFAULT_LATENT_BITS, backend=backend, start_words=words).ideal_bits
        finally:
            CH.posterior_codec = original
        zero_mass = []
        for rnd, (probs, z, plain) in enumerate(pops):
            q_z = np.take_along_axis(probs, z[..., None], -1)[..., 0]                          # (lanes, D)
            lanes = np.nonzero(((q_z == 0) & ~plain[:, None]).any(-1))[0]
            zero_mass += [rnd * args.chains + int(lane) for lane in lanes]
        plain_extreme = [int(((z == 0) | (z == 255)).sum()) for z in pops[0][1][pops[0][2]]] if pops[0][2].any() else []
        print(f"{mode:12s} K={args.refine}: mean {bits.mean():7.2f} bits/image over {len(bits)} images; "
              f"over 500 bits: {np.nonzero(bits > 500)[0].tolist()}; z popped in a zero-mass bucket: {zero_mass}; "
              f"plain round-1 dims at bucket 0 or 255 per lane: {plain_extreme}", flush=True)


if __name__ == "__main__":
    main()
