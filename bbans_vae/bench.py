"""`vaecompress bench`: BB-ANS against classical lossless codecs on the same images.

`run_bench` measures, for each dataset (its test split, or a seeded random `limit` of its images,
kept in dataset order; MNIST's test set is not in random order, so never "the first N"):

* classical codecs (`baselines.measure`, every protocol: ``stream``, ``per_image``, ``mosaic``;
  binary data also as bit-packed bytes and 1-bit images);
* BB-ANS with every compatible model (same pixel kind and image shape) in three protocols:
  ``all`` (one .vae file holding every image, default chains), ``chunks100`` (one file per 100
  consecutive images, 1 chain each, sizes summed) and ``single`` (one file per image, on a
  seeded random `single_images` of the images), which shows the one-time chain-start cost (`initial_bits`);
  each row is decoded in full and compared pixel for pixel, and timed against the bare network
  forward passes over the same images in the same batches (one batch per coding round, one
  thread, as coding runs);
* a speed sweep (chains 1, 4, 16, 64 on the full set) with the main binary model;
* a rate-vs-number-of-images curve (one file holding n images: the first n of one seeded random
  order, so the sets are nested) for each model.

Every subset comes from `numpy.random.default_rng(SUBSET_SEED)` (recorded in the settings).

The result is a JSON-able dict; `vaecompress_cli.render` turns it into the headline table,
results.json, README.md and plots. Nothing here prints; progress is reported through a callback
``progress(done_steps, total_steps, text)``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import baselines
from .checkpoint import bundled_models, load_model
from .ans.chains import DEFAULT_LATENT_BITS, ChainLayout, chain_groups, single_thread
from .ans.workers import run_jobs
from .pipeline import compress, decompress, default_chains
from .data import open_dataset
from .errors import VaeCompressError
from .evaluate import fits
from .models import VAE, count_parameters, sized_model
from .objectives import dataset_neg_elbo_bits

__all__ = ["DATASETS", "QUICK", "PROTOCOLS", "BenchSettings", "run_bench", "headline"]

FORMAT = "vaecompress-bench/1"
DATASETS = ("mnist-bin", "mnist-bin-stoch", "binarized-mnist", "mnist", "fashion-mnist")
CHAINS_SWEEP = (1, 4, 16, 64)
CURVE_SIZES = (1, 10, 100, 1000, 10000)
CHUNK_IMAGES = 100
SINGLE_IMAGES = 200
SPLIT = "test"

PROTOCOLS = {
    "stream": "classical stream codec on the whole set as one byte stream (images concatenated "
              "row-major; binary sets as bit-packed bytes, 8 pixels per byte, and as raw 0/1 bytes: "
              "see `input`)",
    "per_image": "classical codec on each image on its own (no shared state), sizes summed",
    "mosaic": "classical image codec on one near-square mosaic of all images (padding tiles "
              "are all zero, their cost is charged)",
    "all": "BB-ANS: every image in one .vae file (container header included), default chains "
           "(1 per 1,000 images, at most 32)",
    "chunks100": f"BB-ANS: one .vae file per {CHUNK_IMAGES} consecutive images, 1 chain each, "
                 "container sizes summed",
    "single": "BB-ANS: one .vae file per image (1 chain; an image alone in a chain cannot get bits "
              "back, so it pays its full latent cost as initial_bits), on a seeded random {single} of the images",
}
BBANS_PROTOCOLS = ("all", "chunks100", "single")
SUBSET_SEED = 0          # seeds every random subset and order (`--limit`, `single`, the rate curve)


def refine_protocol(steps: int) -> str:
    """Name of the `all` protocol with `steps` steps of transmit-free posterior refinement."""
    return f"all+refine{steps}"


def refine_protocol_text(steps: int) -> str:
    return (f"BB-ANS `all` with {steps} Adam steps of transmit-free posterior refinement per image before "
            "its latent is coded (ans/refine.py; the decoder repeats them; float32 coder path, so the file "
            "decodes on the encoding machine configuration only)")


@dataclass(frozen=True)
class BenchSettings:
    """What `vaecompress bench` runs unless told otherwise (`jxl_effort` None: the library's maximum)."""
    datasets: tuple = DATASETS
    limit: int | None = None
    jxl_effort: int | None = None
    chains_list: tuple = CHAINS_SWEEP
    single_images: int = SINGLE_IMAGES


QUICK = BenchSettings(datasets=("mnist-bin", "mnist"), limit=200, jxl_effort=7, chains_list=(1, 4, 16), single_images=50)


Progress = Callable[[int, int, str], None]


# ----------------------------------------------------------------------------- environment


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for pkg in ("constriction", "imagecodecs", "vaecompress", "Pillow", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpus_usable": affinity, "cpu_model": cpu_model,
            "platform": platform.platform(), "machine": platform.machine(),
            "torch_threads_default": torch.get_num_threads(), "coding_threads": 1}


# ----------------------------------------------------------------------------- models


@dataclass
class _Model:
    name: str
    model: VAE
    config: dict
    path: Path

    @property
    def sha(self) -> str:
        return self.config["weights_sha256"]

    def info(self) -> dict:
        c = self.model.cfg
        return {"name": self.name, "path": str(self.path), "dataset": self.config.get("dataset"),
                "preset": self.config.get("preset"), "epoch": self.config.get("epoch"),
                "pixel_kind": c.pixel_kind, "image_shape": list(c.array_shape), "hidden": list(c.hidden),
                "latent_dim": c.latent_dim, "likelihood": c.likelihood,
                "parameters": count_parameters(self.model), "weights_sha256": self.sha,
                "test_neg_elbo_bpd": (self.config.get("metrics") or {}).get("test_neg_elbo_bpd")}

    def fits(self, spec) -> bool:
        return fits(self.model.cfg, spec)


def _load_models(refs: Sequence[str] | None) -> list[_Model]:
    refs = list(bundled_models()) if refs is None else list(refs)
    out = []
    for ref in dict.fromkeys(refs):
        model, config, path = load_model(str(ref))
        out.append(_Model(str(ref), model, config, Path(path)))
    return out


# ----------------------------------------------------------------------------- measuring BB-ANS


def forward_seconds(model: VAE, images: np.ndarray, n_chains: int, file_images: int | None = None) -> float:
    """Time of the bare encoder + decoder forward passes coding would make over `images`.

    Same batches as coding: files of `file_images` images (default: one file), each split into
    rounds of one image per chain; per round one encoder pass on the round's images and one
    decoder pass on latents of the same batch size; one thread.
    """
    n = len(images)
    file_images = n if file_images is None else file_images
    model = sized_model(model, images.shape[1:])
    model.eval()
    total = 0.0
    with single_thread(), torch.inference_mode():
        for start in range(0, n, file_images):
            chunk = images[start:start + file_images]
            layout = ChainLayout(len(chunk), max(1, min(n_chains, len(chunk))))
            t0 = time.perf_counter()
            for t in range(layout.n_rounds):
                x = torch.from_numpy(np.ascontiguousarray(chunk[layout.round_images(t)]))
                mu, _ = model.posterior(x)
                model.pixel_out(mu, model.flat_pixels(x))   # context models: all phases
            total += time.perf_counter() - t0
    return total


FILE_TOTALS = ("actual_bits", "payload_bits", "container_bits", "initial_bits", "ideal_bits", "plain_images")


def _code_file(m: _Model, chunk: np.ndarray, n_chains: int | None, latent_bits: int, refine_steps: int,
               workers: int) -> dict:
    """Encode one file, decode it, verify: its sizes, chains, coder path, seconds and error."""
    t0 = time.perf_counter()
    data, rep = compress(m.model, m.name, m.sha, chunk, names_stem="bench", n_chains=n_chains,
                         latent_bits=latent_bits, with_neg_elbo=False, refine_steps=refine_steps, workers=workers)
    out = {k: rep[k] for k in FILE_TOTALS + ("chains", "coder_path")}
    out["encode_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["error"] = None
    try:
        decoded, _, _ = decompress(data, m.model, m.sha, workers=workers)
        if not np.array_equal(decoded, chunk):
            out["error"] = "decoded pixels differ"
    except VaeCompressError as e:
        out["error"] = str(e)
    out["decode_seconds"] = time.perf_counter() - t0
    return out


def _code_file_group(m: _Model, images: np.ndarray, starts: Sequence[int], file_images: int, n_chains: int | None,
                     latent_bits: int, refine_steps: int, progress) -> list[dict]:
    out = []
    for start in starts:
        out.append(_code_file(m, np.ascontiguousarray(images[start:start + file_images]), n_chains, latent_bits,
                              refine_steps, 1))
        progress(1)
    return out


def _code_files(m: _Model, images: np.ndarray, nelbo_bits: np.ndarray, protocol: str, file_images: int,
                n_chains: int | None, latent_bits: int, with_forward: bool = True, refine_steps: int = 0,
                workers: int = 1) -> dict:
    """Encode `images` as files of `file_images` images, decode each, verify; one result row.

    `workers`: one file is coded with that many worker processes (groups of chains); several
    files are shared out among that many processes, one file at a time each. The sizes are the
    same for any number; the seconds are each file's own coding time, summed over the files."""
    n, dims = len(images), images[0].size * len(images)
    starts = list(range(0, n, file_images))
    if workers > 1 and len(starts) > 1:
        groups = chain_groups(len(starts), workers)
        per_file = [r for part in run_jobs([functools.partial(_code_file_group, m, images, starts[a:b], file_images,
                                                              n_chains, latent_bits, refine_steps)
                                            for a, b in groups]) for r in part]
    else:
        per_file = [_code_file(m, np.ascontiguousarray(images[s:s + file_images]), n_chains, latent_bits, refine_steps,
                               workers) for s in starts]
    totals = {k: sum(f[k] for f in per_file) for k in FILE_TOTALS}
    enc_s = sum(f["encode_seconds"] for f in per_file)
    dec_s = sum(f["decode_seconds"] for f in per_file)
    errors = [f"file {i + 1}: {f['error']}" for i, f in enumerate(per_file) if f["error"] is not None]
    verified, error, files = not errors, (errors[0] if errors else None), len(per_file)
    chains_used = {f["chains"] for f in per_file}
    rep = per_file[-1]
    chains = min(chains_used) if len(chains_used) == 1 else sorted(chains_used)
    row = {"codec": f"vaecompress {m.name}", "ours": True, "model": m.name, "protocol": protocol,
           "input": "bbans", "n_images": n, "files": files, "chains": chains,
           "total_bytes": totals["actual_bits"] // 8, "bpd": totals["actual_bits"] / dims,
           "lossless_verified": verified, "error": error, "latent_bits": latent_bits,
           "refine_steps": refine_steps, "coder_path": rep["coder_path"]}
    for k, v in totals.items():
        row[k] = v
        if k.endswith("_bits"):
            row[k.replace("_bits", "_bpd")] = v / dims
    nelbo = float(np.sum(nelbo_bits[:n]))
    row.update(neg_elbo_bits=nelbo, neg_elbo_bpd=nelbo / dims,
               encode_seconds=enc_s, decode_seconds=dec_s,
               encode_images_per_second=n / enc_s if enc_s > 0 else None,
               decode_images_per_second=n / dec_s if dec_s > 0 else None)
    if with_forward:
        c = n_chains if n_chains is not None else default_chains(min(n, file_images))
        fwd = forward_seconds(m.model, images, c, file_images)
        row.update(forward_seconds=fwd, forward_images_per_second=n / fwd if fwd > 0 else None,
                   encode_over_forward=enc_s / fwd if fwd > 0 else None,
                   decode_over_forward=dec_s / fwd if fwd > 0 else None)
    return row


# ----------------------------------------------------------------------------- the run


@dataclass
class _Plan:
    """The bench as a list of steps (one closure each, so progress knows the total) and what
    the steps fill in: images and -ELBOs per dataset, result rows, sweep and curves."""

    specs: dict
    limit: int | None
    codecs: list | None
    jxl_effort: int
    single_images: int
    curve_sizes: Sequence[int]
    latent_bits: int
    data_dir: str | None
    refine_steps: list[int]
    workers: int = 1
    steps: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    order: dict = field(default_factory=dict)       # dataset -> seeded random permutation of its images
    nelbo: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)

    def add(self, text: str, fn: Callable[[], None]) -> None:
        self.steps.append((text, fn))

    def run(self, progress: Progress | None) -> None:
        for i, (text, fn) in enumerate(self.steps):
            if progress:
                progress(i, len(self.steps), text)
            fn()
        if progress:
            progress(len(self.steps), len(self.steps), "done")

    # -- steps
    def load(self, d: str, fits: list[_Model]) -> None:
        spec = self.specs[d]
        split = spec.eval_split                      # built-in datasets: "test"; a path: all its images
        x = spec.images(split)
        total = len(x)
        if self.limit and self.limit < total:
            keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(total)[:self.limit])
            x = np.ascontiguousarray(x[keep])
        self.images[d] = x
        self.order[d] = np.random.default_rng(SUBSET_SEED).permutation(len(x))
        self.datasets[d] = {"dataset": d, "description": spec.description, "pixel_kind": spec.pixel_kind,
                            "split": split, "n_images": len(x), "split_size": total,
                            "selection": (f"seeded random {len(x)} of {total} {split} images (seed {SUBSET_SEED}, "
                                          "in dataset order)") if len(x) < total
                            else f"all {total} {split} images",
                            "models": [m.name for m in fits], "rows": []}

    def classical(self, d: str) -> None:
        rows = baselines.measure(self.images[d], binary=self.specs[d].pixel_kind == "binary",
                                 codecs=self.codecs, effort=self.jxl_effort)
        for r in rows:
            r["ours"] = False
        self.datasets[d]["rows"].extend(rows)

    def neg_elbo(self, d: str, m: _Model) -> None:
        images = self.images[d]
        self.nelbo[(d, m.name)] = dataset_neg_elbo_bits(sized_model(m.model, images.shape[1:]), images)

    def code(self, d: str, m: _Model, proto: str, n_refine: int) -> None:
        x, nb, lb = self.images[d], self.nelbo[(d, m.name)], self.latent_bits
        if proto == "chunks100":
            row = _code_files(m, x, nb, proto, CHUNK_IMAGES, 1, lb, workers=self.workers)
        elif proto == "single":
            k = min(self.single_images, len(x))
            pick = self.order[d][:k]
            row = _code_files(m, np.ascontiguousarray(x[pick]), nb[pick], proto, 1, 1, lb, workers=self.workers)
            if k < len(x):
                row["subset"] = f"seeded random {k} images"
        else:                                                          # all, all+refineK
            row = _code_files(m, x, nb, proto, len(x), None, lb, refine_steps=n_refine, workers=self.workers)
        self.datasets[d]["rows"].append(row)

    def sweep_row(self, sweep: dict, m: _Model, d: str, chains: int) -> None:
        x = self.images[d]
        row = _code_files(m, x, self.nelbo[(d, m.name)], "all", len(x), chains, self.latent_bits,
                          workers=self.workers)
        row["chains_requested"] = chains
        sweep["rows"].append(row)
        sweep["n_images"] = len(x)

    def curve(self, curve: dict, m: _Model, d: str) -> None:
        x = self.images[d]
        sizes = sorted({min(int(n), len(x)) for n in self.curve_sizes} | ({len(x)} if self.curve_sizes else set()))
        all_row = next((r for r in self.datasets[d]["rows"]
                        if r.get("ours") and r["model"] == m.name and r["protocol"] == "all"), None)
        for n in (n for n in sizes if n <= len(x)):
            if n == len(x) and all_row is not None:
                row = all_row
            else:
                pick = self.order[d][:n]
                row = _code_files(m, np.ascontiguousarray(x[pick]), self.nelbo[(d, m.name)][pick], "all", n, None,
                                  self.latent_bits, with_forward=False, workers=self.workers)
            curve["points"].append({k: row.get(k) for k in CURVE_KEYS})


