"""Copy a trained checkpoint into the package as a bundled model, with its training record.

    python tools/bundle_model.py runs/mnist-bin-paper/checkpoints/epoch_0100 mnist-bin-paper [--note "..."]

Adds to config.json: bundled name, total training seconds (from the run's train_log.jsonl),
full-test-set -ELBO (1 sample, seed 0). The weights file is copied byte for byte, so its sha256
(already in config.json) is unchanged.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bbans_vae.checkpoint import BUNDLED_DIR, CONFIG, WEIGHTS, load_checkpoint, read_config, write_json_atomic  # noqa: E402
from bbans_vae.evaluate import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("name")
    ap.add_argument("--note", default=None)
    ap.add_argument("--init-model", default=None,
                    help="the checkpoint the run started from, if --init named a bundled model that has "
                         "been replaced since (default: resolve the run's --init now)")
    args = ap.parse_args()
    src = Path(args.checkpoint)
    config = read_config(src)
    model, _ = load_checkpoint(src)
    log = src.parent.parent / "train_log.jsonl"
    if log.exists():
        recs = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
        config["train_seconds"] = round(sum(r["seconds"] for r in recs if r["epoch"] <= config["epoch"]), 1)
    if config.get("init"):  # started from another model: record which, and its training time
        from bbans_vae.checkpoint import resolve_model
        init_conf = read_config(resolve_model(args.init_model or config["init"]))
        pinned = config.get("init_weights_sha256")
        if pinned and pinned != init_conf["weights_sha256"]:
            sys.exit(f"the run started from weights {pinned[:12]}, but {args.init_model or config['init']} is "
                     f"{init_conf['weights_sha256'][:12]}: pass --init-model with the model it started from")
        config["init_weights_sha256"] = init_conf["weights_sha256"]
        config["init_train_seconds"] = init_conf.get("train_seconds", 0.0) + init_conf.get("init_train_seconds", 0.0)
    res = evaluate(model, config["dataset"], "test")
    config.setdefault("metrics", {})["test_neg_elbo_bpd"] = res["neg_elbo_bpd"]
    config["bundled_name"] = args.name
    if args.note:
        config["note"] = args.note
    dst = BUNDLED_DIR / args.name
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / WEIGHTS, dst / WEIGHTS)
    write_json_atomic(dst / CONFIG, config)
    load_checkpoint(dst)  # verifies the sha256
    print(f"bundled {args.name}: test -ELBO {res['neg_elbo_bpd']:.4f} bpd, {config.get('train_seconds')} s of training")


if __name__ == "__main__":
    main()
