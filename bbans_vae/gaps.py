"""Generalization gaps of a VAE training run, as -ELBO estimates and as real bitstreams (docs/DESIGN.md, math).

For every checkpoint (θ_N, φ_N) of a run made by `vaecompress train --save-every S`:

    train_elbo_bpd        -ELBO on the run's training images (its train subset, or a fixed
                          seeded random subset of it of `train_eval_size` images)
    test_elbo_bpd         -ELBO on the test images with the training encoder φ_N
    test_refit_elbo_bpd   -ELBO on the test images with φ_M: a copy of the encoder trained on the
                          test images with the decoder frozen (Adam, starting from φ_N)
    egg_bpd  = test_elbo - train_elbo          (ELBO generalization gap)
    aigg_bpd = test_elbo - test_refit_elbo     (amortized inference generalization gap)
    gmgg_bpd = test_refit_elbo - train_elbo    (generative model generalization gap)
so egg = aigg + gmgg (in bpd a larger number is worse; the reference text writes the gaps as
ELBO differences, i.e. with the opposite sign convention on log-likelihoods).

The same three gaps are measured on real BB-ANS bitstreams (`coding.encode_images`): the train
images coded with φ_N, the test images with φ_N and with φ_M -> `*_actual_bpd`. "Actual" here is
the ANS payload: every valid bit of every chain (including `initial_bits`, the chain-start cost);
the container header (model name, hashes, chain lengths) is NOT included. See `ACTUAL_BITS_DEFINITION`.

Beyond the note, at the last checkpoint (or every one), on the first `split_images` test images:
    test_local_opt_bpd    -ELBO with a per-image Gaussian q(z) = N(mu, sigma^2) optimised directly
                          (Adam on mu, log sigma; decoder frozen): the amortization-free ELBO
    test_iwae_bpd         importance-weighted estimate of -log p(x) (`iwae_bits`, K samples,
                          proposal: the per-image optimised Gaussian q)
    test_elbo = -log p(x) [iwae] + approximation gap [local_opt - iwae]
                                 + amortization gap [test_elbo - local_opt]
and the amortization gap splits further into AIGG (test_elbo - test_refit_elbo on the subset)
plus the refit encoder's own amortization gap (test_refit_elbo - local_opt).

Every -ELBO comes from `models.neg_elbo_bits`, with `elbo_samples` Monte-Carlo samples and a fixed
seed; evaluations of different encoders on the same images use the same noise (common random
numbers), so AIGG is not MC noise. Units: bpd = bits / (images x pixels x channels).

Nothing here prints: progress goes to the optional `on_stage(done, total, text)` and
`on_checkpoint(record)` callbacks.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import CONFIG, load_checkpoint, read_config, write_json_atomic
from .ans.chains import DEFAULT_LATENT_BITS, encode_images
from .data import run_dataset
from .errors import ModelError, VaeCompressError
from .models import VAE, preset_config
from .objectives import iwae_bits, neg_elbo_bits
from .train import TrainArgs, train, train_subset_indices

FORMAT = "vaecompress-gaps/1"
ACTUAL_BITS_DEFINITION = (
    "*_actual_bits / *_actual_bpd: ANS payload of real BB-ANS bitstreams (coding.encode_images): the sum of "
    "the valid bits of all chains, which includes initial_bits (bits not got back on the plain-coded images "
    "that start each chain) and the chains' flush words; the .vae container header (model name and hash, "
    "chain lengths, plain-image list, pixel checksum) is EXCLUDED")
UNITS = "bpd = bits / (n_images x height x width x channels); *_bits are totals over the image set"

GAP_KEYS = ("egg", "aigg", "gmgg")


@dataclass
class GapsConfig:
    """Settings of a gaps measurement (all stored in the output JSON)."""

    refit_epochs: int = 100          # encoder refit on the test images (decoder frozen)
    refit_lr: float = 1e-3
    refit_batch_size: int = 100
    elbo_samples: int = 10           # MC samples per image for every reported -ELBO
    train_eval_size: int = 10_000    # at most this many training images (seeded subset)
    max_test: int | None = None      # first N test images (None: the whole test split)
    code: bool = True                # also measure real bitstreams
    chains: int = 10
    latent_bits: int = DEFAULT_LATENT_BITS
    split: str = "last"              # where to compute local-opt/IWAE: "last" | "all" | "none"
    split_images: int = 1000         # first N test images for the split
    iwae_k: int = 1000
    local_steps: int = 300           # Adam steps of the per-image Gaussian q
    local_lr: float = 1e-2
    local_samples: int = 1           # MC samples per image per local-opt step
    local_init: str = "refit"        # start local opt from the "refit" or the "train" encoder's output
    seed: int = 0
    epochs: tuple | None = None      # only these checkpoint epochs (None: all)

    def validate(self) -> None:
        if self.refit_epochs < 0 or self.refit_batch_size < 1 or self.refit_lr <= 0:
            raise VaeCompressError("refit epochs must be >= 0, batch size >= 1, lr > 0")
        if self.elbo_samples < 1 or self.train_eval_size < 1 or self.chains < 1:
            raise VaeCompressError("elbo samples, train eval size and chains must be >= 1")
        if self.max_test is not None and self.max_test < 1:
            raise VaeCompressError("--max-test must be >= 1")
        if self.split not in ("last", "all", "none"):
            raise VaeCompressError(f"split must be 'last', 'all' or 'none', not {self.split!r}")
        if self.split != "none" and (self.iwae_k < 1 or self.split_images < 1 or self.local_steps < 0):
            raise VaeCompressError("--iwae and split images must be >= 1, --local-steps >= 0")
        if self.local_init not in ("refit", "train"):
            raise VaeCompressError("local_init must be 'refit' or 'train'")


# Settings of `vaecompress gaps --quick` (see QUICK_TRAIN for the run it trains).
QUICK_GAPS = GapsConfig(refit_epochs=20, elbo_samples=10, max_test=1000, train_eval_size=2000, chains=10,
                        split="last", split_images=300, iwae_k=200, local_steps=100)


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


def run_images(run_dir: Path, config: dict, cfg: GapsConfig, data_dir=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The run's training images (its train subset, or a seeded subset of it) and the test images."""
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
    eval_pick = None
    if n_train_subset > cfg.train_eval_size:
        eval_pick = np.sort(np.random.RandomState(cfg.seed).permutation(n_train_subset)[:cfg.train_eval_size])
        train_idx = train_idx[eval_pick]
    test = ds.images("test")
    n_test_split = len(test)
    if cfg.max_test is not None:
        test = test[:cfg.max_test]
    info = {
        "dataset": dataset,
        "train_subset_size": int(n_train_subset),
        "train_subset_seed": seed,
        "train_subset_full": full,
        "train_eval_n_images": int(len(train_idx)),
        "train_eval_selection": ("the whole train subset the run trained on" if eval_pick is None else
                                 f"a fixed random subset of {len(train_idx)} of the run's {n_train_subset} "
                                 f"training images (RandomState({cfg.seed}).permutation)"),
        "test_n_images": int(len(test)),
        "test_selection": (f"the first {len(test)} of the {n_test_split} test images"
                           if len(test) < n_test_split else f"the whole test split ({n_test_split} images)"),
    }
    return all_train[train_idx], test, info


