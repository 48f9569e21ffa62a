"""Continue a training run from a checkpoint that came back without its Adam state (issue 14).

The GPU study (`gpu_study.sh`) trained the 60k seed run to epoch 242, but only the epoch-100
weights came back from the device (the lease's 64 MB cap). This makes a fresh run directory whose
resume state is that checkpoint at its epoch, with Adam's moments restarted (step 0: bias
correction makes the first steps ordinary fresh-Adam steps), so that

    vaecompress train -d mnist-bin -m mlp-paper -e 1000 --save-every 100 -o NEW --device cpu --threads 1

continues at epoch N+1 with the same per-epoch data order and noise seeds as an uninterrupted run
(they depend on the seed and the epoch only). The checkpoint itself is copied to
NEW/checkpoints/epoch_NNNN so the study measures it on the same run.

    python benchmarks/seed_continue.py runs/gpu1/runs/seed-full/checkpoints/epoch_0100 runs/seed-full-cpu
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.checkpoint import load_checkpoint, save_tensors_atomic, write_json_atomic  # noqa: E402
from bbans_vae.train import _adam_state_tensors  # noqa: E402


def main() -> None:
    src, new = Path(sys.argv[1]), Path(sys.argv[2])
    if (new / "resume").exists():
        sys.exit(f"{new}/resume exists: the run was already set up (re-run vaecompress train to resume it)")
    conf = json.loads((src / "config.json").read_text())
    epoch = int(conf["epoch"])
    model, _ = load_checkpoint(src, "cpu")
    lr = float(conf.get("lr", 1e-3))
    tensors, groups = _adam_state_tensors(torch.optim.Adam(model.parameters(), lr=lr))   # fresh: no moments
    ckpt = new / "checkpoints" / src.name
    shutil.copytree(src, ckpt)
    shutil.copytree(src, new / "resume")
    save_tensors_atomic(tensors, new / "resume" / "optimizer.safetensors")
    write_json_atomic(new / "resume" / "optimizer.json", groups)
    write_json_atomic(new / "continued_from.json", {"checkpoint": str(src), "epoch": epoch,
                                                   "weights_sha256": conf.get("weights_sha256"),
                                                   "adam": "moments restarted at this epoch",
                                                   "hardware_before": conf.get("hardware")})
    print(f"{new}: resume state at epoch {epoch} (Adam restarted); now run vaecompress train with -o {new}")


if __name__ == "__main__":
    main()
