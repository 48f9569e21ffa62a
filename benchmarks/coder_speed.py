"""Coder throughput per bundled model, measured in CPU seconds inside one process (robust on a
shared machine), next to the bare float32 forward passes the coder cannot avoid.

For each model: encode and decode `--n` test images of its dataset in `--chains` chains on the
default (exact) coder path, one worker; `bare` = the float32 encoder, decoder and (context
models) the 4 context-net phases on the same batches of `--chains` images, one torch thread.
`ratio` = coding CPU time / bare CPU time (the limit of this design: the exact path's float64
integer GEMMs and the ANS calls on top of the networks).

    python benchmarks/coder_speed.py [--models a,b] [--n 1000] [--chains 10] [--json OUT]

Works on older checkouts too (bbans_vae.compress before the layout change), so a baseline can be
measured with PYTHONPATH=<old checkout> in the same session.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def _api():
    try:
        from bbans_vae.pipeline import compress, decompress
    except ImportError:                                  # before the layout change
        from bbans_vae.compress import compress, decompress
    return compress, decompress


def bare_forward_seconds(model, x: np.ndarray, batch: int) -> float:
    """CPU seconds of the float32 networks the coder runs, on batches of `batch` images."""
    torch.set_num_threads(1)
    t = time.process_time()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
            mu, _ = model.posterior(xb)
            out = model.decode(mu)
            phases = getattr(model, "n_phases", 1)
            if phases > 1:
                xf = model.flat_pixels(xb)
                for p in range(phases):
                    model.phase_out(out, xf, p)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from bbans_vae.checkpoint import bundled_models, load_model
    from bbans_vae.data import load_dataset
    compress, decompress = _api()
    names = args.models.split(",") if args.models else sorted(bundled_models())
    rows = []
    for name in names:
        model, config, _ = load_model(name)
        x = load_dataset(config["dataset"], "test")[:args.n]
        sha = config["weights_sha256"]
        kw = {"workers": args.workers} if args.workers != 1 else {}
        compress(model, name, sha, x[:args.chains], n_chains=args.chains, with_neg_elbo=False)   # build nets
        t = time.process_time()
        data, report = compress(model, name, sha, x, n_chains=args.chains, with_neg_elbo=False, **kw)
        enc = time.process_time() - t
        t = time.process_time()
        pixels = decompress(data, model, sha, **kw)[0]
        dec = time.process_time() - t
        assert np.array_equal(pixels, x)
        bare = bare_forward_seconds(model, x, args.chains)
        row = {"model": name, "n_images": len(x), "chains": args.chains, "bytes": len(data),
               "actual_bpd": report.get("actual_bpd"), "encode_cpu_images_per_s": len(x) / enc,
               "decode_cpu_images_per_s": len(x) / dec, "bare_forward_cpu_images_per_s": len(x) / bare,
               "encode_over_bare": enc / bare, "decode_over_bare": dec / bare,
               "code": os.path.dirname(os.path.dirname(sys.modules["bbans_vae"].__file__))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