def elbo_bits(model: VAE, images: np.ndarray, n_samples: int = 10, seed: int = 0,
              posterior: tuple[torch.Tensor, torch.Tensor] | None = None, batch_size: int = 1000) -> np.ndarray:
    """Per-image -ELBO in bits (`neg_elbo_bits`, seeded). Same seed + same images = same noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size])
            post = None if posterior is None else (posterior[0][i:i + batch_size], posterior[1][i:i + batch_size])
            out.append(neg_elbo_bits(model, x, n_samples=n_samples, gen=gen, posterior=post).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


class _FrozenDecoder:
    """Context: decoder parameters do not require grad (restored afterwards)."""

    def __init__(self, model: VAE):
        self.params = list(model.decoder.parameters())

    def __enter__(self):
        self.before = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, b in zip(self.params, self.before):
            p.requires_grad_(b)


def refit_encoder(model: VAE, images: np.ndarray, epochs: int, lr: float = 1e-3, batch_size: int = 100,
                  seed: int = 0, on_epoch: Callable[[int, float], None] | None = None) -> tuple[VAE, list[float]]:
    """A copy of `model` whose encoder is trained on `images` with the decoder frozen.

    Adam on the encoder parameters only, minibatches of `batch_size`, 1-sample `neg_elbo_bits`
    (as in training), shuffling and noise seeded by (seed, epoch). Returns the model φ_M with the
    same decoder weights, and the mean training loss (bpd) of each epoch.
    """
    refit = copy.deepcopy(model)
    history: list[float] = []
    if epochs == 0:
        return refit.eval(), history
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    n, dims = len(x_all), model.cfg.n_pixels
    opt = torch.optim.Adam(refit.encoder.parameters(), lr=lr)
    with _FrozenDecoder(refit):
        refit.train()
        for epoch in range(1, epochs + 1):
            order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            noise = torch.Generator().manual_seed(seed * 1_000_033 + epoch + 7)
            perm = torch.randperm(n, generator=order)
            total = 0.0
            for i in range(0, n, batch_size):
                x = x_all[perm[i:i + batch_size]]
                loss = neg_elbo_bits(refit, x, gen=noise).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
            if not math.isfinite(total):
                raise VaeCompressError(f"encoder refit diverged at epoch {epoch}; lower the refit lr")
            history.append(total / n / dims)
            if on_epoch:
                on_epoch(epoch, history[-1])
    for p in refit.parameters():
        p.requires_grad_(True)
    return refit.eval(), history


def local_opt_posterior(model: VAE, images: np.ndarray, steps: int, lr: float = 1e-2, seed: int = 0,
                        n_samples: int = 1, init: VAE | None = None,
                        batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Gaussian q(z) = N(mu, sigma^2) fitted by Adam on each image's -ELBO, decoder frozen.

    Starts from `init`'s (default: `model`'s) encoder output; optimises mu and log sigma of every
    image independently (the loss is the sum over images, so the batch does not couple them) for
    `steps` steps with `n_samples` reparameterised samples per step, noise seeded. Returns (mu, sigma).
    """
    gen = torch.Generator().manual_seed(seed + 99_991)
    mus, sigmas = [], []
    enc = init if init is not None else model
    model.eval()
    with _FrozenDecoder(model):
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size])
            with torch.no_grad():
                mu0, sigma0 = enc.posterior(x)
            mu = mu0.clone().requires_grad_(True)
            log_sigma = torch.log(sigma0).clone().requires_grad_(True)
            opt = torch.optim.Adam([mu, log_sigma], lr=lr)
            for _ in range(steps):
                loss = neg_elbo_bits(model, x, n_samples=n_samples, gen=gen,
                                     posterior=(mu, torch.exp(log_sigma))).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            mus.append(mu.detach())
            sigmas.append(torch.exp(log_sigma.detach()))
    return torch.cat(mus), torch.cat(sigmas)