CURVE_KEYS = ("n_images", "chains", "total_bytes", "actual_bpd", "neg_elbo_bpd", "ideal_bpd", "initial_bits",
              "initial_bpd", "container_bits", "container_bpd", "lossless_verified")


def run_bench(datasets: Sequence[str] = DATASETS, models: Sequence[str] | None = None, limit: int | None = None,
              chains_list: Sequence[int] = CHAINS_SWEEP, classical: bool = True, effort: int | None = None,
              progress: Progress | None = None, *, codecs: Iterable[str] | None = None,
              single_images: int = SINGLE_IMAGES, curve_sizes: Sequence[int] = CURVE_SIZES,
              latent_bits: int = DEFAULT_LATENT_BITS, data_dir: str | None = None,
              command: str | None = None, sweep_model: str | None = None,
              refine_steps: Sequence[int] = (), pixels: str | None = None, workers: int = 1) -> dict:
    """Benchmark BB-ANS and classical codecs; returns the result dict (see module docstring).

    datasets: dataset names (test split each) or paths (all their images; `pixels` as in
      `data.open_dataset`). models: model references (bundled names or
      checkpoint directories); None = every bundled model; [] = none (classical only).
    limit: a seeded random `limit` of each dataset's test images (kept in dataset order). chains_list: the speed sweep.
    classical: run `baselines.measure`; codecs: restrict it to these registry names.
    effort: JPEG-XL effort (None = the library's maximum). sweep_model: model for the speed
      sweep (default: bundled `mnist-bin` if given, else the first binary model, else the first).
    refine_steps: for each K > 0, one more BB-ANS row per (model, dataset): protocol `all` with K
      steps of posterior refinement (`refine_protocol(K)`).
    workers: processes coding BB-ANS files (`_code_files`): every size and verdict is the same for
      any number; the speeds are per file (each file's own time), the elapsed time shrinks.
    """
    t_start = time.perf_counter()
    datasets = list(dict.fromkeys(datasets))
    # unknown names and bad paths fail before any work; a path's images are all benchmarked
    specs = {d: open_dataset(d, pixels=pixels, data_root=data_dir) for d in datasets}
    if limit is not None and limit < 1:
        raise VaeCompressError("--limit must be at least 1")
    if any(int(c) < 1 for c in chains_list):
        raise VaeCompressError("chain counts must be at least 1")
    refine_steps = sorted({int(k) for k in refine_steps})
    if any(not 1 <= k <= 1000 for k in refine_steps):
        raise VaeCompressError("refinement steps must be in 1..1000")
    plan = _Plan(specs, limit, None if codecs is None else list(codecs),
                 baselines.default_jxl_effort() if effort is None else int(effort), single_images, curve_sizes,
                 latent_bits, data_dir, refine_steps, max(1, int(workers)))
    loaded = _load_models(models)
    only = "classical codecs only" if classical else "nothing measured (--no-classical)"
    notes = _model_notes(loaded, models, specs, only)

    for d in datasets:
        fits = [m for m in loaded if m.fits(specs[d])]
        plan.add(f"{d}: load", lambda d=d, fits=fits: plan.load(d, fits))
        if classical:
            plan.add(f"{d}: classical codecs", lambda d=d: plan.classical(d))
        for m in fits:
            plan.add(f"{d}: {m.name} -ELBO", lambda d=d, m=m: plan.neg_elbo(d, m))
            # the plain protocols, then `all` once per refinement setting
            for proto, k in [(p, 0) for p in BBANS_PROTOCOLS] + [(refine_protocol(k), k) for k in refine_steps]:
                plan.add(f"{d}: {m.name} BB-ANS {proto}", lambda d=d, m=m, p=proto, k=k: plan.code(d, m, p, k))

    sweep: dict | None = None
    sweep_pick = _pick_sweep(loaded, specs, sweep_model)
    if sweep_pick is not None and chains_list:
        sm, sd = sweep_pick
        sweep = {"model": sm.name, "dataset": sd, "rows": []}
        for c in chains_list:
            plan.add(f"speed sweep: {sm.name} on {sd}, {c} chains",
                     lambda c=int(c): plan.sweep_row(sweep, sm, sd, c))
    elif loaded and chains_list:
        notes.append("speed sweep skipped: no model fits a benchmarked dataset")

    curves: list[dict] = []
    for m in loaded:
        cd = _curve_dataset(m, specs)
        if cd is not None:
            curves.append({"model": m.name, "dataset": cd, "points": []})
            plan.add(f"rate curve: {m.name} on {cd}", lambda m=m, cd=cd, c=curves[-1]: plan.curve(c, m, cd))

    plan.run(progress)
    for d in datasets:
        rd = plan.datasets[d]
        rd["best_classical"] = _summary(_best([r for r in rd["rows"] if not r.get("ours")]))
        rd["best_ours"] = _summary(_best([r for r in rd["rows"] if r.get("ours") and not r.get("subset")]))
        if not rd["models"]:
            notes.append(f"{d}: no model fits this dataset ({rd['pixel_kind']} pixels): {only}")
    all_rows = [r for d in plan.datasets.values() for r in d["rows"] if not r.get("skipped")]
    all_rows += (sweep or {}).get("rows", []) + [p for c in curves for p in c["points"]]
    return {
        "format": FORMAT,
        "command": command or "bbans_vae.bench.run_bench (Python API)",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": _machine(),
        "versions": _versions(),
        "settings": {"datasets": datasets, "split": SPLIT, "limit": limit, "classical": classical,
                     "codecs": plan.codecs, "jpegxl_effort": plan.jxl_effort,
                     "chains_sweep": [int(c) for c in chains_list], "chunk_images": CHUNK_IMAGES,
                     "single_images": single_images, "curve_sizes": [int(n) for n in curve_sizes],
                     "latent_bits": latent_bits, "refine_steps": refine_steps, "workers": plan.workers,
                     "subset_seed": SUBSET_SEED,
                     "neg_elbo": "dataset_neg_elbo_bits: exact KL + 1-sample MC reconstruction, seed 0"},
        "protocols": {**{k: v.format(single=single_images) for k, v in PROTOCOLS.items()},
                      **{refine_protocol(k): refine_protocol_text(k) for k in refine_steps}},
        "models": [m.info() for m in loaded],
        "codecs": baselines.codec_table(plan.jxl_effort) if classical else [],
        "datasets": plan.datasets,
        "speed_sweep": sweep,
        "rate_curves": curves,
        "headline": headline(plan.datasets),
        "all_verified": all(r.get("lossless_verified", True) for r in all_rows),
        "notes": notes,
        "elapsed_seconds": time.perf_counter() - t_start,
    }


