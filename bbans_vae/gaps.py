"""Generalization gaps of a VAE training run, as -ELBO estimates and as real bitstreams (docs/DESIGN.md, math).

For every checkpoint (θ_N, φ_N) of a run made by `vaecompress train --save-every S`:

    train_elbo_bpd        -ELBO on the run's training images (all of them, or a seeded random
                          subset of `train_eval_size`)
    test_elbo_bpd         -ELBO on the test images (all, or a seeded random subset of
                          `test_images`; never "the first N") with the training encoder φ_N
    test_refit_elbo_bpd   -ELBO on the same test images with φ_M: a copy of the encoder trained
                          on those test images with the decoder frozen (Adam, from φ_N), for a
                          fixed number of epochs or until converged (see `refit_encoder`)
    egg_bpd  = test_elbo - train_elbo          (ELBO generalization gap)
    aigg_bpd = test_elbo - test_refit_elbo     (amortized inference generalization gap)
    gmgg_bpd = test_refit_elbo - train_elbo    (generative model generalization gap)
so egg = aigg + gmgg (in bpd a larger number is worse; the reference text writes the gaps as
ELBO differences, i.e. with the opposite sign convention on log-likelihoods).

Standard errors (`*_se_bpd`) are over images (the sampling error of which images were drawn):
a gap between two quantities on the same images (AIGG, and every term of the split below) uses
the per-image differences (paired); a gap between the train and the test images (EGG, GMGG)
combines the two independent standard errors. The MC noise of the -ELBO is much smaller: every
-ELBO uses `elbo_samples` seeded samples, the same noise for every encoder on the same images.

The same three gaps are measured on real BB-ANS files (`*_actual_bpd` = 8 x file size): the
train images coded with φ_N, the test images with φ_N and with φ_M, each as one .vae file on the
model's default coder path ("exact" for the MLP models: the file decodes on any machine), every
file decoded again and compared with its images (a mismatch is an error); see
`ACTUAL_BITS_DEFINITION`. Two coder effects are reported apart:
  * one-time costs of a file: chain-start bits (`*_initial_bits`: each chain's first images are
    coded without bits back) and the container header (`*_container_bits`). They are spread over
    files of different sizes (train vs test), so they enter EGG* and GMGG*;
    `*_actual_excl_onetime_bpd` are the costs and gaps without them, `{gap}_initial_bpd` and
    `{gap}_container_bpd` what each adds to a gap.
  * the 2^-24 pixel-probability floor: the coder gives every pixel value probability >= 2^-24,
    so no pixel costs more than 24 bits, whereas the -ELBO charges -log2 p in full. Overfit
    decoders put p << 2^-24 on some test pixels, so the real bits are then *below* the -ELBO.
    `*_floor_excess_bpd` is the part of the -ELBO above that cap (E_q of sum over pixels of
    max(0, -log2 p(x_i|z) - 24)), `*_floored_elbo_bpd` the -ELBO with the cap, and the gaps from
    capped -ELBOs (`*_floored_bpd`) are the ones the real-bit gaps should follow.

The split of the test code length (at the checkpoints `split` selects, on a seeded random
subset of `split_images` of the test images):
    test_local_opt_bpd    -ELBO with a per-image Gaussian q(z) = N(mu, sigma^2) optimised directly
                          (Adam on mu, log sigma; decoder frozen): the amortization-free ELBO
    test_iwae_bpd         importance-weighted estimate of -log p(x) (`iwae_bits`, K samples,
                          proposal: the per-image optimised Gaussian q)
    test_elbo = -log p(x) [iwae] + approximation gap [local_opt - iwae]
                                 + amortization gap [test_elbo - local_opt]
and the amortization gap splits further into AIGG (test_elbo - test_refit_elbo on the subset)
plus the refit encoder's own amortization gap (test_refit_elbo - local_opt).

Storage and resumption: `run_gaps` keeps every checkpoint's result in
RUN_DIR/gaps/<settings hash>/epoch_NNNN.json as soon as it is measured, with the refit encoder's
weights (epoch_NNNN.refit/encoder.safetensors, plus the Adam state while the refit runs, so an
interrupted refit continues where it stopped). A later call with the same settings skips the
finished checkpoints and gives identical results; `settings.json` there says what the hash means.

Nothing here prints: progress goes to the optional `on_stage(done, total, text)` and
`on_checkpoint(record)` callbacks. Tables and plots are in the CLI's render module.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from .ans.chains import DEFAULT_LATENT_BITS, encode_images
from .checkpoint import (CONFIG, load_checkpoint, read_config, save_tensors_atomic, sha256_file,
                         write_json_atomic)
from .data import run_dataset
from .errors import ModelError, VaeCompressError
from .models import LN2, VAE, preset_config
from .objectives import dataset_iwae_bits, dataset_neg_elbo_bits, neg_elbo_bits
from .optim import minimise, shuffled_batches
from .train import TrainArgs, _adam_state_tensors, _load_adam_state, train, train_subset_indices

FORMAT = "vaecompress-gaps/2"
RECORD_FORMAT = "vaecompress-gaps-checkpoint/4"
PIXEL_FLOOR_BITS = 24.0   # the coder gives every pixel value probability >= 2^-24
ACTUAL_BITS_DEFINITION = (
    "*_actual_bits / *_actual_bpd: 8 x the size of a real .vae file of the image set (pipeline.compress on the "
    "model's default coder path, decoded again by pipeline.decompress and compared with the images; sizes by "
    "accounting.sizes_of): everything counted. Inside it: *_payload_bits (the chains' valid bits), which include "
    "*_initial_bits (bits not got back on the plain-coded images that start each chain), and *_container_bits "
    "(header, word padding, chain flush). *_actual_excl_onetime_bpd: without the one-time costs of a file "
    "(initial + container bits), i.e. what the images themselves cost. *_actual_se_bpd: standard error over "
    "images of the per-image code length at the coded latent (ideal bits)")
UNITS = "bpd = bits / (n_images x height x width x channels); *_bits are totals over the image set"
SIGN_CONVENTION = ("gaps in bpd: larger is worse; egg = test - train, aigg = test - test_refit, "
                   "gmgg = test_refit - train, so egg = aigg + gmgg")
SE_DEFINITION = ("*_se_bpd: standard error over images (std with ddof=1 / sqrt(n)); for AIGG and the split "
                 "terms, of the per-image differences (same images, paired); for EGG and GMGG (train vs test "
                 "images), sqrt(se_a^2 + se_b^2) of the two independent means")

GAP_KEYS = ("egg", "aigg", "gmgg")
GAP_TERMS = {"egg": ("test", "train"), "aigg": ("test", "test_refit"), "gmgg": ("test_refit", "train")}
STREAMS = ("train", "test", "test_refit")


@dataclass
class GapsConfig:
    """Settings of a gaps measurement (all stored in the output JSON and in the store's settings.json)."""

    refit_epochs: int = 100          # encoder refit on the test images (decoder frozen), fixed length
    refit_until_converged: bool = False  # instead: until the convergence figure < refit_tol (cap refit_max_epochs)
    refit_tol: float = 1e-4          # relative change of the refit -ELBO over the last 10% of the epochs
    refit_max_epochs: int = 1000     # the cap of an until-converged refit
    refit_min_epochs: int = 100      # an until-converged refit runs at least this many epochs
    refit_eval_every: int = 1        # fixed-noise -ELBO of the refit images every this many epochs
    refit_lr: float = 1e-3
    refit_batch_size: int = 100
    elbo_samples: int = 10           # MC samples per image for every reported -ELBO
    train_eval_size: int | None = 10_000  # a seeded random subset of the training images (None: all)
    test_images: int | None = None   # a seeded random subset of the test images (None: all)
    code: bool = True                # also measure real bitstreams
    coder_path: str | None = None    # None: the model's default ("exact" for MLP models)
    chains: int = 10
    latent_bits: int = DEFAULT_LATENT_BITS
    split: str = "last"              # where to compute local-opt/IWAE: "last" | "all" | "none"
    split_images: int = 1000         # a seeded random subset of the test images for the split
    iwae_k: int = 1000
    local_steps: int = 300           # Adam steps of the per-image Gaussian q
    local_lr: float = 1e-2
    local_samples: int = 1           # MC samples per image per local-opt step
    local_init: str = "refit"        # start local opt from the "refit" or the "train" encoder's output
    seed: int = 0
    epochs: tuple | None = None      # only these checkpoint epochs (None: all)
    device: str = "cpu"              # where the -ELBO, floor, local-opt and IWAE passes run ("cuda": a GPU;
                                     # its noise stream differs from the CPU's); coding is always on the CPU

    def validate(self) -> None:
        if self.refit_epochs < 0 or self.refit_batch_size < 1 or self.refit_lr <= 0:
            raise VaeCompressError("refit epochs must be >= 0, batch size >= 1, lr > 0")
        if self.refit_until_converged and not (self.refit_tol > 0 and self.refit_max_epochs >= 1):
            raise VaeCompressError("--refit-until-converged needs a tolerance > 0 and a cap >= 1 epoch")
        if self.refit_eval_every < 1 or self.refit_min_epochs < 0:
            raise VaeCompressError("refit eval interval must be >= 1 and min epochs >= 0")
        if self.elbo_samples < 1 or self.chains < 1:
            raise VaeCompressError("elbo samples and chains must be >= 1")
        for name in ("train_eval_size", "test_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise VaeCompressError(f"{name.replace('_', '-')} must be >= 1")
        if self.split not in ("last", "all", "none"):
            raise VaeCompressError(f"split must be 'last', 'all' or 'none', not {self.split!r}")
        if self.split != "none" and (self.iwae_k < 1 or self.split_images < 1 or self.local_steps < 0):
            raise VaeCompressError("--iwae and split images must be >= 1, --local-steps >= 0")
        if self.local_init not in ("refit", "train"):
            raise VaeCompressError("local_init must be 'refit' or 'train'")
        if self.coder_path not in (None, "exact", "float32"):
            raise VaeCompressError(f"coder path must be exact or float32, not {self.coder_path!r}")
        if self.device not in ("cpu", "cuda"):
            raise VaeCompressError(f"device must be cpu or cuda, not {self.device!r}")

    def measured_settings(self) -> dict:
        """The settings that change a checkpoint's numbers (what the store's hash covers)."""
        d = asdict(self)
        for k in ("epochs", "split"):  # which checkpoints, not how each is measured
            d.pop(k)
        if self.device == "cpu":       # stores made before the device setting keep their hash
            d.pop("device")
        if self.refit_until_converged:
            d.pop("refit_epochs")
        else:
            for k in ("refit_tol", "refit_max_epochs", "refit_min_epochs"):
                d.pop(k)
        return d


def refit_description(cfg: GapsConfig) -> str:
    if cfg.refit_until_converged:
        return (f"until the refit -ELBO changes by < {cfg.refit_tol:g} (relative, 2 SE) over the last 10% of the "
                f"epochs (at least {cfg.refit_min_epochs}, at most {cfg.refit_max_epochs} epochs)")
    return f"{cfg.refit_epochs} epochs"


# Settings of `vaecompress gaps --quick` (see QUICK_TRAIN for the run it trains).
QUICK_GAPS = GapsConfig(refit_epochs=20, elbo_samples=10, test_images=500, train_eval_size=500, chains=10,
                        split="last", split_images=250, iwae_k=200, local_steps=100)


@dataclass
class QuickTrain:
    dataset: str = "mnist-bin"
    preset: str = "mlp-paper"
    hidden: tuple | None = None      # override the preset's hidden sizes
    train_size: int = 1000
    epochs: int = 50
    save_every: int = 10
    seed: int = 0


QUICK_TRAIN = QuickTrain()


# ----------------------------------------------------------------------------- statistics


def stderr(a: np.ndarray) -> float:
    """Standard error of the mean of `a` (ddof=1); nan for fewer than 2 values."""
    a = np.asarray(a, dtype=np.float64)
    return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def paired_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) - mean(b) and its standard error, for two values per image of the same images."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(d.mean()), stderr(d)


def independent_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) - mean(b) and its standard error, for two independent image sets."""
    return float(np.mean(a) - np.mean(b)), math.hypot(stderr(a), stderr(b))


def share_se(test: np.ndarray, test_refit: np.ndarray, train: np.ndarray) -> tuple[float, float]:
    """AIGG / EGG and its standard error (delta method; AIGG and EGG share the test images)."""
    n, m = len(test), len(train)
    a = float(np.mean(test - test_refit))
    e = float(np.mean(test) - np.mean(train))
    r = a / e
    if n < 2 or m < 2:
        return r, float("nan")
    cov = np.cov(test - test_refit, test, ddof=1)
    var_a, var_e = cov[0, 0] / n, cov[1, 1] / n + np.var(train, ddof=1) / m
    var_r = (var_a - 2 * r * cov[0, 1] / n + r * r * var_e) / (e * e)
    return r, float(math.sqrt(max(var_r, 0.0)))


def random_subset(n_total: int, n: int | None, seed: int, salt: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of n of range(n_total) (all of them if n is None or
    >= n_total). `salt` keeps the subsets of different purposes apart. Never "the first n"."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.RandomState([seed, salt]).permutation(n_total)[:n])


SALT_TRAIN, SALT_TEST, SALT_SPLIT = 1, 2, 3


MIN_WINDOW = 20   # epochs: the convergence window is 10% of the epochs run, but at least this


def relative_change_last10(curve: list, n_epochs: int, eval_every: int = 1) -> tuple[float | None, float | None]:
    """Convergence figure of a refit after n epochs, and its standard error: the relative drop of
    the -ELBO over the last w = 10% of the epochs (at least MIN_WINDOW), -slope * w / L(n), with
    the slope of a least-squares line through the fixed-noise evaluations [(epoch, value), ...]
    in that window, and its SE from the line's residuals. A line, not two end points: the refit
    -ELBO jitters by ~1e-4 bpd from epoch to epoch (Adam's noise; measured on the full-data
    model), more than the drop being judged. (None, None) with fewer than 3 evaluations there."""
    values = {int(e): float(v) for e, v in curve}
    if n_epochs <= 0 or n_epochs not in values:
        return None, None
    w = max(int(round(0.1 * n_epochs)), MIN_WINDOW, 2 * eval_every)
    pts = np.array([(e, v) for e, v in sorted(values.items()) if n_epochs - w <= e <= n_epochs], dtype=np.float64)
    if len(pts) < 3:
        return None, None
    x = pts[:, 0] - pts[:, 0].mean()
    slope = float((x * pts[:, 1]).sum() / (x * x).sum())
    resid = pts[:, 1] - pts[:, 1].mean() - slope * x
    slope_se = math.sqrt(float((resid ** 2).sum()) / (len(pts) - 2) / float((x * x).sum()))
    level = values[n_epochs]
    return -slope * w / level, slope_se * w / level


def is_converged(change: float | None, change_se: float | None, tol: float) -> bool:
    """The drop over the last 10% is below `tol` beyond reasonable doubt: |change| + 2 SE < tol."""
    return change is not None and change_se is not None and abs(change) + 2 * change_se < tol


# ----------------------------------------------------------------------------- building blocks


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, checkpoint dir) of every complete checkpoint of a run, by epoch."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).is_file():
        raise ModelError(f"{run_dir} is a single checkpoint; gaps needs a training run directory "
                         "(made by `vaecompress train --save-every S`)")
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: no such run directory")
    out = []
    for p in sorted((run_dir / "checkpoints").glob("epoch_*")):
        if (p / CONFIG).is_file():
            out.append((int(read_config(p).get("epoch", int(p.name.split("_")[1]))), p))
    if not out:
        raise ModelError(f"{run_dir} holds no checkpoints (checkpoints/epoch_*/config.json); "
                         "train with `vaecompress train ... --save-every S -o RUN_DIR`")
    return sorted(out)


@dataclass
class GapImages:
    train: np.ndarray
    test: np.ndarray
    split_pick: np.ndarray          # indices into `test` of the split subset
    info: dict


def run_images(run_dir: Path, config: dict, cfg: GapsConfig, data_dir=None) -> GapImages:
    """The run's training images (all, or a seeded subset), the test images (all, or a seeded
    subset) and the split subset (seeded, of the test images)."""
    run_json = Path(run_dir) / "run.json"
    run = json.loads(run_json.read_text()) if run_json.is_file() else {}
    if not (config.get("dataset") or run.get("dataset")):
        raise ModelError(f"{run_dir}: the checkpoints do not record their dataset")
    data_dir = data_dir if data_dir is not None else run.get("data_dir")
    ds = run_dataset(config if config.get("dataset") else run, data_dir)   # a path's data: sha256-checked
    dataset = ds.name
    sub = config.get("train_subset") or {}
    seed = int(sub.get("seed", run.get("seed", 0)))
    full = bool(sub.get("full", run.get("train_size") is None))
    size = None if full else int(sub.get("size", run.get("train_size")))
    all_train = ds.images("train")
    train_idx = train_subset_indices(len(all_train), size, seed)
    n_train_subset = len(train_idx)
    train_idx = train_idx[random_subset(n_train_subset, cfg.train_eval_size, cfg.seed, SALT_TRAIN)]
    all_test = ds.images("test")
    n_test_split = len(all_test)
    test_idx = random_subset(n_test_split, cfg.test_images, cfg.seed, SALT_TEST)
    split_pick = random_subset(len(test_idx), cfg.split_images, cfg.seed, SALT_SPLIT)
    rs = f"np.random.RandomState([{cfg.seed}, salt]).permutation, sorted"
    info = {
        "dataset": dataset,
        "train_subset_size": int(n_train_subset),
        "train_subset_seed": seed,
        "train_subset_full": full,
        "train_eval_n_images": int(len(train_idx)),
        "train_eval_selection": ("all the training images the run trained on" if len(train_idx) == n_train_subset
                                 else f"a seeded random subset of {len(train_idx)} of the run's {n_train_subset} "
                                      f"training images ({rs}, salt {SALT_TRAIN})"),
        "test_n_images": int(len(test_idx)),
        "test_split_n_images": int(n_test_split),
        "test_selection": (f"the whole test split ({n_test_split} images)" if len(test_idx) == n_test_split else
                           f"a seeded random subset of {len(test_idx)} of the {n_test_split} test images "
                           f"({rs}, salt {SALT_TEST})"),
        "test_indices_sha256": hashlib.sha256(test_idx.astype(np.int64).tobytes()).hexdigest(),
        "split_n_images": int(len(split_pick)),
        "split_selection": (f"all {len(test_idx)} test images" if len(split_pick) == len(test_idx) else
                            f"a seeded random subset of {len(split_pick)} of the {len(test_idx)} test images "
                            f"({rs}, salt {SALT_SPLIT})"),
    }
    return GapImages(all_train[train_idx], all_test[test_idx], split_pick, info)


def elbo_bits(model: VAE, images: np.ndarray, n_samples: int = 10, seed: int = 0,
              posterior: tuple[torch.Tensor, torch.Tensor] | None = None, batch_size: int = 1000,
              device: str = "cpu") -> np.ndarray:
    """Per-image -ELBO in bits, float64 (`objectives.dataset_neg_elbo_bits`, seeded: the same seed
    and images give the same noise, whatever the encoder or given posterior). `model` lives on
    `device`."""
    if posterior is not None:
        posterior = (posterior[0].to(device), posterior[1].to(device))
    return dataset_neg_elbo_bits(model, images, batch_size, seed, n_samples, device=device,
                                 posterior=posterior).astype(np.float64)


def pixel_floor_excess_bits(model: VAE, images: np.ndarray, n_samples: int = 10, seed: int = 0,
                            floor_bits: float = PIXEL_FLOOR_BITS,
                            batch_size: int = 500, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per image: E_q[sum over pixels of max(0, -log2 p(x_i|z) - floor_bits)] in bits (the part of
    the -ELBO that a coder flooring every pixel probability at 2^-floor_bits does not charge), and
    the expected number of such pixels. `n_samples` seeded samples z ~ q(z|x)."""
    gen = torch.Generator(device=device).manual_seed(seed + 4_049)
    excess, count = [], []
    model.eval()
    lik = model.likelihood
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).to(device)
            mu, sigma = model.posterior(x)
            xf = model.flat_pixels(x)
            b, p = xf.shape
            e = torch.zeros(b, dtype=torch.float64, device=device)
            c = torch.zeros(b, dtype=torch.float64, device=device)
            for _ in range(n_samples):
                out = model.pixel_out(mu + sigma * torch.randn(mu.shape, generator=gen, device=device), xf)
                # one pixel per row: every likelihood lays its parameters out pixel-major
                per_pixel = lik.nll_bits(xf.reshape(b * p, 1), out.reshape(b * p, -1)).view(b, p)
                over = (per_pixel - floor_bits).clamp(min=0)
                e += over.sum(-1).double()
                c += (over > 0).sum(-1).double()
            excess.append((e / n_samples).cpu().numpy())
            count.append((c / n_samples).cpu().numpy())
    return (np.concatenate(excess) if excess else np.zeros(0)), (np.concatenate(count) if count else np.zeros(0))