class _GivenPosterior:
    """`model` with q(z|x) replaced by given (mu, sigma) rows: lets `iwae_bits` use any proposal."""

    def __init__(self, model: VAE, mu: torch.Tensor, sigma: torch.Tensor):
        self.model, self.mu, self.sigma = model, mu, sigma
        self.likelihood = model.likelihood

    def posterior(self, x):
        return self.mu, self.sigma

    def flat_pixels(self, x):
        return self.model.flat_pixels(x)

    def pixel_out(self, z, xf):
        return self.model.pixel_out(z, xf)


def dataset_iwae_bits(model: VAE, images: np.ndarray, k: int, seed: int = 0, batch_size: int = 100,
                      proposal: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """Per-image IWAE estimate of -log2 p(x) (`iwae_bits`), proposal q(z|x) of `model` or the given (mu, sigma)."""
    gen = torch.Generator().manual_seed(seed + 31_337)
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size])
            m = model if proposal is None else _GivenPosterior(model, proposal[0][i:i + batch_size],
                                                                proposal[1][i:i + batch_size])
            out.append(iwae_bits(m, x, k, gen).numpy())
    return np.concatenate(out).astype(np.float64)


def coded_bits(model: VAE, images: np.ndarray, chains: int, latent_bits: int) -> dict:
    """Real bitstream of `images` under `model`: payload, ideal, initial bits and per-image ideal bits."""
    t0 = time.perf_counter()
    enc = encode_images(model, np.ascontiguousarray(images), chains, latent_bits)
    return {"payload_bits": int(enc.payload_bits), "ideal_bits": enc.ideal_bits.astype(np.float64),
            "initial_bits": float(enc.initial_bits), "plain_images": len(enc.plain_images),
            "chains": len(enc.chain_words), "seconds": time.perf_counter() - t0}


