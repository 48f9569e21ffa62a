"""Issue 14 on one GPU: the seed experiment (1,000 epochs on 60k / 10k / 1k mnist-bin images, encoder
refits at 12 checkpoints until converged) and Reverse Half-Asleep as its authors ran it, with every
-ELBO, IWAE and local-opt pass on the GPU and every bitstream coded on the CPU cores beside it.

    python benchmarks/gpu_study.py all --out OUT --deadline-s 540      # the whole thing, one call
    python benchmarks/gpu_study.py all --tiny --out /tmp/t             # a CPU smoke test of every step

Jobs (each a process; `all` runs them with at most --cpu-jobs coding processes at a time):
  train NAME      mlp-paper on mnist-bin (all 60k, or the seeded 10k / 1k subset of `train.py`),
                  Adam 1e-3, batch 100, seed 0, the shuffling of `train.py`; one CUDA graph per step
                  (`bbans_vae.batched`); checkpoints at epochs 10, 50, 100, ..., 1000 in the project's
                  format with run.json and train_log.jsonl, so `vaecompress gaps` reads the run.
  refit NAME      the encoders of all its checkpoints refit at once on the full 10k test set (decoder
                  frozen, Adam 1e-3, batch 100, the shuffling of `gaps.refit_encoder`), each until
                  converged by `gaps.is_converged` (tol 1e-4, at least 100, at most 1000 epochs), the
                  fixed-noise curve evaluated every epoch; written as finished refit states into the
                  gaps store, where `gaps.run_gaps` picks them up.
  gaps NAME E     `gaps.run_gaps` of one checkpoint (the seed study's settings, -ELBO passes on the GPU,
                  bitstreams on one CPU core, every file decoded and verified).
  rha REF         the 9 fine-tunings of a model's encoder (control, rha-prior, rha-recon x seeds 0-2),
                  100 epochs, stacked; plus the model's reference refit on the test images; written as
                  finished states where `benchmarks/rha_study.py` picks them up, which then measures.
Everything is written under --runs (default runs/); `all` packs the results (no weights but the
epoch-100/1000 models and two RHA encoders) into --out.

Sizing (benchmarks/results/gpu-study/: ms per step of each workload alone on an H200): the three
trainings need ~352 s, the 36 refits <= 174 s, the gaps jobs ~90 s on 15 cores, the mlp RHA ~60 s
per model, the context-model RHA ~620 s per model. Workloads sharing the GPU slow each other (the
first run, under MPS, trained at 2-3.5 ms per step instead of 0.6), so run the chains apart:
`all --only seed` in one call (training), then the same command again while the machine is warm
(runs/ is kept; finished trainings are skipped) for the refits and gaps; the RHA chains in a lease
of their own.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.batched import (LockstepTrainer, Stacked, encoder_input, neg_elbo_bits_stacked,  # noqa: E402
                               shared_pixel_out, stacked_pixel_out, stacked_posterior)
from bbans_vae.checkpoint import (load_checkpoint, load_model, read_config, save_checkpoint,  # noqa: E402
                                  save_tensors_atomic, sha256_file, write_json_atomic)
from bbans_vae.data import run_dataset  # noqa: E402
from bbans_vae.models import build_model, preset_config  # noqa: E402
from bbans_vae.objectives import dataset_neg_elbo_bits  # noqa: E402
from bbans_vae.train import TrainArgs, train_subset_indices  # noqa: E402

SAVE_EPOCHS = [10, 50] + list(range(100, 1001, 100))
RUNS = {"seed-full": None, "seed-10k": 10_000, "seed-1k": 1_000}     # name -> train_size
TINY_RUNS = {"seed-full": 500, "seed-10k": 300, "seed-1k": 200}
RHA_MODELS = ["mnist-bin-paper", "runs/seed-full/checkpoints/epoch_1000", "mnist-bin", "mnist-bin-ctx", "mnist-ctx"]
OBJECTIVES = ("control", "rha-prior", "rha-recon")        # the variant names of rha_study.py
BATCH = 100


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"cpu, torch {torch.__version__}"


def study_cfg(tiny: bool) -> G.GapsConfig:
    """The seed study's gaps settings (benchmarks/seed_study.py), -ELBO passes on the GPU."""
    cfg = G.GapsConfig(refit_until_converged=True, refit_tol=1e-4, refit_max_epochs=1000, train_eval_size=10_000,
                       test_images=None, split="all", split_images=2000, iwae_k=1000, local_steps=300,
                       chains=10, elbo_samples=10, seed=0, device="cuda" if torch.cuda.is_available() else "cpu")
    if tiny:
        cfg = replace(cfg, refit_max_epochs=4, refit_min_epochs=2, train_eval_size=200, test_images=200,
                      split_images=50, iwae_k=20, local_steps=5, chains=2, elbo_samples=2)
    return cfg


