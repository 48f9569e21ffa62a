"""Training a VAE by maximising the ELBO (minimising `neg_elbo_bits`), resumable from its run dir.

Run directory layout
    run.json                      the training arguments (fixed at the first start)
    train_log.jsonl               one JSON line per epoch: train loss, test -ELBO at saves, time
    checkpoints/epoch_NNNN/       a checkpoint (see checkpoint.py) every --save-every epochs + last
    resume/                       newest model + Adam state, rewritten each epoch

Determinism: epoch e shuffles with a generator seeded by (seed, e), and the reparameterisation
noise too, so a resumed run continues as if never stopped (up to float non-associativity).
The fixed training subset (`train_size`) is `RandomState(seed).permutation(n)[:train_size]`.

Data-parallel (under torchrun, a `distributed.Team`): every rank draws the same permutation and
takes its contiguous share of each batch of `batch_size` images; each rank's loss is weighted by
its share of the batch and the gradients are summed over the ranks (one all-reduce per step), so
a step is the same full-batch step as in one process. Rank r draws its reparameterisation noise
from (seed, e, r) (rank 0 the one-process noise), so a run is deterministic for a given world
size. Rank 0 reads the resume state and sends it to the others, and writes every file; the ranks'
weights are compared after every epoch. The world size goes into run.json, train_log.jsonl and
every checkpoint's config.
"""
from __future__ import annotations

import functools
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
from .distributed import Team, root_first
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



