"""Reverse Half-Asleep as its authors ran it (issue 14, item 4), against the control, in real bits.

For each model: the encoder is fine-tuned with the decoder (and any context network) frozen, for
`--epochs` epochs over the model's training images, Adam lr 1e-3, in three variants:
    rha-prior   every batch = B real images + B images dreamed from the prior (z ~ N(0, I), x ~ p(x|z))
    rha-recon   every batch = B real images + B reconstructions of them (z ~ q(z|x), x ~ p(x|z))
    control     every batch = B real images only (encoder-only fine-tuning on the ELBO), same epochs
so every epoch sees every real image once (Zhang, Hayes & Barber, NeurIPS 2022, "Generalization Gaps
in Amortized Inference": batches of 100 real + 100 dreamed images, ~100 epochs). Each variant is run
with `--seeds` seeds (shuffling, noise and dreams differ).

Measured per (model, variant, seed), on the test images (all, or a seeded random subset):
    test -ELBO (10 seeded samples, the same noise for every encoder) and its gain over the baseline
    encoder (paired per-image standard error);
    AIGG = test -ELBO - the -ELBO of an encoder refit on the test images (decoder frozen, until
    converged; one reference per model, `gaps.refit_encoder`), and the share of the baseline's
    AIGG it removes;
    real bpd of the test images as one bitstream with K transmit-free refinement steps, K in
    `--refine` (K = 0 on the model's default coder path, exact for MLP models; K > 0 on float32, as
    refinement needs it), every stream decoded and verified.
Summary rows give the mean over seeds ± the standard error over seeds (and the mean paired
per-image SE). Every finished piece is stored under --out as it is done (fine-tuned encoders as
safetensors with their Adam state while they run), so re-running the same command resumes. Processes for
different seeds may share one --out (one per core): the AIGG reference is refit once, under a lock.

    python benchmarks/rha_study.py --models mnist-bin-paper runs/seed-full/checkpoints/epoch_1000 \
        mnist-bin mnist-bin-ctx mnist-ctx
    python benchmarks/rha_study.py --tiny      # a seconds-long smoke test of the whole pipeline

Cost on one CPU core: ~2x a training epoch per RHA epoch (twice the batch), so 100 epochs of a
60k-image model are ~1 h per (variant, seed); run it on a GPU or in the background.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.checkpoint import load_model, write_json_atomic  # noqa: E402
from bbans_vae.data import load_dataset  # noqa: E402
from bbans_vae.objectives import neg_elbo_bits  # noqa: E402
from bbans_vae.train import train_subset_indices  # noqa: E402

VARIANTS = ("rha-prior", "rha-recon", "control")


def rha_loss(mode: str):
    """-ELBO bits of [B real ; B dreamed] (mode prior/recon), or of the B real images (control)."""

    def loss(model, x, gen):
        if mode == "control":
            return neg_elbo_bits(model, x, gen=gen).mean()
        with torch.no_grad():
            if mode == "rha-prior":
                z = torch.randn(x.shape[0], model.cfg.latent_dim, generator=gen)
            else:
                mu, sigma = model.posterior(x)
                z = mu + sigma * torch.randn(mu.shape, generator=gen)
            dreamed = model.sample_given(z, gen).view(-1, *model.cfg.image_shape)
        batch = torch.cat([x.float(), dreamed.float()], 0)
        return neg_elbo_bits(model, batch, gen=gen).mean()

    return loss


def training_images(config: dict, data_dir) -> np.ndarray:
    images = load_dataset(config["dataset"], "train", data_dir)
    sub = config.get("train_subset") or {}
    size = None if sub.get("full", True) else int(sub["size"])
    return images[train_subset_indices(len(images), size, int(sub.get("seed", 0)))]


def slug(ref: str) -> str:
    return ref.strip("/").replace("/", "_")


def per_image(out: Path, name: str, compute) -> np.ndarray:
    """Cached per-image array (npy) under out."""
    p = out / f"{name}.npy"
    if p.is_file():
        return np.load(p)
    a = np.asarray(compute(), dtype=np.float64)
    out.mkdir(parents=True, exist_ok=True)
    np.save(p, a)
    return a


def coded_row(model, images: np.ndarray, k: int, chains: int, out: Path, name: str) -> dict:
    """A real file of `images` with K refinement steps (K = 0: the model's default coder path),
    decoded and verified; cached under out (the per-image code lengths as .npy)."""
    p = out / f"{name}.json"
    if p.is_file():
        return json.loads(p.read_text())
    c = G.coded_bits(model, images, chains, 8, None if k == 0 else "float32", refine_steps=k, name=name)
    dims = images.shape[0] * model.cfg.n_pixels
    row = {"refine_steps": k, "coder_path": c["coder_path"], "actual_bpd": c["actual_bits"] / dims,
           "actual_se_bpd": G.stderr(c["ideal_per_image"]) / model.cfg.n_pixels,
           "initial_bpd": c["initial_bits"] / dims, "container_bpd": c["container_bits"] / dims,
           "verified": c["verified"], "encode_seconds": c["encode_seconds"], "decode_seconds": c["decode_seconds"]}
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{name}.ideal.npy", c["ideal_per_image"])
    write_json_atomic(p, row)
    return row


def study_model(ref: str, args, out_root: Path) -> list[dict]:
    base, config, _ = load_model(ref)
    dims = base.cfg.n_pixels
    out = out_root / slug(ref)
    test = load_dataset(config["dataset"], "test", args.data_dir)
    test = test[G.random_subset(len(test), args.test_images, 0, G.SALT_TEST)]
    train_x = training_images(config, args.data_dir)
    if args.train_images:
        train_x = train_x[G.random_subset(len(train_x), args.train_images, 0, G.SALT_TRAIN)]
    print(f"{ref}: {len(train_x)} training images, {len(test)} test images", flush=True)
    dev = args.device

    def elbo(model):
        return G.elbo_bits(G.on_device(model, dev), test, args.samples, device=dev)

    code_pick = G.random_subset(len(test), args.code_images, 0, G.SALT_SPLIT)
    train_elbo_pick = G.random_subset(len(train_x), args.train_elbo_images, 0, G.SALT_TRAIN) \
        if args.train_elbo_images else None
    rows = []
    encoders = [("baseline", None, base)]
    for seed in args.seeds:  # seed-major, so one seed of every variant is done first
        for variant in args.variants:
            fit = G.refit_encoder(base, train_x, args.epochs, seed=seed, state_dir=out / f"{variant}-seed{seed}",
                                  loss=rha_loss(variant), eval_every=max(1, args.epochs))
            encoders.append((variant, seed, fit.model))
    # the AIGG reference: an encoder refit on the test images, until converged (after the fine-tunes,
    # so that a finished refit of the same protocol, e.g. the seed study's, can be placed in
    # out/refit-test meanwhile and is then just loaded)
    # (its per-image -ELBO and length are kept, so a later invocation, e.g. for more seeds with the
    # earlier ones' files restored from benchmarks/results, does not refit again)
    # Processes for different seeds may share --out: the first to get here refits, the others wait
    # for it (an exclusive lock on out/refit-reference.lock) and then load its result.
    ref_info = out / "refit_reference.json"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "refit-reference.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{ref}: waiting for another process's refit reference ({out / 'refit-test'})", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (ref_info.is_file() and (out / "refit_test_elbo.npy").is_file()):
            ref_fit = G.refit_encoder(base, test, until_converged=True, tol=args.refit_tol,
                                      max_epochs=args.refit_max_epochs, state_dir=out / "refit-test")
            per_image(out, "refit_test_elbo", lambda: elbo(ref_fit.model))
            write_json_atomic(ref_info, {"epochs": ref_fit.epochs, "converged": ref_fit.converged})
    ref_meta = json.loads(ref_info.read_text())
    refit_elbo = np.load(out / "refit_test_elbo.npy")
    base_elbo = per_image(out, "baseline_test_elbo", lambda: elbo(base))
    aigg_base = float((base_elbo - refit_elbo).mean() / dims)
    for variant, seed, model in encoders:
        name = variant if seed is None else f"{variant}-seed{seed}"
        mine_elbo = per_image(out, f"{name}_test_elbo", lambda: elbo(model))
        gain, gain_se = G.paired_gap(base_elbo, mine_elbo)
        aigg = float((mine_elbo - refit_elbo).mean() / dims)
        state = out / f"{variant}-seed{seed}" / G.REFIT_STATE
        epochs_run = json.loads(state.read_text())["epochs"] if seed is not None and state.is_file() else 0
        row = {"model": ref, "variant": variant, "seed": seed, "epochs": epochs_run,
               "n_test_images": len(test), "test_elbo_bpd": float(mine_elbo.mean() / dims),
               "test_elbo_se_bpd": G.stderr(mine_elbo) / dims, "gain_bpd": gain / dims,
               "gain_se_bpd": gain_se / dims, "aigg_bpd": aigg, "aigg_se_bpd": G.stderr(mine_elbo - refit_elbo) / dims,
               "aigg_removed_share": (aigg_base - aigg) / aigg_base if aigg_base else None,
               "aigg_removed_share_se": (G.stderr(base_elbo - mine_elbo) / dims / aigg_base) if aigg_base else None,
               "refit_reference_epochs": ref_meta["epochs"], "refit_reference_converged": ref_meta["converged"],
               "n_code_images": len(code_pick)}
        if train_elbo_pick is not None:
            tr = per_image(out, f"{name}_train_elbo",
                           lambda: G.elbo_bits(G.on_device(model, dev), train_x[train_elbo_pick], args.samples,
                                               device=dev))
            row["train_elbo_bpd"] = float(tr.mean() / dims)
            row["train_elbo_se_bpd"] = G.stderr(tr) / dims
        for k in (args.refine if seed is None or seed in args.code_seeds else []):
            c = coded_row(model, test[code_pick], k, args.chains, out / "coded", f"{name}-K{k}")
            row[f"actual_k{k}_bpd"] = c["actual_bpd"]
            row[f"actual_k{k}_se_bpd"] = c["actual_se_bpd"]
            row[f"verified_k{k}"] = c["verified"]
            # real-bit gain over the baseline encoder at the same K, SE from the per-image code lengths
            base_k = np.load(out / "coded" / f"baseline-K{k}.ideal.npy")
            mine = np.load(out / "coded" / f"{name}-K{k}.ideal.npy")
            base_row = json.loads((out / "coded" / f"baseline-K{k}.json").read_text())
            row[f"actual_k{k}_gain_bpd"] = base_row["actual_bpd"] - c["actual_bpd"]
            row[f"actual_k{k}_gain_se_bpd"] = G.paired_gap(base_k, mine)[1] / dims
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict], refine: list[int]) -> list[dict]:
    """Mean over seeds ± SE over seeds, per (model, variant)."""
    out = []
    keys = ["test_elbo_bpd", "train_elbo_bpd", "gain_bpd", "aigg_bpd", "aigg_removed_share"] + [
        f"actual_k{k}{x}_bpd" for k in refine for x in ("", "_gain")]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["variant"]), []).append(r)
    for (model, variant), rs in groups.items():
        s = {"model": model, "variant": variant, "n_seeds": len([r for r in rs if r["seed"] is not None])}
        for k in keys:
            v = np.array([r[k] for r in rs if r.get(k) is not None], dtype=np.float64)
            s[k] = float(v.mean()) if len(v) else None
            s[f"{k}_seed_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
        s["gain_image_se_bpd"] = float(np.mean([r["gain_se_bpd"] for r in rs]))
        out.append(s)
    return out


# settings that must agree for rows of two invocations to be averaged together
SAME = ("epochs", "test_images", "train_images", "code_images", "train_elbo_images", "refit_tol",
        "refit_max_epochs", "samples", "chains", "refine", "variants")


def earlier_rows(paths: list[Path], args) -> list[dict]:
    rows = []
    for p in paths:
        res = json.loads(p.read_text())
        differ = [k for k in SAME if res["settings"].get(k) != getattr(args, k)]
        if differ:
            sys.exit(f"{p}: settings {differ} differ from this invocation's; its rows cannot join the summary")
        rows += res["rows"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mnist-bin-paper", "mnist-bin", "mnist-bin-ctx", "mnist-ctx"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="fine-tuning seeds (default 0 1 2)")
    ap.add_argument("--with-rows", nargs="*", type=Path, default=[],
                    help="results.json files of earlier invocations (other seeds, same settings): their rows join "
                         "this run's in the rows and the summary")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--refine", nargs="*", type=int, default=[0, 2, 10])
    ap.add_argument("--code-images", type=int, default=1000,
                    help="real bits on a seeded random subset of this many of the test images")
    ap.add_argument("--code-seeds", nargs="*", type=int, default=None,
                    help="fine-tuning seeds whose encoders are coded (default: all; the baseline always)")
    ap.add_argument("--train-elbo-images", type=int, default=10000,
                    help="also the -ELBO of a seeded random subset of the training images (0: skip)")
    ap.add_argument("--device", default="cpu", help="where the -ELBO passes run (cpu or cuda); coding is on the CPU")
    ap.add_argument("--results", default="results.json", help="file name of the results under --out")
    ap.add_argument("--test-images", type=int, default=None, help="seeded random subset (default: all)")
    ap.add_argument("--train-images", type=int, default=None, help="seeded random subset of the training images")
    ap.add_argument("--refit-tol", type=float, default=1e-4)
    ap.add_argument("--refit-max-epochs", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--chains", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="runs/rha-study")
    ap.add_argument("--tiny", action="store_true", help="smoke test: 200 train / 100 test images, 2 epochs, 1 seed")
    args = ap.parse_args()
    if args.tiny:
        args.test_images, args.train_images, args.epochs, args.seeds = 100, 200, 2, args.seeds or [0]
        args.refine, args.refit_max_epochs, args.samples, args.chains = [0, 2], 5, 2, 2
        args.train_elbo_images = 100
    args.seeds = args.seeds or [0, 1, 2]
    earlier = earlier_rows(args.with_rows, args)
    if args.code_seeds is None:
        args.code_seeds = list(args.seeds)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.time()
    rows = []
    for ref in args.models:
        rows += study_model(ref, args, out)
        mine = {(r["model"], r["variant"], r["seed"]) for r in rows}
        joined = rows + [r for r in earlier if (r["model"], r["variant"], r["seed"]) not in mine]
        settings = {**vars(args), "with_rows": [str(p) for p in args.with_rows]}
        result = {"command": "python " + " ".join(sys.argv), "settings": settings, "rows": joined,
                  "summary": summarise(joined, args.refine), "seconds": time.time() - t0,
                  "machine": {"torch": torch.__version__, "platform": platform.platform(),
                              "torch_threads": torch.get_num_threads()}}
        write_json_atomic(out / args.results, result)
    print(f"wrote {out}/{args.results} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