# ----------------------------------------------------------------------------- training


def train_job(runs: Path, names: list[str], epochs: int, save_epochs: list[int], deadline: float, tiny: bool,
              data_dir) -> None:
    """mlp-paper on mnist-bin for each run of `names` (its own training images, shuffling and noise),
    the runs stacked in one CUDA graph: one outer step is one batch of every run, so the run with
    the most images sets the pace and the smaller ones finish their epochs sooner (their later steps
    are not used). Checkpoints at `save_epochs`, train_log.jsonl and run.json as `train.py` writes."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = preset_config("mlp-paper")
    P, D, R = cfg.n_pixels, cfg.latent_dim, len(names)
    sizes = TINY_RUNS if tiny else RUNS
    all_args = [TrainArgs(dataset="mnist-bin", model=cfg.to_dict(), epochs=epochs, train_size=sizes[nm],
                          save_every=None, data_dir=data_dir) for nm in names]
    ds = run_dataset(asdict(all_args[0]), data_dir)
    all_train = ds.images("train")
    subsets = [train_subset_indices(len(all_train), a.train_size, a.seed) for a in all_args]
    test_x = ds.images("test")
    x_all = torch.from_numpy(all_train).to(device).float().view(len(all_train), P)
    meta = {"preset": "mlp-paper", "hardware": device_name(),
            "trainer": f"bbans_vae.batched: one CUDA graph per step, {R} runs stacked ({', '.join(names)})",
            "command": "python " + " ".join(sys.argv), "checkpoint_epochs": save_epochs}
    models = []
    for nm, a in zip(names, all_args):
        (runs / nm).mkdir(parents=True, exist_ok=True)
        write_json_atomic(runs / nm / "run.json", {**asdict(a), **meta})
        (runs / nm / "train_log.jsonl").write_text("")
        torch.manual_seed(a.seed)                        # the initialisation of train.py
        models.append(build_model(cfg))
    steps = [len(sub) // BATCH for sub in subsets]
    assert all(st * BATCH == len(sub) for st, sub in zip(steps, subsets)), "image counts are multiples of the batch"
    enc = Stacked([m.encoder for m in models]).to(device)
    dec = Stacked([m.decoder for m in models]).to(device)
    chunk = max(steps)
    inputs = {"idx": torch.zeros(chunk, R, BATCH, dtype=torch.long, device=device),
              "counter": torch.zeros((), dtype=torch.long, device=device),
              "losses": torch.zeros(chunk, R, device=device)}

    def loss(inp):
        c = inp["counter"].view(1)
        idx = inp["idx"].index_select(0, c)[0]                                     # (R, B) global rows
        xf = x_all[idx]                                                            # (R, B, P)
        out = neg_elbo_bits_stacked(models[0], enc, stacked_pixel_out(dec), xf,
                                    torch.randn(R, BATCH, D, device=device)).mean(-1)   # (R,)
        inp["losses"].index_copy_(0, c, out.detach().view(1, R))
        inp["counter"].add_(1)
        return out

    trainer = LockstepTrainer(list(enc.parameters()) + list(dec.parameters()), loss, inputs, lr=all_args[0].lr)
    log(f"train {names}: steps/epoch {steps}, graph: {trainer.graph is not None} {trainer.graph_error or ''}")
    perms: dict = {}

    def rows(r: int, s0: int, n: int) -> torch.Tensor:
        """Global image rows of run r's batches at outer steps s0 .. s0+n-1: (n, B)."""
        out = []
        for s in range(s0, s0 + n):
            e, pos = s // steps[r] + 1, s % steps[r]
            if (r, e) not in perms:
                gen = torch.Generator().manual_seed(all_args[r].seed * 1_000_003 + e)   # train.py's order
                perms[(r, e)] = torch.from_numpy(subsets[r])[torch.randperm(len(subsets[r]), generator=gen)]
                perms.pop((r, e - 2), None)
            out.append(perms[(r, e)][pos * BATCH:(pos + 1) * BATCH])
        return torch.stack(out)

    t0 = time.time()
    steps_done, total = 0, max(steps) * epochs
    ep_loss = [[] for _ in range(R)]
    while steps_done < total:
        n = min(chunk, total - steps_done)
        idx = torch.zeros(chunk, R, BATCH, dtype=torch.long)
        idx[:n] = torch.stack([rows(r, steps_done, n) for r in range(R)], 1)
        trainer.load({"idx": idx, "counter": torch.zeros((), dtype=torch.long)})
        snaps = []
        for i in range(n):
            trainer.step()
            s = steps_done + i + 1
            for r in range(R):
                if s % steps[r] == 0 and s // steps[r] in save_epochs and s // steps[r] <= epochs:
                    snaps.append((r, s // steps[r], enc.snapshot(r), dec.snapshot(r)))
        losses = inputs["losses"][:n].cpu().numpy()                               # (n, R) bits per image
        for i in range(n):
            s = steps_done + i + 1
            for r in range(R):
                e = (s - 1) // steps[r] + 1
                if e > epochs:
                    continue
                ep_loss[r].append(float(losses[i, r]))
                if s % steps[r] == 0:
                    rec = {"epoch": e, "train_loss_bpd": float(np.mean(ep_loss[r])) / P,
                           "seconds": (time.time() - t0) / max(1, s) * steps[r]}
                    ep_loss[r] = []
                    snap = next((x for x in snaps if x[0] == r and x[1] == e), None)
                    if snap is not None:
                        m = models[r]
                        m.encoder.load_state_dict(enc.state_dict_of(snap[2]))
                        m.decoder.load_state_dict(dec.state_dict_of(snap[3]))
                        m_dev = copy.deepcopy(m).to(device)
                        rec["test_neg_elbo_bpd"] = float(dataset_neg_elbo_bits(m_dev, test_x, device=device).mean() / P)
                        a = all_args[r]
                        save_checkpoint(runs / names[r] / "checkpoints" / f"epoch_{e:04d}", m,
                                        {**meta, "dataset": "mnist-bin", "seed": a.seed,
                                         "train_subset": {"size": len(subsets[r]), "seed": a.seed,
                                                          "full": a.train_size is None},
                                         "batch_size": BATCH, "lr": a.lr, "objective": "elbo", "init": None,
                                         "epoch": e, "metrics": rec, "train_seconds": round(time.time() - t0, 1)})
                        log(f"{names[r]}: epoch {e} train {rec['train_loss_bpd']:.5f} "
                            f"test {rec['test_neg_elbo_bpd']:.5f} ({time.time() - t0:.0f} s)")
                    with open(runs / names[r] / "train_log.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
        steps_done += n
        if time.time() > deadline:
            log(f"train: deadline after {steps_done} of {total} steps")
            break


# ----------------------------------------------------------------------------- refits


def write_refit_state(state_dir: Path, encoder_state: dict, epochs: int, history: list, curve: list,
                      converged: bool, seconds: float, note: str) -> None:
    """A finished refit in the layout of `gaps.refit_encoder` (which then just loads it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(encoder_state, state_dir / G.REFIT_ENCODER)
    rel, rel_se = G.relative_change_last10(curve, epochs, 1)
    write_json_atomic(state_dir / G.REFIT_STATE, {
        "complete": True, "epochs": epochs, "history": history[:epochs],
        "eval_curve": [list(p) for p in curve if p[0] <= epochs], "converged": converged,
        "rel_change_last10": rel, "rel_change_last10_se": rel_se, "seconds": seconds,
        "encoder_sha256": sha256_file(state_dir / G.REFIT_ENCODER), "trained_on": note})


def refit_stacked(models: list, images: np.ndarray, state_dirs: list[Path], tol: float, min_epochs: int,
                  max_epochs: int, deadline: float, seed: int = 0, shared_decoder: bool = False,
                  label: str = "") -> None:
    """Encoder refits of R models at once (each with its own decoder, or one shared frozen model),
    `gaps.refit_encoder`'s loop: shuffling seeded (seed, epoch), until converged or max_epochs."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = models[0]
    P, D, R = base.cfg.n_pixels, base.cfg.latent_dim, len(models)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device).float().view(len(images), P)
    n = len(x_all)
    steps = n // BATCH
    enc = Stacked([copy.deepcopy(m.encoder) for m in models]).to(device)
    if shared_decoder:
        frozen = copy.deepcopy(base).to(device).eval().requires_grad_(False)
        pixel_out = shared_pixel_out(frozen)
    else:
        frozen = base
        dec = Stacked([m.decoder for m in models]).to(device).requires_grad_(False)
        pixel_out = stacked_pixel_out(dec)
    inputs = {"perm": torch.zeros(steps, BATCH, dtype=torch.long, device=device),
              "counter": torch.zeros((), dtype=torch.long, device=device)}

    def loss(inp):
        idx = inp["perm"].index_select(0, inp["counter"].view(1)).view(-1)
        inp["counter"].add_(1)
        xf = x_all.index_select(0, idx).unsqueeze(0).expand(R, BATCH, P)
        return neg_elbo_bits_stacked(frozen, enc, pixel_out, xf, torch.randn(R, BATCH, D, device=device)).mean(-1)

    trainer = LockstepTrainer(list(enc.parameters()), loss, inputs, lr=1e-3)
    log(f"refit {label}: R={R}, {n} images, graph: {trainer.graph is not None} {trainer.graph_error or ''}")
    # the fixed-noise evaluation of gaps.refit_encoder: elbo_bits(refit, images, 1, seed + 7919) on the CPU
    gen = torch.Generator().manual_seed(seed + 7_919)
    eval_eps = torch.cat([torch.randn(min(1000, n - i), D, generator=gen) for i in range(0, n, 1000)]).to(device)

    @torch.no_grad()
    def evaluate() -> np.ndarray:
        tot = torch.zeros(R, device=device)
        for i in range(0, n, 1000):
            xf = x_all[i:i + 1000].unsqueeze(0).expand(R, -1, P)
            eps = eval_eps[i:i + 1000].unsqueeze(0).expand(R, -1, D)
            tot += neg_elbo_bits_stacked(frozen, enc, pixel_out, xf, eps).sum(-1)
        return (tot / n / P).cpu().numpy()

    t0 = time.time()
    hist = [[] for _ in range(R)]
    curves = [[(0, float(v))] for v in evaluate()]
    done = [False] * R
    for epoch in range(1, max_epochs + 1):
        gen_o = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        trainer.load({"perm": torch.randperm(n, generator=gen_o).view(steps, BATCH),
                      "counter": torch.zeros((), dtype=torch.long)})
        for _ in range(steps):
            trainer.step()
        ls = (trainer.loss_sum / steps / P).cpu().numpy()
        trainer.loss_sum.zero_()
        vals = evaluate()
        out_of_time = time.time() > deadline
        for r in range(R):
            if done[r]:
                continue
            hist[r].append(float(ls[r]))
            curves[r].append((epoch, float(vals[r])))
            rel, se = G.relative_change_last10(curves[r], epoch, 1)
            conv = epoch >= min_epochs and G.is_converged(rel, se, tol)
            if conv or epoch == max_epochs or out_of_time:
                write_refit_state(state_dirs[r], enc.export(r), epoch, hist[r], curves[r], bool(conv),
                                  time.time() - t0, f"{device_name()}; {R} encoders stacked"
                                  + ("; stopped at the session's deadline" if out_of_time and not conv
                                     and epoch < max_epochs else ""))
                done[r] = True
                log(f"refit {label}[{r}]: epoch {epoch}, converged {conv}, -ELBO {vals[r]:.5f}")
        if all(done):
            break


def refit_job(runs: Path, names: list[str], deadline: float, tiny: bool, data_dir) -> None:
    """The refits of every checkpoint of the runs `names` (same test images), stacked."""
    cfg = study_cfg(tiny)
    models, dirs, test = [], [], None
    for name in names:
        run_dir = runs / name
        ckpts = G.list_checkpoints(run_dir)
        images = G.run_images(run_dir, read_config(ckpts[0][1]), cfg, data_dir)
        if test is not None and not np.array_equal(test, images.test):
            raise SystemExit("refit: the runs have different test images")
        test = images.test
        sdir = G.store_dir(run_dir, cfg, images.info)
        for e, p in ckpts:
            if not (sdir / f"epoch_{e:04d}.refit" / G.REFIT_STATE).is_file():
                models.append(load_checkpoint(p)[0])
                dirs.append(sdir / f"epoch_{e:04d}.refit")
    if models:
        refit_stacked(models, test, dirs, cfg.refit_tol, cfg.refit_min_epochs, cfg.refit_max_epochs, deadline,
                      cfg.seed, label="+".join(names))


def gaps_job(runs: Path, name: str, epoch: int | None, tiny: bool, data_dir, code: bool = True) -> None:
    """`gaps.run_gaps` of one checkpoint (or, without `code`, the -ELBO part of all of them)."""
    torch.set_num_threads(1)
    cfg = replace(study_cfg(tiny), epochs=None if epoch is None else (epoch,), code=code)
    res = G.run_gaps(runs / name, cfg, data_dir=data_dir)
    r = res["checkpoints"][-1]
    log(f"gaps {name} epoch {r['epoch']}: EGG {r['egg_bpd']:.5f} AIGG {r['aigg_bpd']:.5f} GMGG {r['gmgg_bpd']:.5f}; "
        f"real EGG {r.get('egg_actual_bpd', float('nan')):.5f} AIGG {r.get('aigg_actual_bpd', float('nan')):.5f}")


# ----------------------------------------------------------------------------- Reverse Half-Asleep


def slug(ref: str) -> str:
    return ref.strip("/").replace("/", "_")


def rha_job(runs: Path, ref: str, epochs: int, seeds: list[int], deadline: float, tiny: bool, data_dir) -> None:
    """The fine-tunings of rha_study.py (control / rha-prior / rha-recon x seeds), stacked."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base, config, _ = load_model(ref)
    out = runs / "rha" / slug(ref)
    P, D = base.cfg.n_pixels, base.cfg.latent_dim
    ds = run_dataset(config, data_dir)
    sub = config.get("train_subset") or {}
    train = ds.images("train")
    train = train[train_subset_indices(len(train), None if sub.get("full", True) else int(sub["size"]),
                                       int(sub.get("seed", 0)))]
    test = ds.images("test")
    if tiny:
        train = train[G.random_subset(len(train), 200, 0, G.SALT_TRAIN)]
        test = test[G.random_subset(len(test), 100, 0, G.SALT_TEST)]
    # the AIGG reference first (rha_study.py: out/refit-test), unless it is there; a seed-study
    # checkpoint has one already: the study's refit on the same (full) test set
    study_refit = sorted(Path(ref).parent.parent.glob(f"gaps/*/{Path(ref).name}.refit/{G.REFIT_STATE}"))
    if not (out / "refit-test" / G.REFIT_STATE).is_file() and study_refit and not tiny:
        shutil.copytree(study_refit[0].parent, out / "refit-test")
    if not (out / "refit-test" / G.REFIT_STATE).is_file():
        refit_stacked([base], test, [out / "refit-test"], 1e-4, 100 if not tiny else 2, 1000 if not tiny else 3,
                      deadline, shared_decoder=True, label=f"{ref} reference")
    runs_spec = [(o, s) for o in OBJECTIVES for s in seeds]
    R, S = len(runs_spec), len(seeds)
    frozen = copy.deepcopy(base).to(device).eval().requires_grad_(False)
    pixel_out = shared_pixel_out(frozen)
    enc = Stacked([copy.deepcopy(base.encoder) for _ in runs_spec]).to(device)
    x_all = torch.from_numpy(np.ascontiguousarray(train)).to(device).float().view(len(train), P)
    n = len(x_all)
    steps = n // BATCH
    seed_of = torch.tensor([seeds.index(s) for _, s in runs_spec], device=device)
    weights = torch.zeros(R, 2 * BATCH, device=device)
    for r, (o, _) in enumerate(runs_spec):
        weights[r, :BATCH] = 1.0 / BATCH if o == "control" else 0.5 / BATCH
        weights[r, BATCH:] = 0.0 if o == "control" else 0.5 / BATCH
    rows = {o: [r for r, (oo, _) in enumerate(runs_spec) if oo == o] for o in OBJECTIVES}
    inputs = {"perm": torch.zeros(steps, S, BATCH, dtype=torch.long, device=device),
              "counter": torch.zeros((), dtype=torch.long, device=device)}

    def loss(inp):
        idx = inp["perm"].index_select(0, inp["counter"].view(1))[0]             # (S, B)
        inp["counter"].add_(1)
        xr = x_all[idx[seed_of]]                                                  # (R, B, P)
        with torch.no_grad():
            second = xr.clone()                                                   # control: weight 0
            rp, rr = rows["rha-prior"], rows["rha-recon"]
            z = torch.randn(len(rp) * BATCH, D, device=device)
            second[rp[0]:rp[-1] + 1] = frozen.sample_given(z).view(len(rp), BATCH, P)
            mu, sigma = stacked_posterior(enc, encoder_input(base, xr))
            z = (mu + sigma * torch.randn_like(mu))[rr[0]:rr[-1] + 1]
            second[rr[0]:rr[-1] + 1] = frozen.sample_given(z.reshape(-1, D)).view(len(rr), BATCH, P)
        xf = torch.cat([xr, second], 1)                                           # (R, 2B, P)
        bits = neg_elbo_bits_stacked(frozen, enc, pixel_out, xf, torch.randn(R, 2 * BATCH, D, device=device))
        return (bits * weights).sum(-1)                                           # (R,)

    trainer = LockstepTrainer(list(enc.parameters()), loss, inputs, lr=1e-3)
    log(f"rha {ref}: R={R}, {n} images, graph: {trainer.graph is not None} {trainer.graph_error or ''}")
    t0 = time.time()
    hist = [[] for _ in range(R)]
    done_epochs = 0
    for epoch in range(1, epochs + 1):
        perms = [torch.randperm(n, generator=torch.Generator().manual_seed(s * 1_000_003 + epoch)).view(steps, BATCH)
                 for s in seeds]
        trainer.load({"perm": torch.stack(perms, 1), "counter": torch.zeros((), dtype=torch.long)})
        for _ in range(steps):
            trainer.step()
        ls = (trainer.loss_sum / steps / P).cpu().numpy()
        trainer.loss_sum.zero_()
        for r in range(R):
            hist[r].append(float(ls[r]))
        done_epochs = epoch
        if epoch % 10 == 0 or epoch == 1:
            log(f"rha {ref}: epoch {epoch} losses {np.round(ls, 5).tolist()} ({time.time() - t0:.0f} s)")
        if time.time() > deadline:
            log(f"rha {ref}: deadline at epoch {epoch}")
            break
    for r, (o, s) in enumerate(runs_spec):
        note = f"{device_name()}; {R} encoders stacked" + (
            f"; stopped at the session's deadline after {done_epochs} of {epochs} epochs" if done_epochs < epochs else "")
        write_refit_state(out / f"{o}-seed{s}", enc.export(r), done_epochs, hist[r], [(done_epochs, hist[r][-1])],
                          None, time.time() - t0, note)


# ----------------------------------------------------------------------------- the whole study


class Pool:
    """Subprocesses with a limit on how many run at once; each logs to its own file."""

    def __init__(self, logs: Path, limit: int):
        self.logs, self.limit, self.running, self.queue, self.finished = logs, limit, {}, [], {}
        logs.mkdir(parents=True, exist_ok=True)

    def submit(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.queue.append((name, argv, env))

    def start(self, name: str, argv: list[str], env: dict | None = None) -> None:
        f = open(self.logs / f"{name}.log", "w")
        self.running[name] = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        log(f"start {name}")

    def poll(self) -> None:
        for name, p in list(self.running.items()):
            if p.poll() is not None:
                self.finished[name] = p.returncode
                del self.running[name]
                log(f"done {name}: rc {p.returncode}")
        while self.queue and sum(1 for k in self.running if k.startswith("cpu:")) < self.limit:
            name, argv, env = self.queue.pop(0)
            self.start(name, argv, env)

    def kill_all(self) -> None:
        for name, p in self.running.items():
            p.kill()
            log(f"killed {name} at the deadline")


def run_all(args) -> None:
    """GPU chain 1: train (3 runs stacked) -> refit (36 encoders stacked) -> RHA of the epoch-1000
    model; chain 2: RHA of the mlp models; chain 3 and 4: RHA of the context models (at once with
    MPS, else after the training, since GPU time-slicing would starve chain 1); the CPU pool codes
    and measures each piece as soon as its inputs exist."""
    t_start = time.time()
    deadline = t_start + args.deadline_s
    runs = Path(args.runs)
    py = [sys.executable, str(Path(__file__).resolve())]
    common = ["--runs", str(runs), "--deadline", str(deadline - 25)] + (["--tiny"] if args.tiny else []) + (
        ["--data-dir", args.data_dir] if args.data_dir else [])
    env1 = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pool = Pool(runs / "logs", args.cpu_jobs)
    epochs = 3 if args.tiny else 1000
    save = ",".join(map(str, [1, 2, 3] if args.tiny else SAVE_EPOCHS))
    last = int(save.split(",")[-1])
    names = list(RUNS)
    last_ckpt = str(runs / "seed-full" / "checkpoints" / f"epoch_{last:04d}")
    mps = os.environ.get("GPU_STUDY_MPS") == "1"
    log(f"MPS: {mps}; deadline in {args.deadline_s:.0f} s")
    # chains of GPU jobs: (key, argv) started one after the other
    chains = {"seed": [("gpu:train", py + ["train", *names, "--epochs", str(epochs), "--save", save] + common),
                       ("gpu:refit", py + ["refit", *names] + common),
                       (f"gpu:rha-{slug(last_ckpt)}", py + ["rha", last_ckpt] + common)],
              "rha-mlp": [(f"gpu:rha-{slug(m)}", py + ["rha", m] + common) for m in ("mnist-bin-paper", "mnist-bin")],
              "rha-ctx1": [("gpu:rha-mnist-bin-ctx", py + ["rha", "mnist-bin-ctx"] + common)],
              "rha-ctx2": [("gpu:rha-mnist-ctx", py + ["rha", "mnist-ctx"] + common)]}
    rha_refs = {f"gpu:rha-{slug(m)}": m for m in ("mnist-bin-paper", "mnist-bin", "mnist-bin-ctx", "mnist-ctx",
                                                   last_ckpt)}
    if args.only:
        chains = {k: v for k, v in chains.items() if k in args.only.split(",")}
    if all((runs / nm / "checkpoints" / f"epoch_{last:04d}").is_dir() for nm in names) and "seed" in chains:
        chains["seed"].pop(0)              # trained in an earlier call (a warm machine keeps runs/)
        pool.finished["gpu:train"] = 0
    measured: set = set()
    while time.time() < deadline:
        pool.poll()
        fin = pool.finished
        for cname, chain in chains.items():
            if cname.startswith("rha-ctx") and not mps and "gpu:train" not in fin:
                continue
            while chain and (chain[0][0] in fin or chain[0][0] not in pool.running):
                key, argv = chain[0]
                if key in fin:
                    chain.pop(0)
                    continue
                if key == f"gpu:rha-{slug(last_ckpt)}" and not Path(last_ckpt).is_dir():
                    chain.pop(0)
                    continue
                pool.start(key, argv, env1)
                break
        if "gpu:refit" in fin and "gaps" not in measured:
            measured.add("gaps")
            for e in save.split(","):     # the full-data run first, in real bits
                pool.submit(f"cpu:gaps-{names[0]}-{e}", py + ["gaps", names[0], e] + common, env1)
            for name in names[1:]:        # the small runs: -ELBO gaps of every checkpoint, then real bits
                pool.submit(f"cpu:gaps-elbo-{name}", py + ["gaps-elbo", name] + common, env1)
            for name in names[1:]:
                for e in save.split(","):
                    pool.submit(f"cpu:gaps-{name}-{e}", py + ["gaps", name, e] + common, env1)
        for key, m in rha_refs.items():
            # the -ELBO rows first (GPU), then one coding process per K (K > 0 only for MLP models:
            # refinement of a context model runs at ~35 images/s on one core)
            meas = [sys.executable, str(ROOT / "benchmarks" / "rha_study.py"), "--models", m,
                    "--out", str(runs / "rha"), "--device", "cuda" if torch.cuda.is_available() else "cpu",
                    "--code-images", "100" if args.tiny else "1000", "--code-seeds", "0"] + (
                    ["--tiny"] if args.tiny else []) + (["--data-dir", args.data_dir] if args.data_dir else [])
            if key in fin and key not in measured:
                measured.add(key)
                pool.submit(f"cpu:rha-elbo-{slug(m)}", meas + ["--results", f"results-{slug(m)}.json", "--refine"],
                            env1)
            if f"cpu:rha-elbo-{slug(m)}" in fin and f"code-{key}" not in measured:
                measured.add(f"code-{key}")
                for k in ([0] if "ctx" in m else [0, 2, 10]):
                    pool.submit(f"cpu:rha-code-{slug(m)}-K{k}",
                                meas + ["--results", f"results-{slug(m)}-K{k}.json", "--refine", str(k)], env1)
        pool.limit = max(1, args.cpu_jobs - sum(1 for k in pool.running if k.startswith("gpu:")))
        if not pool.running and not pool.queue and not any(chains.values()):
            break
        time.sleep(1.0)
    pool.kill_all()
    write_json_atomic(runs / "gpu_study_status.json", {"finished": pool.finished, "killed": list(pool.running),
                                                       "not_started": [q[0] for q in pool.queue] + [
                                                           k for c in chains.values() for k, _ in c
                                                           if k not in pool.finished and k not in pool.running],
                                                       "seconds": time.time() - t_start, "device": device_name(),
                                                       "mps": mps, "python": platform.python_version()})
    pack(runs, Path(args.out), last)


def pack(runs: Path, out: Path, last_epoch: int) -> None:
    """Everything but weights into one archive; the epoch-1000 model and its refit encoder apart."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for p in sorted(runs.rglob("*")):
            if p.is_file() and p.suffix != ".safetensors":
                tar.add(p, arcname=str(p.relative_to(runs.parent)))
    for epoch in sorted({100, last_epoch}):
        ckpt = runs / "seed-full" / "checkpoints" / f"epoch_{epoch:04d}"
        if ckpt.is_dir():
            with tarfile.open(out / f"seed_full_epoch_{epoch}.tar", "w") as tar:
                tar.add(ckpt, arcname=str(ckpt.relative_to(runs.parent)))
                for st in runs.glob(f"seed-full/gaps/*/epoch_{epoch:04d}.refit"):
                    tar.add(st, arcname=str(st.relative_to(runs.parent)))
    enc = [p for m in ("mnist-bin-ctx", "mnist-ctx") for v in ("rha-prior", "rha-recon")
           for p in (runs / "rha" / m / f"{v}-seed0").glob("*")]
    if enc:        # the fine-tuned encoders a default model would be re-bundled with
        with tarfile.open(out / "rha_ctx_encoders.tar", "w") as tar:
            for p in enc:
                tar.add(p, arcname=str(p.relative_to(runs.parent)))
    log(f"packed into {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job", choices=["all", "train", "refit", "gaps", "gaps-elbo", "rha"])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="runs/gpu-out")
    ap.add_argument("--deadline", type=float, default=None, help="unix time to stop by (jobs)")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="seconds from now to stop by (all)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--save", default=",".join(map(str, SAVE_EPOCHS)))
    ap.add_argument("--cpu-jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="processes at a time, GPU jobs included (each GPU job keeps a core busy launching)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--only", default=None,
                    help="all: only these GPU chains, comma-separated: seed, rha-mlp, rha-ctx1, rha-ctx2")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    runs = Path(args.runs)
    deadline = args.deadline or (time.time() + args.deadline_s)
    if args.job == "all":
        run_all(args)
    elif args.job == "train":
        train_job(runs, args.names, args.epochs, [int(e) for e in args.save.split(",")], deadline, args.tiny,
                  args.data_dir)
    elif args.job == "refit":
        refit_job(runs, args.names, deadline, args.tiny, args.data_dir)
    elif args.job == "gaps":
        gaps_job(runs, args.names[0], int(args.names[1]), args.tiny, args.data_dir)
    elif args.job == "gaps-elbo":
        gaps_job(runs, args.names[0], None, args.tiny, args.data_dir, code=False)
    elif args.job == "rha":
        rha_job(runs, args.names[0], 3 if args.tiny else 100, [0, 1, 2], deadline, args.tiny, args.data_dir)


if __name__ == "__main__":
    main()