@dataclass
class Refit:
    """An encoder refit: the model φ_M (decoder shared with φ_N) and how it got there."""

    model: VAE
    epochs: int                                   # epochs run in all
    history: list[float] = field(default_factory=list)      # mean training loss per epoch (bpd, fresh noise)
    eval_curve: list = field(default_factory=list)          # [(epoch, -ELBO bpd at fixed noise)], epoch 0 first
    converged: bool | None = None                 # None: fixed length
    rel_change_last10: float | None = None
    rel_change_last10_se: float | None = None
    seconds: float = 0.0                          # total, over resumptions
    resumed_from: int = 0                         # epochs already done when this call started

    def summary(self) -> dict:
        return {"refit_epochs_run": self.epochs, "refit_converged": self.converged,
                "refit_rel_change_last10pct": self.rel_change_last10,
                "refit_rel_change_last10pct_se": self.rel_change_last10_se,
                "refit_loss_history_bpd": self.history,
                "refit_eval_curve_bpd": [[e, v] for e, v in self.eval_curve],
                "refit_loss_first_epoch_bpd": self.history[0] if self.history else None,
                "refit_loss_last_epoch_bpd": self.history[-1] if self.history else None,
                "refit_seconds": self.seconds,
                "refit_epoch_seconds": self.seconds / self.epochs if self.epochs else None,
                "refit_resumed_from_epoch": self.resumed_from}