def _stderr(a: np.ndarray) -> float:
    return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


# ----------------------------------------------------------------------------- one checkpoint


def amortization_split(model: VAE, refit: VAE, images: np.ndarray, cfg: GapsConfig,
                       stage: Callable[[str], None] = lambda s: None) -> dict:
    """test -ELBO = -log p(x) [IWAE] + approximation gap + amortization gap, on `images`."""
    dims = model.cfg.n_pixels
    n = len(images)
    t0 = time.perf_counter()
    test = elbo_bits(model, images, cfg.elbo_samples, cfg.seed)
    test_refit = elbo_bits(refit, images, cfg.elbo_samples, cfg.seed)
    stage(f"local opt of q ({cfg.local_steps} steps on {n} test images)")
    init = refit if cfg.local_init == "refit" else model
    mu, sigma = local_opt_posterior(model, images, cfg.local_steps, cfg.local_lr, cfg.seed,
                                    cfg.local_samples, init=init)
    local = elbo_bits(model, images, cfg.elbo_samples, cfg.seed, posterior=(mu, sigma))
    t_local = time.perf_counter() - t0
    stage(f"IWAE (K={cfg.iwae_k}) on {n} test images")
    t1 = time.perf_counter()
    iw = dataset_iwae_bits(model, images, cfg.iwae_k, cfg.seed, proposal=(mu, sigma))
    t_iwae = time.perf_counter() - t1
    r = {
        "split_n_images": n,
        "split_selection": f"the first {n} test images",
        "split_test_elbo_bpd": float(test.mean() / dims),
        "split_test_refit_elbo_bpd": float(test_refit.mean() / dims),
        "test_local_opt_bpd": float(local.mean() / dims),
        "test_iwae_bpd": float(iw.mean() / dims),
        "iwae_k": cfg.iwae_k,
        "iwae_proposal": "the per-image optimised Gaussian q (local opt)",
    }
    r["neg_log_px_bpd"] = r["test_iwae_bpd"]
    r["approximation_gap_bpd"] = r["test_local_opt_bpd"] - r["test_iwae_bpd"]
    r["amortization_gap_bpd"] = r["split_test_elbo_bpd"] - r["test_local_opt_bpd"]
    r["split_aigg_bpd"] = r["split_test_elbo_bpd"] - r["split_test_refit_elbo_bpd"]
    r["refit_amortization_gap_bpd"] = r["split_test_refit_elbo_bpd"] - r["test_local_opt_bpd"]
    r["local_opt_improved_fraction"] = float(np.mean(local < test_refit if cfg.local_init == "refit" else local < test))
    r["local_opt_seconds"] = t_local
    r["iwae_seconds"] = t_iwae
    return r


