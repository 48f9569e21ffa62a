"""Where the coder's distributions come from: the `Backend` protocol and the float32 backend.

A backend turns network batches into the parameters the codecs quantise. Encoder and decoder
must get bit-identical parameters (docs/DESIGN.md, determinism), so every method is a pure
function of its arguments: no state changes between calls. Implementations:

    FloatBackend               ans/backends.py  float32 networks on this machine's kernels
    RefineBackend              ans/refine.py    FloatBackend + transmit-free posterior refinement
    exact.ExactBackend         exact/backend.py integer networks, identical on every machine
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import ModelError
from ..models import VAE
from .codecs import LatentBuckets


@runtime_checkable
class Backend(Protocol):
    """The distributions of one model for the coder, each method a pure function of its batch.

    posterior_probs(x)          (B, P) pixel symbols -> (B, D, 2^k) float64 bucket masses of q(z|x)
    decoder_out(z_idx)          (B, D) bucket indices -> the decoder's output (opaque to the coder)
    phase_params(out, x_vis, p) -> the pixel codec's float64 parameters for all pixels, valid for
                                the pixels of phase p; reads only the pixels of phases < p of
                                x_vis (B, P) (None when n_phases == 1: p(x|z) reads no pixels)
    pixel_log2_prob(params, x)  -> (B,) log2 p(x|z) as the coder sees it (accounting)

    `path` is the container's coder_path; `batch_invariant` says whether a lane's numbers are
    independent of the other lanes in its batch (then chains may be split across processes).
    """

    path: str
    buckets: Any
    latent_dim: int
    pixel_family: str
    n_phases: int
    phase: np.ndarray | None
    batch_invariant: bool

    def posterior_probs(self, x: np.ndarray) -> np.ndarray: ...

    def decoder_out(self, z_idx: np.ndarray) -> Any: ...

    def phase_params(self, out: Any, x_vis: np.ndarray | None, phase: int) -> Any: ...

    def pixel_log2_prob(self, params: Any, x: np.ndarray) -> np.ndarray: ...


class FloatBackend:
    """The float32 networks on this machine. Float results depend on the batch composition
    (BLAS blocking), so a file decodes only with the same chains batched together."""

    path = "float32"
    batch_invariant = False

    def __init__(self, model: VAE, latent_bits: int):
        self.model = model
        self.buckets = LatentBuckets(latent_bits)
        self.latent_dim = model.cfg.n_latents
        self.pixel_family = model.likelihood.coder_family
        self.n_phases = model.n_phases
        self.phase = model.phase.numpy() if self.n_phases > 1 else None          # (P,) phase per pixel

    def posterior_probs(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            mu, sigma = self.model.posterior(torch.from_numpy(x))                # (B, D) each
        return self.buckets.posterior_probs(mu, sigma)                             # (B, D, 2^k)

    def decoder_out(self, z_idx: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.decode(self.buckets.values(z_idx))                   # (B, P*k)

    def phase_params(self, out: torch.Tensor, x_vis: np.ndarray | None, phase: int):
        with torch.inference_mode():
            if self.n_phases > 1:
                out = self.model.phase_out(out, torch.from_numpy(x_vis).float(), phase)
            return self.model.likelihood.coder_params(out)

    def pixel_log2_prob(self, params, x: np.ndarray) -> np.ndarray:
        return self.model.likelihood.coder_log2_prob(params, x)


def pixel_params(backend: Backend, z_idx: np.ndarray):
    """p(x|z)'s codec parameters for a model without pixel context (n_phases == 1)."""
    if backend.n_phases > 1:
        raise ModelError("a context model's pixel parameters depend on x: use phase_params per phase")
    return backend.phase_params(backend.decoder_out(z_idx), None, 0)
