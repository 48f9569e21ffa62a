"""Shrinking the amortization gap at coding time (docs/DESIGN.md, refinement).

`RefineBackend`: transmit-free posterior refinement. Starting from the encoder's q(z|x), take
  K deterministic Adam steps on each image's -ELBO (decoder frozen) before building the
  posterior bucket table. The decoder has x once it has popped it, so it repeats exactly the
  same steps (same batch, same seeded noise, single thread) and pushes z back with the same
  table: nothing extra is transmitted, K trades speed for rate. Float path only.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models import VAE
from ..optim import fit_posterior
from .backends import FloatBackend

DEFAULT_REFINE_LR = 0.02


def refine_posterior(model: VAE, x: torch.Tensor, steps: int, lr: float = DEFAULT_REFINE_LR,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K Adam steps on (mu, log sigma) of each image's q, from the encoder's output. (B, D) each.

    Deterministic given the batch: fixed seeded noise, no dependence on other state.
    """
    return fit_posterior(model, x, steps, lr, torch.Generator().manual_seed(seed))


class RefineBackend(FloatBackend):
    """FloatBackend whose posterior is refined by `refine_posterior` (same steps at both ends)."""

    path = "float32"

    def __init__(self, model: VAE, latent_bits: int, steps: int, lr: float = DEFAULT_REFINE_LR):
        super().__init__(model, latent_bits)
        self.steps, self.lr = steps, lr

    def posterior_probs(self, x: np.ndarray) -> np.ndarray:
        mu, sigma = refine_posterior(self.model, torch.from_numpy(x), self.steps, self.lr)
        return self.buckets.posterior_probs(mu, sigma)
