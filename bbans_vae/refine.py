"""Shrinking the amortization gap at coding time and at training time (SPEC §8).

* `RefineBackend`: transmit-free posterior refinement. Starting from the encoder's q(z|x), take
  K deterministic Adam steps on each image's -ELBO (decoder frozen) before building the
  posterior bucket table. The decoder has x once it has popped it, so it repeats exactly the
  same steps (same batch, same seeded noise, single thread) and pushes z back with the same
  table: nothing extra is transmitted, K trades speed for rate. Float path only.
* `reverse_half_asleep_objective`: Reverse Half-Asleep encoder training (Zhang, Hayes & Barber,
  NeurIPS 2022): with the decoder frozen, the encoder minimises the -ELBO of batches that are
  half real images and half images dreamed by the model, either from the prior
  (z ~ N(0, I), x ~ p(x|z)) or by reconstruction (z ~ q(z|x), x ~ p(x|z)).
"""
from __future__ import annotations

import numpy as np
import torch

from .coding import FloatBackend
from .models import VAE, neg_elbo_bits

DEFAULT_REFINE_LR = 0.02


def refine_posterior(model: VAE, x: torch.Tensor, steps: int, lr: float = DEFAULT_REFINE_LR,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K Adam steps on (mu, log sigma) of each image's q, from the encoder's output. (B, D) each.

    Deterministic given the batch: fixed seeded noise, no dependence on other state.
    """
    with torch.no_grad():
        mu0, sigma0 = model.posterior(x)
    mu = mu0.detach().clone().requires_grad_(True)
    log_s = torch.log(sigma0).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu, log_s], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            loss = neg_elbo_bits(model, x, gen=gen, posterior=(mu, torch.exp(log_s))).sum()
            g_mu, g_s = torch.autograd.grad(loss, [mu, log_s])
            mu.grad, log_s.grad = g_mu, g_s
            opt.step()
    return mu.detach(), torch.exp(log_s.detach())


class RefineBackend(FloatBackend):
    """FloatBackend whose posterior is refined by `refine_posterior` (same steps at both ends)."""

    path = "float32"

    def __init__(self, model: VAE, latent_bits: int, steps: int, lr: float = DEFAULT_REFINE_LR):
        super().__init__(model, latent_bits)
        self.steps, self.lr = steps, lr

    def posterior_probs(self, x: np.ndarray) -> np.ndarray:
        mu, sigma = refine_posterior(self.model, torch.from_numpy(x), self.steps, self.lr)
        return self.buckets.posterior_probs(mu, sigma)


def reverse_half_asleep_objective(mode: str = "prior"):
    """Loss f(model, x, gen) for encoder-only training: -ELBO bits of [x ; dreamed x]."""
    if mode not in ("prior", "recon"):
        raise ValueError("mode must be 'prior' or 'recon'")

    def objective(model: VAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        half = x[: n - n // 2]
        with torch.no_grad():
            if mode == "prior":
                z = torch.randn(n // 2, model.cfg.latent_dim, generator=gen, device=x.device)
            else:
                mu, sigma = model.posterior(x[n - n // 2:])
                z = mu + sigma * torch.randn(mu.shape, generator=gen, device=x.device)
            dreamed = model.sample_given(z, gen).view(-1, *model.cfg.image_shape)
        batch = torch.cat([half.float(), dreamed.to(half.device).float()], 0)
        return neg_elbo_bits(model, batch, gen=gen).mean()

    return objective