REFIT_ENCODER = "encoder.safetensors"
REFIT_STATE = "state.json"


def refit_encoder(model: VAE, images: np.ndarray, epochs: int = 100, lr: float = 1e-3, batch_size: int = 100,
                  seed: int = 0, until_converged: bool = False, tol: float = 1e-4, max_epochs: int = 1000,
                  min_epochs: int = 100, eval_every: int = 1, state_dir: Path | None = None,
                  save_every: int = 10, loss: Callable | None = None,
                  on_epoch: Callable[[int, float], None] | None = None) -> Refit:
    """A copy of `model` whose encoder is trained on `images` with everything else frozen.

    Adam (`optim.minimise`) on the encoder parameters only, minibatches of `batch_size`, the loss
    `loss(model, x, gen)` (default: 1-sample `neg_elbo_bits`, as in training), shuffling and noise
    seeded by (seed, epoch). Runs `epochs` epochs, or with `until_converged` until the convergence
    figure (`relative_change_last10`: relative change of the -ELBO of `images` at fixed noise over
    the last 10% of the epochs, evaluated every `eval_every` epochs) is below `tol` by more than
    two of its standard errors (`is_converged`), after at least `min_epochs` and at most
    `max_epochs`. With `state_dir`, the encoder, the Adam state and the
    curves are saved every `save_every` epochs and at the end, and a later call resumes from them
    (a finished refit is just loaded): the result equals that of one uninterrupted run.
    """
    t_start = time.perf_counter()
    refit = copy.deepcopy(model).eval()
    target = max_epochs if until_converged else epochs
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    n, dims = len(x_all), model.cfg.n_pixels
    loss_fn = loss or (lambda m, x, gen: neg_elbo_bits(m, x, gen=gen).mean())
    opt = torch.optim.Adam(refit.encoder.parameters(), lr=lr)
    res = Refit(model=refit, epochs=0, converged=False if until_converged else None)
    state_dir = Path(state_dir) if state_dir is not None else None
    if state_dir is not None and (state_dir / REFIT_STATE).is_file():
        st = json.loads((state_dir / REFIT_STATE).read_text())
        refit.encoder.load_state_dict(load_file(str(state_dir / REFIT_ENCODER)))
        if not st["complete"]:
            _load_adam_state(opt, load_file(str(state_dir / "adam.safetensors")),
                             json.loads((state_dir / "adam.json").read_text()))
        res.epochs, res.history = int(st["epochs"]), list(st["history"])
        res.eval_curve = [tuple(p) for p in st["eval_curve"]]
        res.converged, res.seconds = st["converged"], float(st["seconds"])
        res.rel_change_last10, res.rel_change_last10_se = st["rel_change_last10"], st["rel_change_last10_se"]
        res.resumed_from = res.epochs
        if st["complete"]:
            return res

    def evaluate(epoch: int) -> None:
        res.eval_curve.append((epoch, float(elbo_bits(refit, images, 1, seed + 7_919).mean() / dims)))

    def save(complete: bool) -> None:
        if state_dir is None:
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(dict(refit.encoder.state_dict()), state_dir / REFIT_ENCODER)
        if not complete:
            tensors, groups = _adam_state_tensors(opt)
            save_tensors_atomic(tensors, state_dir / "adam.safetensors")
            write_json_atomic(state_dir / "adam.json", groups)
        write_json_atomic(state_dir / REFIT_STATE, {
            "complete": complete, "epochs": res.epochs, "history": res.history,
            "eval_curve": [list(p) for p in res.eval_curve], "converged": res.converged,
            "rel_change_last10": res.rel_change_last10, "rel_change_last10_se": res.rel_change_last10_se,
            "seconds": res.seconds + time.perf_counter() - t_start,
            "encoder_sha256": sha256_file(state_dir / REFIT_ENCODER)})
        if complete:
            for name in ("adam.safetensors", "adam.json"):
                (state_dir / name).unlink(missing_ok=True)

    if not res.eval_curve:
        evaluate(0)
    while res.epochs < target:
        epoch = res.epochs + 1
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        noise = torch.Generator().manual_seed(seed * 1_000_033 + epoch + 7)
        steps = minimise(opt, lambda idx: loss_fn(refit, x_all[idx], noise), shuffled_batches(n, batch_size, order))
        total = sum(step_loss * len(idx) for idx, step_loss in steps)
        if not math.isfinite(total):
            raise VaeCompressError(f"encoder refit diverged at epoch {epoch}; lower the refit lr")
        res.history.append(total / n / dims)
        res.epochs = epoch
        if on_epoch:
            on_epoch(epoch, res.history[-1])
        if epoch % eval_every == 0 or epoch == target:
            evaluate(epoch)
            res.rel_change_last10, res.rel_change_last10_se = relative_change_last10(res.eval_curve, epoch, eval_every)
            if until_converged and epoch >= min_epochs and is_converged(res.rel_change_last10,
                                                                        res.rel_change_last10_se, tol):
                res.converged = True
                break
        if epoch % save_every == 0 and epoch < target:
            save(False)
    res.seconds += time.perf_counter() - t_start
    t_start = time.perf_counter()
    save(True)
    return res


