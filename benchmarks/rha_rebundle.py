"""Is a default model better with its Reverse-Half-Asleep encoder? Real files, not ELBOs (issue 14 item 4:
"if RHA helps a default model, re-bundle it").

Builds checkpoints of a bundled model with the encoder of each fine-tuning state given (decoder and
context net untouched, so coding costs the same and files stay portable), codes the model's whole
test set with each on the default exact path (default chains), decodes and verifies every file,
and reports real bpd with the paired per-image standard error of the difference to the bundled
encoder. Writes each candidate checkpoint under --out.

    python benchmarks/rha_rebundle.py mnist-bin-ctx runs/gpu1/runs/rha/mnist-bin-ctx/rha-prior-seed0 \\
        runs/gpu1/runs/rha/mnist-bin-ctx/rha-recon-seed0 --out runs/rha-rebundle \\
        --json benchmarks/results/gpu-study/rebundle-mnist-bin-ctx.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.checkpoint import load_model, save_checkpoint  # noqa: E402
from bbans_vae.data import run_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("states", nargs="+", help="fine-tuning state dirs (encoder.safetensors + state.json)")
    ap.add_argument("--out", default="runs/rha-rebundle")
    ap.add_argument("--json", required=True)
    ap.add_argument("--chains", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, config, _ = load_model(args.model)
    test = run_dataset(config).images("test")
    chains = args.chains or max(1, len(test) // 1000)
    dims = base.cfg.n_pixels
    rows, base_ideal = [], None
    for name, state in [("bundled", None)] + [(Path(s).name, Path(s)) for s in args.states]:
        model = copy.deepcopy(base)
        meta = dict(config)
        if state is not None:
            model.encoder.load_state_dict(load_file(str(state / G.REFIT_ENCODER)))
            st = json.loads((state / G.REFIT_STATE).read_text())
            # gpu_study states say what they were trained on; rha_study states are named by their dir
            trained_on = f"; {st['trained_on']}" if "trained_on" in st else ""
            meta.update(note=f"{args.model} with the encoder of {name} ({st['epochs']} epochs{trained_on})",
                        encoder_from=str(state), encoder_epochs=st["epochs"])
            meta.pop("weights_sha256", None)
            meta = save_checkpoint(Path(args.out) / f"{args.model}-{name}", model, meta)
        t0 = time.time()
        c = G.coded_bits(model.eval(), test, chains, 8, name=f"{args.model}-{name}", sha256_hex=meta["weights_sha256"])
        ideal = c["ideal_per_image"]
        base_ideal = ideal if base_ideal is None else base_ideal
        gain = G.paired_gap(base_ideal, ideal)
        rows.append({"encoder": name, "actual_bpd": c["actual_bits"] / (len(test) * dims),
                     "initial_bpd": c["initial_bits"] / (len(test) * dims),
                     "gain_vs_bundled_bpd": gain[0] / dims, "gain_se_bpd": gain[1] / dims,
                     "verified": c["verified"], "coder_path": c["coder_path"], "chains": c["chains"],
                     "weights_sha256": meta["weights_sha256"], "seconds": time.time() - t0})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.json).write_text(json.dumps({"model": args.model, "n_test_images": len(test),
                                           "command": "python " + " ".join(sys.argv), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
