"""The Python API: load a model once, compress image arrays to bytes, decompress bytes.

    import bbans_vae as bv
    codec = bv.load("mnist-bin-ctx")           # bundled name, checkpoint or run directory
    data = codec.compress(images)              # (N, H, W) uint8 -> bytes
    images = bv.decompress(data)               # finds the model the file names

See the README's "Python API" section; sizes are reported by `accounting.file_sizes`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence, overload

import numpy as np

from .ans.chains import DEFAULT_LATENT_BITS
from .checkpoint import load_checkpoint, load_model, locate_model
from .container import unpack
from .models import VAE
from .pipeline import compress as _compress
from .pipeline import decompress as _decompress


class Codec:
    """A model ready to code images: `compress` and `decompress` with it."""

    def __init__(self, model: VAE, name: str, weights_sha256: str, path: Path):
        self.model = model
        self.name = name                       # recorded in the files it writes
        self.weights_sha256 = weights_sha256
        self.path = path                       # the checkpoint directory it was loaded from

    def __repr__(self) -> str:
        cfg = self.model.cfg
        return (f"Codec({self.name!r}: {cfg.arch} {cfg.pixel_kind} {cfg.image_shape[0]}x{cfg.image_shape[1]}, "
                f"weights sha256 {self.weights_sha256[:12]}...)")

    @overload
    def compress(self, images: np.ndarray, *, report: Literal[False] = ..., chains: int | None = ...,
                 latent_bits: int = ..., coder_path: str | None = ..., refine_steps: int = ...,
                 names: Sequence[str] | None = ..., importance_samples: int = ..., start: str = ...) -> bytes: ...

    @overload
    def compress(self, images: np.ndarray, *, report: Literal[True], chains: int | None = ...,
                 latent_bits: int = ..., coder_path: str | None = ..., refine_steps: int = ...,
                 names: Sequence[str] | None = ..., importance_samples: int = ...,
                 start: str = ...) -> tuple[bytes, dict]: ...

    def compress(self, images, *, report=False, chains=None, latent_bits=DEFAULT_LATENT_BITS, coder_path=None,
                 refine_steps=0, names=None, importance_samples=1, start="auto"):
        """(N, H, W) uint8 images -> the bytes of a .vae file. Binary models take 0/1 or 0/255.
        Any-size (conv) models also take a list of (H, W[, C]) images of several sizes (one file).

        With `report=True`, returns (bytes, report): the file's sizes (`file_sizes` keys, plus the
        encoder's estimates and the model's -ELBO, which costs a second forward pass) and timing.
        `importance_samples` K > 1 codes with the coupled K-sample (IWAE) bound; `start` is how
        chain-start images code their latent ("auto", "plain", "cheap"; `pipeline.compress`).
        """
        images = images if isinstance(images, list) else np.asarray(images)    # a list: images of several sizes
        data, rep = _compress(self.model, self.name, self.weights_sha256, images,
                              names=None if names is None else list(names), n_chains=chains,
                              latent_bits=latent_bits, with_neg_elbo=report, refine_steps=refine_steps,
                              coder_path=coder_path, importance_samples=importance_samples, start=start)
        return (data, rep) if report else data

    def decompress(self, data: bytes) -> np.ndarray:
        """The images of a file written with this model, exactly as given to `compress` (a list of
        arrays, one per image, for a file of several sizes)."""
        return _decompress(bytes(data), self.model, self.weights_sha256)[0]


def load(ref: str | os.PathLike) -> Codec:
    """A Codec for a bundled model name, a checkpoint directory or a training run directory."""
    model, config, path = load_model(str(ref))
    return Codec(model, str(ref), config["weights_sha256"], path)


def decompress(data: bytes, search_path: Sequence[str | os.PathLike] | None = None) -> np.ndarray:
    """The images of a .vae file, with the model its header names, found by its weights' hash
    among the bundled models, then under `search_path` (default: $VAECOMPRESS_MODELS)."""
    data = bytes(data)
    header, _ = unpack(data)
    path = locate_model(header.model_name, header.model_sha256,
                        None if search_path is None else [Path(p) for p in search_path])
    model, config = load_checkpoint(path)
    return _decompress(data, model, config["weights_sha256"])[0]
