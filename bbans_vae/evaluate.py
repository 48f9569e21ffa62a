"""Evaluating a model on a dataset split: -ELBO and IWAE in bits per dimension."""
from __future__ import annotations

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


def evaluate(model: VAE, dataset: Dataset | str, split: str | None = None, data_dir=None,
             limit: int | None = None, iwae_k: int | None = None, n_samples: int = 1, seed: int = 0) -> dict:
    """-ELBO (and IWAE) of `model` on `split` of `dataset` (a name, a path or an opened Dataset;
    default split: its `eval_split`)."""
    ds = open_dataset(dataset, data_root=data_dir) if isinstance(dataset, str) else dataset
    check_compatible(model, ds)
    model = sized_model(model, tuple(ds.image_shape))
    split = split or ds.eval_split
    images = ds.images(split)
    if limit is not None:
        images = images[:limit]
    dims = model.cfg.n_pixels
    bits = dataset_neg_elbo_bits(model, images, seed=seed, n_samples=n_samples)
    res = {"dataset": ds.name, "split": split, "n_images": int(len(images)),
           "neg_elbo_bits": float(bits.sum()), "neg_elbo_bpd": float(bits.mean() / dims),
           "neg_elbo_samples": n_samples}
    if iwae_k:
        ib = dataset_iwae_bits(model, images, iwae_k, seed=seed)
        res.update({"iwae_k": iwae_k, "iwae_bits": float(ib.sum()), "iwae_bpd": float(ib.mean() / dims)})
    return res
