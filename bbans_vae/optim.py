"""The one optimisation loop: training, encoder refits, per-image posterior fits and coding-time
refinement all take their Adam steps here.

`minimise` differentiates the loss with respect to the optimizer's own parameters only
(`torch.autograd.grad`), so no other tensor's `.grad` is written: a frozen decoder stays
untouched without toggling `requires_grad`, and refinement inside the coder leaves the model's
state as it found it. Determinism is the caller's: seeded generators for shuffling and noise.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

import torch

from .models import VAE
from .objectives import neg_elbo_bits

Batch = TypeVar("Batch")


def minimise(optimizer: torch.optim.Optimizer, loss_fn: Callable[[Batch], torch.Tensor],
             batches: Iterable[Batch],
             reduce_grads: Callable[[list[torch.Tensor]], None] | None = None) -> Iterator[tuple[Batch, float]]:
    """One optimizer step per batch on the scalar `loss_fn(batch)`; yields (batch, its loss).
    `reduce_grads(grads)`, if given, combines the gradients in place before the step (data-parallel
    training sums them over the ranks: `train.py`)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for batch in batches:
        loss = loss_fn(batch)
        grads = list(torch.autograd.grad(loss, params))
        if reduce_grads is not None:
            reduce_grads(grads)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        yield batch, float(loss.detach())


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one seeded permutation of range(n); the last batch may be short."""
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def fit_posterior(model: VAE, x: torch.Tensor, steps: int, lr: float, gen: torch.Generator,
                  start: tuple[torch.Tensor, torch.Tensor] | None = None,
                  n_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Gaussian q(z) = N(mu, sigma^2) after `steps` Adam steps on the batch's summed
    -ELBO (images do not interact: the sum separates), from `start` (default: the model's
    encoder output). Only (mu, log sigma) move; returns them detached, (B, D) each."""
    if start is None:
        with torch.no_grad():
            start = model.posterior(x)
    mu = start[0].detach().clone().requires_grad_(True)
    log_sigma = torch.log(start[1]).detach().clone().requires_grad_(True)

    def loss(_step: int) -> torch.Tensor:
        return neg_elbo_bits(model, x, n_samples=n_samples, gen=gen, posterior=(mu, torch.exp(log_sigma))).sum()

    with torch.enable_grad():
        for _ in minimise(torch.optim.Adam([mu, log_sigma], lr=lr), loss, range(steps)):
            pass
    return mu.detach(), torch.exp(log_sigma.detach())