def _model_notes(loaded: list[_Model], models: Sequence[str] | None, specs: dict, only: str) -> list[str]:
    """Notes for the result: no models at all, or models that fit no benchmarked dataset."""
    notes = []
    if not loaded:
        notes.append(f"no models were given and none are bundled: {only}" if models is None
                     else f"no models given: {only}")
    for m in loaded:
        if not any(m.fits(s) for s in specs.values()):
            notes.append(f"model {m.name} ({m.model.cfg.pixel_kind} {m.model.cfg.array_shape}) fits none of the "
                         "benchmarked datasets")
    return notes


def _pick_sweep(loaded: list[_Model], specs: dict, name: str | None):
    if name is not None:
        cands = [m for m in loaded if m.name == name]
        if not cands:
            raise VaeCompressError(f"sweep model {name!r} is not among the benchmarked models")
    else:
        cands = ([m for m in loaded if m.name == "mnist-bin"] + [m for m in loaded if m.model.cfg.pixel_kind == "binary"]
                 + loaded)
    for m in cands:
        d = _curve_dataset(m, specs)
        if d is not None:
            return m, d
    return None


def _curve_dataset(m: _Model, specs: dict) -> str | None:
    """The model's own training dataset if benchmarked, else the first benchmarked one it fits."""
    own = m.config.get("dataset")
    if own in specs and m.fits(specs[own]):
        return own
    return next((d for d, s in specs.items() if m.fits(s)), None)


def _best(rows: list[dict]) -> dict | None:
    try:
        return baselines.best(rows)
    except ValueError:
        return None


def _summary(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {k: r.get(k) for k in ("codec", "model", "protocol", "input", "n_images", "total_bytes", "bpd")
            if r.get(k) is not None}


def headline(result_ds: dict) -> list[dict]:
    """Per dataset: our best full-set bpd vs the best classical codec, ratio ours/classical."""
    out = []
    for d, rd in result_ds.items():
        o, c = rd.get("best_ours"), rd.get("best_classical")
        out.append({"dataset": d, "n_images": rd["n_images"],
                    "ours": o and f"{o['model']} ({o['protocol']})", "ours_bpd": o and o["bpd"],
                    "classical": c and f"{c['codec']} ({c['protocol']}, {c['input']})",
                    "classical_bpd": c and c["bpd"],
                    "ratio": (o["bpd"] / c["bpd"]) if o and c and c["bpd"] else None})
    return out