def load_refit(model: VAE, state_dir: Path) -> VAE:
    """The refit model φ_M stored in `state_dir` (a copy of `model` with the stored encoder)."""
    refit = copy.deepcopy(model)
    refit.encoder.load_state_dict(load_file(str(Path(state_dir) / REFIT_ENCODER)))
    return refit.eval()


def local_opt_posterior(model: VAE, images: np.ndarray, steps: int, lr: float = 1e-2, seed: int = 0,
                        n_samples: int = 1, init: VAE | None = None, batch_size: int = 1000,
                        device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Per-image Gaussian q(z) = N(mu, sigma^2) fitted by Adam on each image's -ELBO, decoder frozen.

    Starts from `init`'s (default: `model`'s) encoder output; optimises mu and log sigma of every
    image independently (the loss is the sum over images, so the batch does not couple them) for
    `steps` steps (`optim.minimise`) with `n_samples` reparameterised samples per step, noise
    seeded. Returns (mu, sigma) (on the CPU) and the loss curve (mean -ELBO bpd over all images per
    step, fresh noise every step). `model` and `init` live on `device`.
    """
    gen = torch.Generator(device=device).manual_seed(seed + 99_991)
    mus, sigmas = [], []
    curve = np.zeros(steps)
    enc = init if init is not None else model
    model.eval()
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device)
        with torch.no_grad():
            mu0, sigma0 = enc.posterior(x)
        mu = mu0.clone().requires_grad_(True)
        log_sigma = torch.log(sigma0).clone().requires_grad_(True)
        opt = torch.optim.Adam([mu, log_sigma], lr=lr)

        def loss_fn(_):
            return neg_elbo_bits(model, x, n_samples=n_samples, gen=gen, posterior=(mu, torch.exp(log_sigma))).sum()

        with torch.enable_grad():
            for s, step_loss in minimise(opt, loss_fn, range(steps)):
                curve[s] += step_loss
        mus.append(mu.detach().cpu())
        sigmas.append(torch.exp(log_sigma.detach()).cpu())
    return torch.cat(mus), torch.cat(sigmas), list(curve / max(1, len(images)) / model.cfg.n_pixels)


def coded_bits(model: VAE, images: np.ndarray, chains: int, latent_bits: int, coder_path: str | None = None,
               refine_steps: int = 0, name: str = "gaps", sha256_hex: str | None = None,
               per_image: bool = True) -> dict:
    """A real .vae file of `images` under `model` (`pipeline.compress` on `coder_path`, default the
    model's; refinement with `refine_steps` needs "float32"), decoded again by `pipeline.decompress`
    and compared with the images (VaeCompressError if they differ). Returns its sizes
    (`accounting.sizes_of`: actual = 8 x file size, payload, container, initial, ideal bits) and,
    with `per_image`, each image's code length at its coded latent (`ideal_per_image`, bits; the
    same stream encoded once more, since one ANS stream does not split per image), timings."""
    from .ans.refine import DEFAULT_REFINE_LR
    from .pipeline import compress, decompress, lr_e4, make_coder_backend
    sha = sha256_hex or hashlib.sha256(name.encode()).hexdigest()
    images = np.ascontiguousarray(images)
    t0 = time.perf_counter()
    data, rep = compress(model, name, sha, images, n_chains=chains, latent_bits=latent_bits,
                         refine_steps=refine_steps, coder_path=coder_path)
    t1 = time.perf_counter()
    back, _, _ = decompress(data, model, sha)
    if not np.array_equal(back, images):
        raise VaeCompressError(f"gaps: a {rep['coder_path']} file did not decode to its images")
    out = {**{k: rep[k] for k in ("actual_bits", "payload_bits", "container_bits", "initial_bits", "ideal_bits",
                                   "chains", "plain_images", "coder_path", "refine_steps")},
           "verified": True, "encode_seconds": t1 - t0, "decode_seconds": time.perf_counter() - t1}
    if per_image:
        backend = make_coder_backend(rep["coder_path"], model, latent_bits, refine_steps,
                                     lr_e4(DEFAULT_REFINE_LR) if refine_steps else 0)
        enc = encode_images(model, images, rep["chains"], latent_bits, backend=backend)
        if enc.payload_bits != rep["payload_bits"]:
            raise VaeCompressError("gaps: encoding the same images twice gave different streams")
        out["ideal_per_image"] = enc.ideal_bits.astype(np.float64)
    return out


# ----------------------------------------------------------------------------- one checkpoint


def on_device(model: VAE, device: str) -> VAE:
    """`model` itself on the CPU, else a copy on `device` (the coder keeps using the CPU model)."""
    return model if device == "cpu" else copy.deepcopy(model).to(device)


def _put(rec: dict, key: str, value_se: tuple[float, float], dims: int) -> None:
    rec[f"{key}_bpd"] = value_se[0] / dims
    rec[f"{key}_se_bpd"] = value_se[1] / dims


def amortization_split(model: VAE, refit: VAE, images: np.ndarray, cfg: GapsConfig, selection: str,
                       stage: Callable[[str], None] = lambda s: None) -> dict:
    """test -ELBO = -log p(x) [IWAE] + approximation gap + amortization gap, on `images`, with
    paired standard errors."""
    dims = model.cfg.n_pixels
    n = len(images)
    dev = cfg.device
    model, refit = on_device(model, dev), on_device(refit, dev)
    t0 = time.perf_counter()
    test = elbo_bits(model, images, cfg.elbo_samples, cfg.seed, device=dev)
    test_refit = elbo_bits(refit, images, cfg.elbo_samples, cfg.seed, device=dev)
    stage(f"local opt of q ({cfg.local_steps} steps on {n} test images)")
    init = refit if cfg.local_init == "refit" else model
    mu, sigma, curve = local_opt_posterior(model, images, cfg.local_steps, cfg.local_lr, cfg.seed,
                                           cfg.local_samples, init=init, device=dev)
    local = elbo_bits(model, images, cfg.elbo_samples, cfg.seed, posterior=(mu, sigma), device=dev)
    t_local = time.perf_counter() - t0
    stage(f"IWAE (K={cfg.iwae_k}) on {n} test images")
    t1 = time.perf_counter()
    iw = dataset_iwae_bits(model, images, cfg.iwae_k, cfg.seed + 31_337, proposal=(mu, sigma),
                           device=dev).astype(np.float64)
    t_iwae = time.perf_counter() - t1
    r: dict = {"split_n_images": n, "split_selection": selection, "iwae_k": cfg.iwae_k, "split_device": dev,
               "iwae_proposal": "the per-image optimised Gaussian q (local opt)"}
    zero = np.zeros(n)
    _put(r, "split_test_elbo", (test.mean(), stderr(test)), dims)
    _put(r, "split_test_refit_elbo", (test_refit.mean(), stderr(test_refit)), dims)
    _put(r, "test_local_opt", (local.mean(), stderr(local)), dims)
    _put(r, "test_iwae", (iw.mean(), stderr(iw)), dims)
    _put(r, "neg_log_px", paired_gap(iw, zero), dims)
    _put(r, "approximation_gap", paired_gap(local, iw), dims)
    _put(r, "amortization_gap", paired_gap(test, local), dims)
    _put(r, "split_aigg", paired_gap(test, test_refit), dims)
    _put(r, "refit_amortization_gap", paired_gap(test_refit, local), dims)
    r["local_opt_improved_fraction"] = float(np.mean(local < (test_refit if cfg.local_init == "refit" else test)))
    # local-opt loss curve: noisy (fresh noise every step); its last-10% change, relative
    w = max(1, cfg.local_steps // 10)
    r["local_opt_curve_bpd"] = [float(v) for v in curve]
    r["local_opt_rel_change_last10pct"] = (
        float(np.mean(curve[-2 * w:-w]) - np.mean(curve[-w:])) / float(np.mean(curve[-w:]))
        if cfg.local_steps >= 2 * w and cfg.local_steps >= 2 else None)
    r["local_opt_seconds"] = t_local
    r["iwae_seconds"] = t_iwae
    return r


SPLIT_SUMMARY_KEYS = ("epoch", "split_n_images", "split_selection", "iwae_k", "split_test_elbo_bpd",
                      "split_test_elbo_se_bpd", "test_iwae_bpd", "test_iwae_se_bpd", "neg_log_px_bpd",
                      "neg_log_px_se_bpd", "approximation_gap_bpd", "approximation_gap_se_bpd",
                      "amortization_gap_bpd", "amortization_gap_se_bpd", "split_aigg_bpd", "split_aigg_se_bpd",
                      "refit_amortization_gap_bpd", "refit_amortization_gap_se_bpd", "split_test_refit_elbo_bpd",
                      "test_local_opt_bpd", "test_local_opt_se_bpd", "local_opt_rel_change_last10pct")


def _stream_gaps(rec: dict, per_image: dict[str, np.ndarray], key: str, dims: int) -> None:
    """EGG/AIGG/GMGG of the per-image values `per_image[stream]` into rec[f"{gap}{key}_bpd"] (+ _se_bpd)."""
    for g, (a, b) in GAP_TERMS.items():
        pair = paired_gap if g == "aigg" else independent_gap
        _put(rec, f"{g}{key}", pair(per_image[a], per_image[b]), dims)


def checkpoint_gaps(model: VAE, images: GapImages, cfg: GapsConfig, with_split: bool,
                    stage: Callable[[str], None] = lambda s: None, refit_dir: Path | None = None) -> dict:
    """All gap quantities of one checkpoint (see the module docstring)."""
    dims = model.cfg.n_pixels
    train_images, test_images = images.train, images.test
    n_tr, n_te = len(train_images), len(test_images)
    rec: dict = {"elbo_device": cfg.device}
    dev = cfg.device
    t0 = time.perf_counter()
    stage(f"train -ELBO ({n_tr} images)")
    model_d = on_device(model, dev)
    per = {"train": elbo_bits(model_d, train_images, cfg.elbo_samples, cfg.seed, device=dev)}
    stage(f"test -ELBO ({n_te} images)")
    per["test"] = elbo_bits(model_d, test_images, cfg.elbo_samples, cfg.seed, device=dev)
    stage(f"refit encoder ({refit_description(cfg)} on {n_te} test images)")
    fit = refit_encoder(model, test_images, cfg.refit_epochs, cfg.refit_lr, cfg.refit_batch_size, cfg.seed,
                        until_converged=cfg.refit_until_converged, tol=cfg.refit_tol,
                        max_epochs=cfg.refit_max_epochs, min_epochs=cfg.refit_min_epochs,
                        eval_every=cfg.refit_eval_every, state_dir=refit_dir)
    refit = fit.model
    rec.update(fit.summary())
    if refit_dir is not None:
        rec["refit_encoder_weights"] = str(Path(refit_dir) / REFIT_ENCODER)
        rec["refit_encoder_sha256"] = sha256_file(Path(refit_dir) / REFIT_ENCODER)
    refit_d = on_device(refit, dev)
    per["test_refit"] = elbo_bits(refit_d, test_images, cfg.elbo_samples, cfg.seed, device=dev)
    for s in STREAMS:
        _put(rec, f"{s}_elbo", (per[s].mean(), stderr(per[s])), dims)
    _stream_gaps(rec, per, "", dims)
    rec["aigg_share_of_egg"], rec["aigg_share_of_egg_se"] = share_se(per["test"], per["test_refit"], per["train"])

    stage("2^-24 pixel floor: the -ELBO above 24 bits per pixel")
    floored = {}
    models = {"train": model, "test": model, "test_refit": refit}
    models_d = {"train": model_d, "test": model_d, "test_refit": refit_d}
    imgs = {"train": train_images, "test": test_images, "test_refit": test_images}
    for s in STREAMS:
        excess, count = pixel_floor_excess_bits(models_d[s], imgs[s], cfg.elbo_samples, cfg.seed, device=dev)
        floored[s] = per[s] - excess
        rec[f"{s}_floor_excess_bpd"] = float(excess.mean() / dims)
        rec[f"{s}_floored_pixels_per_image"] = float(count.mean())
        _put(rec, f"{s}_floored_elbo", (floored[s].mean(), stderr(floored[s])), dims)
    _stream_gaps(rec, floored, "_floored", dims)

    if cfg.code:
        stage(f"real bitstreams ({n_tr} train + 2 x {n_te} test images, encode + decode)")
        ideal, onetime = {}, {}
        for s in STREAMS:
            c = coded_bits(models[s], imgs[s], cfg.chains, cfg.latent_bits, cfg.coder_path, name=f"gaps-{s}")
            n_dims = len(imgs[s]) * dims
            ideal[s] = c["ideal_per_image"]
            for k in ("actual", "payload", "container", "initial", "ideal"):
                rec[f"{s}_{k}_bits"] = c[f"{k}_bits"]
                rec[f"{s}_{k}_bpd"] = c[f"{k}_bits"] / n_dims
            rec[f"{s}_actual_se_bpd"] = stderr(ideal[s]) / dims
            # one-time costs of a file: chain starts (inside the payload) and the container header
            onetime[s] = (c["initial_bits"] + c["container_bits"]) / n_dims
            rec[f"{s}_actual_excl_onetime_bpd"] = rec[f"{s}_actual_bpd"] - onetime[s]
            rec[f"{s}_ans_overhead_bpd"] = (c["payload_bits"] - c["ideal_bits"] - c["initial_bits"]) / n_dims
            rec[f"{s}_plain_images"] = c["plain_images"]
            rec[f"{s}_encode_seconds"] = c["encode_seconds"]
            rec[f"{s}_decode_seconds"] = c["decode_seconds"]
            rec[f"{s}_verified"] = c["verified"]
            # < 0 where the code is cheaper than the -ELBO: the 2^-24 floor (see *_floor_excess_bpd)
            # or, early in training, q wider than the prior (each latent's cost is capped at latent_bits)
            rec[f"{s}_actual_minus_elbo_bpd"] = rec[f"{s}_actual_bpd"] - rec[f"{s}_elbo_bpd"]
            rec[f"{s}_actual_minus_floored_elbo_bpd"] = rec[f"{s}_actual_bpd"] - rec[f"{s}_floored_elbo_bpd"]
            rec["coder_path"] = c["coder_path"]
        rec["chains"] = cfg.chains
        rec["latent_bits"] = cfg.latent_bits
        for g, (a, b) in GAP_TERMS.items():
            rec[f"{g}_actual_bpd"] = rec[f"{a}_actual_bpd"] - rec[f"{b}_actual_bpd"]
            pair = paired_gap if g == "aigg" else independent_gap
            rec[f"{g}_actual_se_bpd"] = pair(ideal[a], ideal[b])[1] / dims
            rec[f"{g}_actual_excl_onetime_bpd"] = (rec[f"{a}_actual_excl_onetime_bpd"]
                                                   - rec[f"{b}_actual_excl_onetime_bpd"])
            for k in ("initial", "container"):
                rec[f"{g}_{k}_bpd"] = rec[f"{a}_{k}_bpd"] - rec[f"{b}_{k}_bpd"]
            rec[f"{g}_actual_minus_elbo_bpd"] = rec[f"{g}_actual_bpd"] - rec[f"{g}_bpd"]
            rec[f"{g}_actual_minus_floored_bpd"] = rec[f"{g}_actual_bpd"] - rec[f"{g}_floored_bpd"]
            # 1-sigma noise of (actual gap - ELBO gap) from the coder's single latent per image
            diff = {s: (ideal[s] - per[s]) for s in (a, b)}
            rec[f"{g}_actual_noise_bpd"] = pair(diff[a], diff[b])[1] / dims

    if with_split:
        rec.update(amortization_split(model, refit, test_images[images.split_pick], cfg,
                                      images.info["split_selection"], stage))
    rec["checkpoint_seconds"] = time.perf_counter() - t0
    return rec


# ----------------------------------------------------------------------------- the store and a whole run


def settings_hash(cfg: GapsConfig, info: dict) -> str:
    """Short hash of what determines a checkpoint's numbers: the measured settings and the images."""
    key = {"format": RECORD_FORMAT, "settings": cfg.measured_settings(),
           "images": {k: info[k] for k in ("dataset", "train_subset_size", "train_subset_seed", "train_eval_n_images",
                                           "test_n_images", "test_indices_sha256", "split_n_images")}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def store_dir(run_dir: Path, cfg: GapsConfig, info: dict) -> Path:
    return Path(run_dir) / "gaps" / settings_hash(cfg, info)


def _record_path(store: Path, epoch: int) -> Path:
    return store / f"epoch_{epoch:04d}.json"


def load_record(store: Path, epoch: int, weights_sha256: str | None) -> dict | None:
    """The stored record of `epoch`, if it is there and was measured on these weights (None: on
    whatever weights it names, for a checkpoint that is no longer on disk)."""
    p = _record_path(store, epoch)
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if rec.get("format") != RECORD_FORMAT or \
            (weights_sha256 is not None and rec.get("checkpoint_weights_sha256") != weights_sha256):
        return None
    return rec


def select_checkpoints(run_dir: Path, epochs: tuple | None) -> list[tuple[int, Path]]:
    ckpts = list_checkpoints(run_dir)
    if epochs:
        want = {int(e) for e in epochs}
        missing = want - {e for e, _ in ckpts}
        if missing:
            raise ModelError(f"{run_dir} has no checkpoint for epoch(s) {sorted(missing)}; it has "
                             f"{[e for e, _ in ckpts]}")
        ckpts = [(e, p) for e, p in ckpts if e in want]
    return ckpts


def run_gaps(run_dir: Path, cfg: GapsConfig | None = None, data_dir=None,
             on_stage: Callable[[int, int, str], None] | None = None,
             on_checkpoint: Callable[[dict], None] | None = None, store: bool = True) -> dict:
    """Measure the gaps at the checkpoints of `run_dir`; returns the JSON-ready result.

    With `store` (default), each checkpoint's record goes to RUN_DIR/gaps/<settings hash>/ as
    soon as it is measured, and checkpoints already measured there are read, not measured again.
    """
    cfg = cfg or GapsConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    ckpts = select_checkpoints(run_dir, cfg.epochs)
    first_config = read_config(ckpts[0][1])
    images = run_images(run_dir, first_config, cfg, data_dir)
    sdir = store_dir(run_dir, cfg, images.info) if store else None
    if sdir is not None:
        sdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sdir / "settings.json", {"format": RECORD_FORMAT, "settings": cfg.measured_settings(),
                                                  "refit": refit_description(cfg), **images.info})
    per_ckpt = 5 if cfg.code else 4          # stages of checkpoint_gaps without the split
    split_at = {len(ckpts) - 1} if cfg.split == "last" else set(range(len(ckpts))) if cfg.split == "all" else set()
    n_stages = [per_ckpt + (2 if i in split_at else 0) for i in range(len(ckpts))]
    total = sum(n_stages)

    t0 = time.perf_counter()
    records = []
    for i, (epoch, path) in enumerate(ckpts):
        config = read_config(path)
        if config.get("train_subset") != first_config.get("train_subset") or \
                config.get("dataset") != first_config.get("dataset"):
            raise ModelError(f"{path}: dataset or train subset differs from the run's first checkpoint")
        done = sum(n_stages[:i])

        def stage(text, _epoch=epoch):
            nonlocal done
            if on_stage:
                on_stage(done, total, f"epoch {_epoch}: {text}")
            done += 1

        want_split = i in split_at
        rec = load_record(sdir, epoch, config["weights_sha256"]) if sdir is not None else None
        if rec is not None and (not want_split or "test_iwae_bpd" in rec):
            rec["from_store"] = True
        else:
            model, config = load_checkpoint(path)
            refit_dir = sdir / f"epoch_{epoch:04d}.refit" if sdir is not None else None
            if rec is not None:  # measured before without the split: add it, with the stored refit encoder
                rec.update(amortization_split(model, load_refit(model, refit_dir), images.test[images.split_pick],
                                              cfg, images.info["split_selection"], stage))
            else:
                rec = {"format": RECORD_FORMAT, "epoch": epoch, "checkpoint": str(path),
                       "checkpoint_weights_sha256": config["weights_sha256"]}
                rec.update(checkpoint_gaps(model, images, cfg, want_split, stage, refit_dir))
            if sdir is not None:
                write_json_atomic(_record_path(sdir, epoch), rec)
            rec["from_store"] = False
        records.append(rec)
        if on_checkpoint:
            on_checkpoint(rec)
    if on_stage:
        on_stage(total, total, "done")
    return assemble(run_dir, cfg, images.info, first_config, records, time.perf_counter() - t0, sdir)