def deepen_context(old: dict, new: dict, old_layers: int, new_layers: int) -> dict:
    """State dict of a context model with `new_layers` hidden context convs built from one with
    `old_layers` (fewer): every encoder/decoder weight and old context layer copied, the inserted
    c -> c layers (placed before the output layer) set to the identity kernel with zero bias, so
    the deeper model computes exactly what the old one did. Sequential index of hidden conv i: 2i;
    of the output conv: 2 * layers."""
    out = {k: v.clone() for k, v in old.items() if not k.startswith("context.")}
    for i in range(old_layers):
        for part in ("weight", "bias"):
            out[f"context.{2 * i}.{part}"] = old[f"context.{2 * i}.{part}"].clone()
    for i in range(old_layers, new_layers):
        w = torch.zeros_like(new[f"context.{2 * i}.weight"])                 # (c, c, k, k)
        c, k = w.shape[0], w.shape[-1]
        w[torch.arange(c), torch.arange(c), k // 2, k // 2] = 1.0
        out[f"context.{2 * i}.weight"], out[f"context.{2 * i}.bias"] = w, torch.zeros(c, dtype=w.dtype)
    for part in ("weight", "bias"):
        out[f"context.{2 * new_layers}.{part}"] = old[f"context.{2 * old_layers}.{part}"].clone()
    return out

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


def _sync_state(team: Team, model: VAE, opt: torch.optim.Optimizer, start_epoch: int) -> int:
    """Rank 0's weights, Adam state and start epoch on every rank (safetensors bytes and JSON: no
    pickle); returns the start epoch. Fresh runs too, as DistributedDataParallel does."""
    from safetensors.torch import load as st_load, save as st_save
    tensors, groups = _adam_state_tensors(opt) if team.is_root else ({}, {})
    weights = team.broadcast_bytes(st_save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
                                   if team.is_root else None)
    adam = team.broadcast_bytes(st_save({k: v.contiguous().cpu() for k, v in tensors.items()}) if team.is_root else None)
    info = json.loads(team.broadcast_bytes(json.dumps({"start_epoch": start_epoch, **groups}).encode()
                                           if team.is_root else None))
    if not team.is_root:
        model.load_state_dict(st_load(weights))
        if info.get("param_groups") and adam:
            _load_adam_state(opt, st_load(adam), info)
    return int(info["start_epoch"])


def _sum_grads(team: Team, grads: list[torch.Tensor]) -> None:
    """In place: every gradient summed over the ranks, in one all-reduce."""
    flat = team.all_sum_(torch.cat([g.reshape(-1) for g in grads]))
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def _rank_batches(train_x: torch.Tensor, n: int, batch_size: int, gen: torch.Generator, team: Team | None):
    """(this rank's images, images in the whole batch) for each batch of the epoch's permutation."""
    for idx in shuffled_batches(n, batch_size, gen):
        share = range(len(idx)) if team is None else team.share(len(idx))
        yield train_x[idx[share.start:share.stop].to(train_x.device)], len(idx)


def _start_record(run_dir: Path, args: TrainArgs, meta: dict | None, world: int) -> dict:
    """Check a resumed run's arguments against run.json (or start it); returns the run record."""
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
    run_record["world_size"] = world            # processes training (torchrun); 1 without
    write_json_atomic(run_json, run_record)
    return run_record


def train(run_dir: Path, args: TrainArgs, device: str = "cpu", meta: dict | None = None,
          on_batch: Callable[[float], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, dataset: Dataset | None = None,
          team: Team | None = None) -> Path | None:
    """Train (or resume) into run_dir; returns the last checkpoint directory.

    `dataset`: `args.dataset` already opened (`data.open_dataset`); else it is opened from `args`.

    With `args.init`, training starts from that checkpoint's weights; with an encoder-only
    `args.objective`, the decoder is frozen and only the encoder is optimised.

    `team` (under torchrun): data-parallel training (module docstring); every rank calls this,
    rank 0 writes the run directory and returns the checkpoint, the others return None.
    """
    run_dir = Path(run_dir)
    world = team.size if team is not None else 1
    root = team is None or team.is_root
    run_record = root_first(team, lambda: _start_record(run_dir, args, meta, world)) or {}
    run_json = run_dir / "run.json"

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
        if root and "init_weights_sha256" not in run_record and not (resume / CONFIG).is_file():
            # pin which weights --init named when the run started (a bundled name can be updated)
            run_record["init_weights_sha256"] = init_conf["weights_sha256"]
            write_json_atomic(run_json, run_record)
        if init_model.cfg == cfg:
            model = init_model
        elif replace(init_model.cfg, context_levels=cfg.context_levels) == cfg:
            # the same weights in a deeper (or shallower) multi-scale phase order: all of them fit
            model.load_state_dict(init_model.state_dict())
        elif (replace(init_model.cfg, context_layers=cfg.context_layers, context_levels=cfg.context_levels) == cfg
              and cfg.context_layers > init_model.cfg.context_layers):
            # a deeper context net starts as the init's: its layers, then identity 3x3 convs (the
            # input is post-ReLU, so conv-identity + ReLU passes it through), then its output layer
            model.load_state_dict(deepen_context(init_model.state_dict(), model.state_dict(),
                                                 init_model.cfg.context_layers, cfg.context_layers))
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
    if root and (resume / CONFIG).is_file():
        model, rconf = load_checkpoint(resume, device)
        opt = torch.optim.Adam(trainable(model), lr=args.lr)
        _load_adam_state(opt, load_file(str(resume / "optimizer.safetensors"), device=device),
                         json.loads((resume / "optimizer.json").read_text()))
        start_epoch = int(rconf["epoch"]) + 1
    if team is not None:
        start_epoch = _sync_state(team, model, opt, start_epoch)

    base_meta = {**(meta or {}), "dataset": args.dataset, **({"data": args.data} if args.data else {}),
                 "seed": args.seed,
                 "train_subset": {"size": int(len(train_x)), "seed": args.seed,
                                  "full": args.train_size is None},
                 "batch_size": args.batch_size, "lr": args.lr, "objective": args.objective,
                 "init": args.init, "init_weights_sha256": run_record.get("init_weights_sha256"),
                 "world_size": world}
    last = None
    n = len(train_x)
    log_path = run_dir / "train_log.jsonl"
    train_seconds = 0.0
    if root and log_path.exists():  # time spent before a resume
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("epoch", 0) < start_epoch:
                train_seconds += float(rec.get("seconds", 0.0))
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        rank = team.rank if team is not None else 0
        noise = torch.Generator(device=device).manual_seed(args.seed * 1_000_033 + epoch + 1_000_000_007 * rank)

        def loss(batch):            # this rank's share of the batch's mean loss (1.0 x it alone)
            x, n_batch = batch
            if not len(x):          # a batch smaller than the team: nothing here, zero gradient
                return sum((p * 0).sum() for group in opt.param_groups for p in group["params"])
            return loss_fn(model, x, noise) * (len(x) / n_batch)

        total, count = 0.0, 0
        for (x, n_batch), loss_bits in minimise(opt, loss, _rank_batches(train_x, n, args.batch_size, gen, team),
                                                None if team is None else functools.partial(_sum_grads, team)):
            total += loss_bits * n_batch
            count += len(x)
            if on_batch and len(x):
                on_batch(loss_bits * n_batch / len(x) / cfg.n_pixels)
        if team is not None:
            total, count = team.all_sum_(torch.tensor([total, count], dtype=torch.float64, device=team.device)).tolist()
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            if not team.same_everywhere(flat):
                raise VaeCompressError(f"the ranks' weights differ after epoch {epoch}: data-parallel training "
                                       "lost its synchronisation")
        if not math.isfinite(total):
            raise VaeCompressError(f"training diverged at epoch {epoch} (loss is not finite); lower --lr")
        record = {"epoch": epoch, "train_loss_bpd": total / count / cfg.n_pixels,
                  "seconds": time.time() - t0, "world_size": world}
        train_seconds += record["seconds"]
        if not root:                # rank 0 evaluates and writes
            continue
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
    if not root:
        return None
    if last is None:
        from .checkpoint import newest_checkpoint
        last = newest_checkpoint(run_dir)
    return last