def checkpoint_gaps(model: VAE, train_images: np.ndarray, test_images: np.ndarray, cfg: GapsConfig,
                    with_split: bool, stage: Callable[[str], None] = lambda s: None) -> dict:
    """All gap quantities of one checkpoint (see the module docstring)."""
    dims = model.cfg.n_pixels
    n_tr, n_te = len(train_images), len(test_images)
    rec: dict = {}
    t0 = time.perf_counter()
    stage(f"train -ELBO ({n_tr} images)")
    tr = elbo_bits(model, train_images, cfg.elbo_samples, cfg.seed)
    stage(f"test -ELBO ({n_te} images)")
    te = elbo_bits(model, test_images, cfg.elbo_samples, cfg.seed)
    stage(f"refit encoder ({cfg.refit_epochs} epochs on {n_te} test images)")
    t1 = time.perf_counter()
    refit, history = refit_encoder(model, test_images, cfg.refit_epochs, cfg.refit_lr, cfg.refit_batch_size,
                                   cfg.seed)
    rec["refit_seconds"] = time.perf_counter() - t1
    te_refit = elbo_bits(refit, test_images, cfg.elbo_samples, cfg.seed)
    rec.update({
        "train_elbo_bpd": float(tr.mean() / dims),
        "test_elbo_bpd": float(te.mean() / dims),
        "test_refit_elbo_bpd": float(te_refit.mean() / dims),
    })
    rec["egg_bpd"] = rec["test_elbo_bpd"] - rec["train_elbo_bpd"]
    rec["aigg_bpd"] = rec["test_elbo_bpd"] - rec["test_refit_elbo_bpd"]
    rec["gmgg_bpd"] = rec["test_refit_elbo_bpd"] - rec["train_elbo_bpd"]
    # sampling error of the estimates over images (not MC noise: the noise is common to paired terms)
    rec["train_elbo_stderr_bpd"] = _stderr(tr) / dims
    rec["test_elbo_stderr_bpd"] = _stderr(te) / dims
    rec["aigg_stderr_bpd"] = _stderr(te - te_refit) / dims
    rec["refit_loss_first_epoch_bpd"] = history[0] if history else None
    rec["refit_loss_last_epoch_bpd"] = history[-1] if history else None
    rec["refit_loss_history_bpd"] = history

    if cfg.code:
        stage(f"real bitstreams ({n_tr} train + 2 x {n_te} test images)")
        streams = {"train": (model, train_images, tr), "test": (model, test_images, te),
                   "test_refit": (refit, test_images, te_refit)}
        diffs = {}
        for name, (m, imgs, elbo) in streams.items():
            c = coded_bits(m, imgs, cfg.chains, cfg.latent_bits)
            n_dims = len(imgs) * dims
            rec[f"{name}_actual_bits"] = c["payload_bits"]
            rec[f"{name}_actual_bpd"] = c["payload_bits"] / n_dims
            rec[f"{name}_ideal_bpd"] = float(c["ideal_bits"].sum() / n_dims)
            rec[f"{name}_initial_bits"] = c["initial_bits"]
            rec[f"{name}_initial_bpd"] = c["initial_bits"] / n_dims
            rec[f"{name}_ans_overhead_bpd"] = float(c["payload_bits"] - c["ideal_bits"].sum() - c["initial_bits"]) / n_dims
            rec[f"{name}_coding_seconds"] = c["seconds"]
            # Small and > 0 normally (initial bits, ANS overhead, latent discretisation). It can be
            # < 0 where the code is cheaper than the model's -ELBO: (a) the coder gives every pixel
            # value probability >= 2^-24, so an overconfident (overfit) decoder's wrong pixels cost
            # <= 24 bits each instead of their -log2 p; (b) early in training q is wider than the
            # prior, and the bucketed latent code caps each latent at latent_bits and clamps z.
            rec[f"{name}_actual_minus_elbo_bpd"] = rec[f"{name}_actual_bpd"] - float(elbo.mean() / dims)
            # per image: the bits of the z actually coded minus the seeded multi-sample -ELBO
            diffs[name] = (c["ideal_bits"] - elbo) / dims
        rec["chains"] = cfg.chains
        rec["latent_bits"] = cfg.latent_bits
        rec["egg_actual_bpd"] = rec["test_actual_bpd"] - rec["train_actual_bpd"]
        rec["aigg_actual_bpd"] = rec["test_actual_bpd"] - rec["test_refit_actual_bpd"]
        rec["gmgg_actual_bpd"] = rec["test_refit_actual_bpd"] - rec["train_actual_bpd"]
        # 1-sigma MC noise of (actual gap - ELBO gap): the coder draws one discretised z per image,
        # the ELBO averages `elbo_samples`; both images sets are independent of each other's noise.
        se = {k: _stderr(v) for k, v in diffs.items()}
        rec["egg_actual_noise_bpd"] = math.hypot(se["test"], se["train"])
        rec["aigg_actual_noise_bpd"] = _stderr(diffs["test"] - diffs["test_refit"])
        rec["gmgg_actual_noise_bpd"] = math.hypot(se["test_refit"], se["train"])
        for g in GAP_KEYS:
            rec[f"{g}_actual_minus_elbo_bpd"] = rec[f"{g}_actual_bpd"] - rec[f"{g}_bpd"]

    if with_split:
        n = min(cfg.split_images, n_te)
        rec.update(amortization_split(model, refit, test_images[:n], cfg, stage))
    rec["checkpoint_seconds"] = time.perf_counter() - t0
    return rec


# ----------------------------------------------------------------------------- a whole run