def assemble(run_dir: Path, cfg: GapsConfig, info: dict, first_config: dict, records: list[dict],
             seconds: float, sdir: Path | None) -> dict:
    """The whole-run result from the per-checkpoint records."""
    last_split = next((r for r in reversed(records) if "test_iwae_bpd" in r), None)
    split = {k: last_split.get(k) for k in SPLIT_SUMMARY_KEYS} if last_split is not None else None
    mcfg = first_config.get("model") or {}
    shape = mcfg.get("image_shape") or []
    return {
        "format": FORMAT,
        "run_dir": str(run_dir),
        "store_dir": None if sdir is None else str(sdir),
        "model": first_config.get("model"),
        "preset": first_config.get("preset"),
        "n_dims_per_image": int(np.prod(shape)) * int(mcfg.get("channels", 1) or 1) if shape else None,
        **info,
        "refit": refit_description(cfg),
        "settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                     "refit_optimizer": "Adam on encoder parameters only, decoder frozen, starting from phi_N",
                     "refit_convergence": "refit_rel_change_last10pct (± _se): -slope * w / L(n), L = -ELBO of the "
                                          "refit images at fixed noise (1 sample, seeded) evaluated every "
                                          f"{cfg.refit_eval_every} epoch(s), slope = least-squares line through the "
                                          "evaluations in the last w epochs, w = 10% of the n epochs run (at least "
                                          f"{MIN_WINDOW}); until-converged stops when |change| + 2 SE < tol",
                     "local_opt_optimizer": f"Adam on per-image mu and log sigma, starting from the {cfg.local_init} "
                                            "encoder's output",
                     "elbo_estimator": f"objectives.neg_elbo_bits with {cfg.elbo_samples} MC samples per image, "
                                       f"seed {cfg.seed}; the same noise for every encoder on the same images"},
        "units": UNITS,
        "sign_convention": SIGN_CONVENTION,
        "standard_errors": SE_DEFINITION,
        "actual_bits_definition": ACTUAL_BITS_DEFINITION,
        "pixel_floor_bits": PIXEL_FLOOR_BITS,
        "container_header_bits_included": True,
        "checkpoints": records,
        "split": split,
        "total_seconds": seconds,
        "machine": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
    }


def quick_train(run_dir: Path, q: QuickTrain = QUICK_TRAIN, data_dir=None, meta: dict | None = None,
                on_epoch: Callable[[dict], None] | None = None) -> Path:
    """Train the small `--quick` setting into run_dir (resumes if it is there)."""
    mcfg = preset_config(q.preset)
    if q.hidden is not None:
        mcfg = replace(mcfg, hidden=tuple(q.hidden))
    args = TrainArgs(dataset=q.dataset, model=mcfg.to_dict(), epochs=q.epochs, train_size=q.train_size,
                     save_every=q.save_every, seed=q.seed, data_dir=None if data_dir is None else str(data_dir))
    return train(Path(run_dir), args, meta={"preset": q.preset, **(meta or {})}, on_epoch=on_epoch)
