"""Evaluating a model on a dataset split: -ELBO and IWAE in bits per dimension."""
from __future__ import annotations

from .data import DatasetSpec, dataset_spec, load_dataset
from .errors import ModelError
from .models import VAE, ModelConfig
from .objectives import dataset_iwae_bits, dataset_neg_elbo_bits


def fits(cfg: ModelConfig, spec: DatasetSpec) -> bool:
    """Whether a model codes a dataset's images: same pixel kind and image shape."""
    return cfg.pixel_kind == spec.pixel_kind and tuple(cfg.image_shape) == tuple(spec.image_shape)


def check_compatible(model: VAE, dataset: str) -> None:
    spec = dataset_spec(dataset)
    if not fits(model.cfg, spec):
        raise ModelError(f"model codes {model.cfg.pixel_kind} {model.cfg.image_shape} images; dataset "
                         f"{dataset} is {spec.pixel_kind} {tuple(spec.image_shape)}")


def evaluate(model: VAE, dataset: str, split: str = "test", data_dir=None, limit: int | None = None,
             iwae_k: int | None = None, n_samples: int = 1, seed: int = 0) -> dict:
    check_compatible(model, dataset)
    images = load_dataset(dataset, split, data_dir)
    if limit is not None:
        images = images[:limit]
    dims = model.cfg.n_pixels
    bits = dataset_neg_elbo_bits(model, images, seed=seed, n_samples=n_samples)
    res = {"dataset": dataset, "split": split, "n_images": int(len(images)),
           "neg_elbo_bits": float(bits.sum()), "neg_elbo_bpd": float(bits.mean() / dims),
           "neg_elbo_samples": n_samples}
    if iwae_k:
        ib = dataset_iwae_bits(model, images, iwae_k, seed=seed)
        res.update({"iwae_k": iwae_k, "iwae_bits": float(ib.sum()), "iwae_bpd": float(ib.mean() / dims)})
    return res