def run_gaps(run_dir: Path, cfg: GapsConfig | None = None, data_dir=None,
             on_stage: Callable[[int, int, str], None] | None = None,
             on_checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Measure the gaps at every checkpoint of `run_dir`; returns the JSON-ready result."""
    cfg = cfg or GapsConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if cfg.epochs:
        want = {int(e) for e in cfg.epochs}
        missing = want - {e for e, _ in ckpts}
        if missing:
            raise ModelError(f"{run_dir} has no checkpoint for epoch(s) {sorted(missing)}; it has "
                             f"{[e for e, _ in ckpts]}")
        ckpts = [(e, p) for e, p in ckpts if e in want]
    first_config = read_config(ckpts[0][1])
    train_images, test_images, info = run_images(run_dir, first_config, cfg, data_dir)
    per_ckpt = 5 if cfg.code else 4
    split_at = {len(ckpts) - 1} if cfg.split == "last" else set(range(len(ckpts))) if cfg.split == "all" else set()
    total = len(ckpts) * per_ckpt + 2 * len(split_at)
    done = 0

    t0 = time.perf_counter()
    records = []
    model_cfg = None
    for i, (epoch, path) in enumerate(ckpts):
        model, config = load_checkpoint(path)
        if config.get("train_subset") != first_config.get("train_subset") or \
                config.get("dataset") != first_config.get("dataset"):
            raise ModelError(f"{path}: dataset or train subset differs from the run's first checkpoint")
        model_cfg = config.get("model")

        def stage(text, _epoch=epoch):
            nonlocal done
            if on_stage:
                on_stage(done, total, f"epoch {_epoch}: {text}")
            done += 1

        rec = {"epoch": epoch, "checkpoint": str(path)}
        rec.update(checkpoint_gaps(model, train_images, test_images, cfg, i in split_at, stage))
        records.append(rec)
        if on_checkpoint:
            on_checkpoint(rec)
    if on_stage:
        on_stage(total, total, "done")
    last_split = next((r for r in reversed(records) if "test_iwae_bpd" in r), None)
    split = None
    if last_split is not None:
        split = {k: last_split[k] for k in ("epoch", "split_n_images", "split_selection", "split_test_elbo_bpd",
                                            "test_iwae_bpd", "neg_log_px_bpd", "approximation_gap_bpd",
                                            "amortization_gap_bpd", "split_aigg_bpd", "refit_amortization_gap_bpd",
                                            "split_test_refit_elbo_bpd", "test_local_opt_bpd", "iwae_k")}
    import platform
    return {
        "format": FORMAT,
        "run_dir": str(run_dir),
        "model": model_cfg,
        "preset": first_config.get("preset"),
        "n_dims_per_image": model.cfg.n_pixels,
        **info,
        "settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                     "refit_optimizer": "Adam on encoder parameters only, decoder frozen, starting from phi_N",
                     "local_opt_optimizer": f"Adam on per-image mu and log sigma, starting from the {cfg.local_init} "
                                            "encoder's output",
                     "elbo_estimator": f"models.neg_elbo_bits with {cfg.elbo_samples} MC samples per image, "
                                       f"seed {cfg.seed}; the same noise for every encoder on the same images"},
        "units": UNITS,
        "sign_convention": "gaps in bpd: larger is worse; egg = test - train, aigg = test - test_refit, "
                           "gmgg = test_refit - train, so egg = aigg + gmgg",
        "actual_bits_definition": ACTUAL_BITS_DEFINITION,
        "container_header_bits_included": False,
        "checkpoints": records,
        "split": split,
        "total_seconds": time.perf_counter() - t0,
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


# ----------------------------------------------------------------------------- outputs


CSV_COLUMNS = ["epoch", "train_elbo_bpd", "test_elbo_bpd", "test_refit_elbo_bpd", "egg_bpd", "aigg_bpd", "gmgg_bpd",
               "train_actual_bpd", "test_actual_bpd", "test_refit_actual_bpd", "egg_actual_bpd", "aigg_actual_bpd",
               "gmgg_actual_bpd", "aigg_actual_noise_bpd", "train_initial_bpd", "test_initial_bpd",
               "test_local_opt_bpd", "test_iwae_bpd", "approximation_gap_bpd", "amortization_gap_bpd",
               "split_n_images", "refit_loss_last_epoch_bpd", "refit_seconds", "checkpoint_seconds"]


def write_json(result: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)


def write_csv(result: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in result["checkpoints"]:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})


def plot(result: dict, path: Path) -> None:
    """Two panels: bpd vs epoch (train, test, test-refit + real-bitstream markers); gaps vs epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["checkpoints"]
    ep = [r["epoch"] for r in recs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    lines = [("train_elbo_bpd", "train (φ_N)", "C0"), ("test_elbo_bpd", "test (φ_N)", "C3"),
             ("test_refit_elbo_bpd", "test, refit encoder (φ_M)", "C2")]
    for key, label, color in lines:
        a1.plot(ep, [r[key] for r in recs], "-", color=color, label=f"{label}: -ELBO")
        akey = key.replace("_elbo_bpd", "_actual_bpd")
        if all(akey in r for r in recs):
            a1.plot(ep, [r[akey] for r in recs], "x", color=color, markersize=8, label=f"{label}: bitstream")
    split = [r for r in recs if "test_iwae_bpd" in r]
    if split:
        a1.plot([r["epoch"] for r in split], [r["split_test_elbo_bpd"] for r in split], "o", color="C3", mfc="none",
                label=f"test (φ_N) on the first {split[0]['split_n_images']}")
        a1.plot([r["epoch"] for r in split], [r["test_local_opt_bpd"] for r in split], "s", color="C4", mfc="none",
                label=f"test, per-image q (first {split[0]['split_n_images']})")
        a1.plot([r["epoch"] for r in split], [r["test_iwae_bpd"] for r in split], "^", color="C5", mfc="none",
                label=f"test IWAE K={split[0]['iwae_k']} (first {split[0]['split_n_images']})")
    a1.set_xlabel("epoch")
    a1.set_ylabel("bits per dimension")
    a1.set_title(f"{result.get('dataset')}, {result.get('train_subset_size')} training images")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    for g, color in zip(GAP_KEYS, ("C3", "C1", "C0")):
        a2.plot(ep, [r[f"{g}_bpd"] for r in recs], "-o", color=color, markersize=3, label=f"{g.upper()} (-ELBO)")
        if all(f"{g}_actual_bpd" in r for r in recs):
            a2.plot(ep, [r[f"{g}_actual_bpd"] for r in recs], "x--", color=color, alpha=0.7,
                    label=f"{g.upper()} (bitstreams)")
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xlabel("epoch")
    a2.set_ylabel("gap (bpd, larger = worse on test)")
    a2.set_title("EGG = AIGG + GMGG")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_row_header() -> str:
    return (f"{'epoch':>6} {'train':>8} {'test':>8} {'refit':>8} {'EGG':>8} {'AIGG':>8} {'GMGG':>8}   "
            f"{'train*':>8} {'test*':>8} {'refit*':>8} {'EGG*':>8} {'AIGG*':>8} {'GMGG*':>8}")


def format_row(r: dict) -> str:
    s = (f"{r['epoch']:>6} {r['train_elbo_bpd']:8.4f} {r['test_elbo_bpd']:8.4f} {r['test_refit_elbo_bpd']:8.4f} "
         f"{r['egg_bpd']:8.4f} {r['aigg_bpd']:8.4f} {r['gmgg_bpd']:8.4f}")
    if "train_actual_bpd" in r:
        s += (f"   {r['train_actual_bpd']:8.4f} {r['test_actual_bpd']:8.4f} {r['test_refit_actual_bpd']:8.4f} "
              f"{r['egg_actual_bpd']:8.4f} {r['aigg_actual_bpd']:8.4f} {r['gmgg_actual_bpd']:8.4f}")
    return s


def format_split(s: dict) -> str:
    return (f"split at epoch {s['epoch']} (first {s['split_n_images']} test images, bpd):\n"
            f"  test -ELBO (training encoder)  {s['split_test_elbo_bpd']:.4f}\n"
            f"  = -log p(x) [IWAE K={s['iwae_k']}]     {s['neg_log_px_bpd']:.4f}\n"
            f"  + approximation gap            {s['approximation_gap_bpd']:+.4f}  (per-image Gaussian q - IWAE)\n"
            f"  + amortization gap             {s['amortization_gap_bpd']:+.4f}  (test -ELBO - per-image q)\n"
            f"      of which AIGG              {s['split_aigg_bpd']:+.4f}  (training - refit encoder)\n"
            f"      and refit encoder's gap    {s['refit_amortization_gap_bpd']:+.4f}  (refit encoder - per-image q)")
