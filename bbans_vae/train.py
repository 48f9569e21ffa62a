"""Training a VAE by maximising the ELBO (minimising `neg_elbo_bits`), resumable from its run dir.

Run directory layout
    run.json                      the training arguments (fixed at the first start)
    train_log.jsonl               one JSON line per epoch: train loss, test -ELBO at saves, time
    checkpoints/epoch_NNNN/       a checkpoint (see checkpoint.py) every --save-every epochs + last
    resume/                       newest model + Adam state, rewritten each epoch

Determinism: epoch e shuffles with a generator seeded by (seed, e), and the reparameterisation
noise too, so a resumed run continues as if never stopped (up to float non-associativity).
The fixed training subset (`train_size`) is `RandomState(seed).permutation(n)[:train_size]`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from .checkpoint import (CONFIG, load_checkpoint, save_checkpoint, save_tensors_atomic, write_json_atomic)
from .data import Dataset, run_dataset
from .errors import ModelError, VaeCompressError
from .models import VAE, ModelConfig, build_model
from .objectives import dataset_neg_elbo_bits, neg_elbo_bits, reverse_half_asleep_objective
from .optim import minimise, shuffled_batches


@dataclass
class TrainArgs:
    dataset: str
    model: dict                 # ModelConfig.to_dict()
    epochs: int
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    train_size: int | None = None
    save_every: int | None = None
    data_dir: str | None = None
    init: str | None = None         # start from this checkpoint's weights (model reference)
    objective: str = "elbo"         # see OBJECTIVES
    data: dict | None = None        # a dataset from a path: its record (data.open_dataset); None: built-in


OBJECTIVES = {
    "elbo": "train encoder and decoder on the ELBO (ordinary VAE training)",
    "encoder-elbo": "decoder frozen; encoder trained on the ELBO of real images (control)",
    "reverse-half-asleep": "decoder frozen; encoder on half real, half prior-dreamed images (Zhang et al. 2022)",
    "reverse-half-asleep-recon": "decoder frozen; encoder on half real, half reconstruction-dreamed images",
}


def _loss_fn(objective: str):
    if objective in ("elbo", "encoder-elbo"):
        return lambda model, x, gen: neg_elbo_bits(model, x, gen=gen).mean()
    if objective == "reverse-half-asleep":
        return reverse_half_asleep_objective("prior")
    if objective == "reverse-half-asleep-recon":
        return reverse_half_asleep_objective("recon")
    raise VaeCompressError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")


def _data_summary(record: dict | None) -> str:
    if not record:
        return "a built-in dataset"
    return f"{record.get('path')}, {record.get('n_images')} images, sha256 {str(record.get('sha256'))[:16]}..."


def train_subset_indices(n_total: int, train_size: int | None, seed: int) -> np.ndarray:
    if train_size is None or train_size >= n_total:
        return np.arange(n_total)
    if train_size < 1:
        raise VaeCompressError("--train-size must be at least 1")
    return np.sort(np.random.RandomState(seed).permutation(n_total)[:train_size])


def load_train_images(args: TrainArgs, dataset: Dataset | None = None) -> np.ndarray:
    ds = dataset or run_dataset(asdict(args), args.data_dir)
    images = ds.images("train")
    return images[train_subset_indices(len(images), args.train_size, args.seed)]


def _adam_state_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_adam_state(opt: torch.optim.Optimizer, tensors: dict, groups: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise VaeCompressError("--device cuda: no CUDA device is available (use --device cpu)")
    return device


def train(run_dir: Path, args: TrainArgs, device: str = "cpu", meta: dict | None = None,
          on_batch: Callable[[float], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, dataset: Dataset | None = None) -> Path:
    """Train (or resume) into run_dir; returns the last checkpoint directory.

    `dataset`: `args.dataset` already opened (`data.open_dataset`); else it is opened from `args`.

    With `args.init`, training starts from that checkpoint's weights; with an encoder-only
    `args.objective`, the decoder is frozen and only the encoder is optimised.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_json = run_dir / "run.json"
    if run_json.exists():
        saved = json.loads(run_json.read_text())
        for key in ("dataset", "data", "model", "batch_size", "lr", "seed", "train_size", "init", "objective"):
            if saved.get(key) != asdict(args).get(key):
                if key == "data":
                    raise VaeCompressError(f"{run_dir} was started on other data ({_data_summary(saved.get(key))}) "
                                           f"than now ({_data_summary(args.data)}); use a new --out directory")
                raise VaeCompressError(f"{run_dir} was started with {key}={saved.get(key)!r}, "
                                       f"not {asdict(args).get(key)!r}; use a new --out directory")
        saved["epochs"] = args.epochs
        saved["save_every"] = args.save_every
        run_record = saved
    else:
        run_record = {**asdict(args), **(meta or {})}
    write_json_atomic(run_json, run_record)

    ds = dataset or run_dataset(asdict(args), args.data_dir)
    cfg = ModelConfig.from_dict(args.model)
    if cfg.pixel_kind != ds.pixel_kind or cfg.array_shape != tuple(ds.image_shape):
        raise ModelError(f"architecture codes {cfg.pixel_kind} {cfg.array_shape} images but dataset "
                         f"{args.dataset} is {ds.pixel_kind} {ds.image_shape}")
    train_x = torch.from_numpy(load_train_images(args, ds)).to(device)
    test_x = ds.images("test")

    loss_fn = _loss_fn(args.objective)
    encoder_only = args.objective != "elbo"
    if encoder_only and not args.init:
        raise VaeCompressError(f"objective {args.objective} trains only the encoder: pass --init MODEL")

    def trainable(m: VAE):
        if encoder_only:
            m.decoder.requires_grad_(False)
            return m.encoder.parameters()
        return m.parameters()

    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device)
    resume = run_dir / "resume"
    if args.init:
        from .checkpoint import load_model
        init_model, init_conf, _ = load_model(args.init, device)
        if "init_weights_sha256" not in run_record and not (resume / CONFIG).is_file():
            # pin which weights --init named when the run started (a bundled name can be updated)
            run_record["init_weights_sha256"] = init_conf["weights_sha256"]
            write_json_atomic(run_json, run_record)
        if init_model.cfg == cfg:
            model = init_model
        elif replace(init_model.cfg, arch=cfg.arch, context_channels=cfg.context_channels) == cfg:
            # an mlp checkpoint starts a context model: same encoder/decoder, fresh context net
            # (a colour mlp's 1x1 channel-context net does not fit a ctx model's 3x3 one: not copied)
            state = {k: v for k, v in init_model.state_dict().items() if not k.startswith("context.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("context.") for k in missing):
                raise ModelError(f"--init {args.init}: weights do not fit {cfg.arch} ({missing}, {unexpected})")
        else:
            raise ModelError(f"--init {args.init} has architecture {init_model.cfg}, not {cfg}")
    opt = torch.optim.Adam(trainable(model), lr=args.lr)
    start_epoch = 1
    if (resume / CONFIG).is_file():
        model, rconf = load_checkpoint(resume, device)
        opt = torch.optim.Adam(trainable(model), lr=args.lr)
        _load_adam_state(opt, load_file(str(resume / "optimizer.safetensors"), device=device),
                         json.loads((resume / "optimizer.json").read_text()))
        start_epoch = int(rconf["epoch"]) + 1

    base_meta = {**(meta or {}), "dataset": args.dataset, **({"data": args.data} if args.data else {}),
                 "seed": args.seed,
                 "train_subset": {"size": int(len(train_x)), "seed": args.seed,
                                  "full": args.train_size is None},
                 "batch_size": args.batch_size, "lr": args.lr, "objective": args.objective,
                 "init": args.init, "init_weights_sha256": run_record.get("init_weights_sha256")}
    last = None
    n = len(train_x)
    log_path = run_dir / "train_log.jsonl"
    train_seconds = 0.0
    if log_path.exists():  # time spent before a resume
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("epoch", 0) < start_epoch:
                train_seconds += float(rec.get("seconds", 0.0))
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        noise = torch.Generator(device=device).manual_seed(args.seed * 1_000_033 + epoch)
        batches = (train_x[idx.to(device)] for idx in shuffled_batches(n, args.batch_size, gen))
        total, count = 0.0, 0
        for x, loss_bits in minimise(opt, lambda x: loss_fn(model, x, noise), batches):
            total += loss_bits * len(x)
            count += len(x)
            if on_batch:
                on_batch(loss_bits / cfg.n_pixels)
        if not math.isfinite(total):
            raise VaeCompressError(f"training diverged at epoch {epoch} (loss is not finite); lower --lr")
        record = {"epoch": epoch, "train_loss_bpd": total / count / cfg.n_pixels,
                  "seconds": time.time() - t0}
        train_seconds += record["seconds"]
        is_save = epoch == args.epochs or (args.save_every and epoch % args.save_every == 0)
        if is_save:
            test_bits = dataset_neg_elbo_bits(model, test_x, device=device)
            record["test_neg_elbo_bpd"] = float(test_bits.mean() / cfg.n_pixels)
            last = run_dir / "checkpoints" / f"epoch_{epoch:04d}"
            save_checkpoint(last, model, {**base_meta, "epoch": epoch, "metrics": record,
                                          "train_seconds": round(train_seconds, 1)})
        # resume state, every epoch
        save_checkpoint(resume, model, {**base_meta, "epoch": epoch})
        tensors, groups = _adam_state_tensors(opt)
        save_tensors_atomic(tensors, resume / "optimizer.safetensors")
        write_json_atomic(resume / "optimizer.json", groups)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if on_epoch:
            on_epoch(record)
    if last is None:
        from .checkpoint import newest_checkpoint
        last = newest_checkpoint(run_dir)
    return last
