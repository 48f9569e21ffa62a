"""Evaluating a model on a dataset split: -ELBO and IWAE in bits per dimension.

The images are cut into chunks of `EVAL_CHUNK`; chunk c draws its Monte Carlo noise from its own
generator (`chunk_seed`: the first chunk uses `seed` itself, so up to 1,000 images give the
numbers of one `dataset_neg_elbo_bits` call), on one torch thread. So the chunks can be shared
out among worker processes (`workers`) and every worker count gives the same numbers.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .ans.chains import chain_groups, single_thread
from .ans.workers import run_jobs
from .data import Dataset, DatasetSpec, open_dataset
from .errors import ModelError
from .models import VAE, ModelConfig, sized_model
from .objectives import dataset_iwae_bits, dataset_neg_elbo_bits


def fits(cfg: ModelConfig, spec: DatasetSpec | Dataset) -> bool:
    """Whether a model codes a dataset's images (built-in spec or opened dataset): same pixel
    kind and image shape (any-size models: same channel count)."""
    shape = tuple(spec.image_shape)
    if cfg.any_size:
        return cfg.pixel_kind == spec.pixel_kind and (shape[2] if len(shape) == 3 else 1) == cfg.channels
    return cfg.pixel_kind == spec.pixel_kind and cfg.array_shape == shape


def check_compatible(model: VAE, dataset: Dataset) -> None:
    """ModelError unless `model` codes the pixels and image size of `dataset`."""
    cfg = model.cfg
    if not fits(cfg, dataset):
        raise ModelError(f"model codes {cfg.pixel_kind} {'x'.join(map(str, cfg.array_shape))} images; dataset "
                         f"{dataset.name} is {dataset.pixel_kind} {'x'.join(map(str, dataset.image_shape))}")


EVAL_CHUNK = 1000       # images per independently seeded chunk (the unit shared out among workers)


def chunk_seed(seed: int, chunk: int) -> int:
    """The noise seed of chunk `chunk` of an evaluation seeded `seed` (chunk 0: `seed`)."""
    return seed if chunk == 0 else int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def _eval_chunks(model: VAE, images: np.ndarray, chunks: range, n_samples: int, iwae_k: int | None, seed: int,
                 progress: Callable[[int], None]) -> list[np.ndarray]:
    """Per-image -ELBO bits (and IWAE bits, else an empty array) of each chunk in `chunks`."""
    out = []
    with single_thread():
        for c in chunks:
            x = images[c * EVAL_CHUNK:(c + 1) * EVAL_CHUNK]
            out.append(dataset_neg_elbo_bits(model, x, seed=chunk_seed(seed, c), n_samples=n_samples))
            out.append(dataset_iwae_bits(model, x, iwae_k, seed=chunk_seed(seed, c)) if iwae_k else np.zeros(0))
            progress(len(x))
    return out


def evaluate(model: VAE, dataset: Dataset | str, split: str | None = None, data_dir=None,
             limit: int | None = None, iwae_k: int | None = None, n_samples: int = 1, seed: int = 0,
             workers: int = 1, progress: Callable[[int], None] | None = None) -> dict:
    """-ELBO (and IWAE) of `model` on `split` of `dataset` (a name, a path or an opened Dataset;
    default split: its `eval_split`). `workers` processes share the chunks (module docstring):
    the same numbers for any count. `progress(n)` reports images done."""
    ds = open_dataset(dataset, data_root=data_dir) if isinstance(dataset, str) else dataset
    check_compatible(model, ds)
    model = sized_model(model, tuple(ds.image_shape))
    split = split or ds.eval_split
    images = ds.images(split)
    if limit is not None:
        images = images[:limit]
    dims = model.cfg.n_pixels
    n_chunks = -(-len(images) // EVAL_CHUNK)
    parts = run_jobs([functools.partial(_eval_chunks, model, images, range(c0, c1), n_samples, iwae_k, seed)
                      for c0, c1 in chain_groups(n_chunks, workers)], progress) if n_chunks else []
    arrays = [a for part in parts for a in part]
    bits = np.concatenate(arrays[0::2]) if arrays else np.zeros(0)
    res = {"dataset": ds.name, "split": split, "n_images": int(len(images)),
           "neg_elbo_bits": float(bits.sum()), "neg_elbo_bpd": float(bits.mean() / dims),
           "neg_elbo_samples": n_samples}
    if iwae_k:
        ib = np.concatenate(arrays[1::2]) if arrays else np.zeros(0)
        res.update({"iwae_k": iwae_k, "iwae_bits": float(ib.sum()), "iwae_bpd": float(ib.mean() / dims)})
    return res
