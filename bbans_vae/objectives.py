"""The objectives in bits: KL, -ELBO, IWAE, the encoder-only training objectives, and their
batched per-image versions over image arrays.

`reverse_half_asleep_objective`: Reverse Half-Asleep encoder training (Zhang, Hayes & Barber,
NeurIPS 2022): with the decoder frozen, the encoder minimises the -ELBO of batches that are half
real images and half images dreamed by the model, either from the prior (z ~ N(0, I),
x ~ p(x|z)) or by reconstruction (z ~ q(z|x), x ~ p(x|z)).

`neg_elbo_bits` is the one -ELBO function that training, evaluation, coding reports, bench and
gaps call. The math is in docs/DESIGN.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .models import LN2, VAE




def gaussian_kl_bits(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) in bits, summed over latent dims: (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * torch.log(sigma)).sum(-1) / LN2


def neg_elbo_bits(model: VAE, x: torch.Tensor, n_samples: int = 1,
                  gen: torch.Generator | None = None,
                  posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Negative ELBO in bits per image, (B,): E_q[-log2 p(x|z)] + KL(q || p).

    The expectation uses `n_samples` reparameterised samples (differentiable); the KL is exact.
    `posterior` overrides q(z|x) (used by refit / per-image optimisation). This is the one
    function that training, eval, bench and gaps call.
    """
    mu, sigma = model.posterior(x) if posterior is None else posterior
    xf = model.flat_pixels(x)
    rec = 0.0
    for _ in range(n_samples):
        eps = torch.randn(mu.shape, generator=gen, device=mu.device)
        rec = rec + model.likelihood.nll_bits(xf, model.pixel_out(mu + sigma * eps, xf))
    return rec / n_samples + gaussian_kl_bits(mu, sigma)


def iwae_bits(model: VAE, x: torch.Tensor, k: int, gen: torch.Generator | None = None,
              chunk: int = 250, posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Importance-weighted estimate of -log2 p(x) with k samples, (B,). Upper bound in expectation.
    The proposal is q(z|x), or the given `posterior` (mu, sigma) rows."""
    mu, sigma = model.posterior(x) if posterior is None else posterior
    xf = model.flat_pixels(x)
    B, D = mu.shape
    logws = []
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        eps = torch.randn(m, B, D, generator=gen, device=mu.device)
        z = mu + sigma * eps                                            # (m, B, D)
        xr = xf.repeat(m, 1)
        nll = model.likelihood.nll_bits(xr, model.pixel_out(z.view(m * B, D), xr)).view(m, B) * LN2
        log_prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1) - torch.log(sigma).sum(-1)
        logws.append(-nll + log_prior - log_q)
    logw = torch.cat(logws, 0)                                          # (k, B)
    return -(torch.logsumexp(logw, 0) - math.log(k)) / LN2


def reverse_half_asleep_objective(mode: str = "prior"):
    """Loss f(model, x, gen) for encoder-only training: -ELBO bits of [x ; dreamed x]."""
    if mode not in ("prior", "recon"):
        raise ValueError("mode must be 'prior' or 'recon'")

    def objective(model: VAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        half = x[: n - n // 2]
        with torch.no_grad():
            if mode == "prior":
                z = torch.randn(n // 2, model.cfg.n_latents, generator=gen, device=x.device)
            else:
                mu, sigma = model.posterior(x[n - n // 2:])
                z = mu + sigma * torch.randn(mu.shape, generator=gen, device=x.device)
            dreamed = model.sample_given(z, gen).view(-1, *model.cfg.image_shape)
        batch = torch.cat([half.float(), dreamed.to(half.device).float()], 0)
        return neg_elbo_bits(model, batch, gen=gen).mean()

    return objective


def _rows(posterior: tuple[torch.Tensor, torch.Tensor] | None, i: int, j: int):
    return None if posterior is None else (posterior[0][i:j], posterior[1][i:j])


def report_batch_size(model: VAE, limit: int = 1000) -> int:
    """Images per batch of a report pass with activations of at most ~2^22 floats (16 MB per
    tensor): a context model runs its conv net on n_phases copies of every image at full
    resolution, so 1000 images held 1.2 GB of activations (#17). Measured on mnist-ctx, 1k
    images: peak RSS 318 MB at 41 per batch, 512 MB at 167; the same per-image values."""
    per_image = model.n_phases * model.cfg.n_pixels * max(1, model.cfg.context_channels)
    return int(max(1, min(limit, (1 << 22) // per_image)))


@torch.no_grad()
def dataset_neg_elbo_bits(model: VAE, images: np.ndarray, batch_size: int | None = None, seed: int = 0,
                          n_samples: int = 1, device: str = "cpu",
                          posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """Per-image -ELBO in bits over an (N, H, W) uint8 array, batch by batch, one generator
    seeded `seed` for the Monte Carlo noise (same seed + same images = same noise). `posterior`:
    (N, D) mu and sigma rows replacing q(z|x) (a refit or per-image optimised posterior).
    batch_size: default `report_batch_size(model)` (bounded memory)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    model.eval()
    batch_size = batch_size or report_batch_size(model)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device)
        out.append(neg_elbo_bits(model, x, n_samples=n_samples, gen=gen,
                                 posterior=_rows(posterior, i, i + batch_size)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def dataset_iwae_bits(model: VAE, images: np.ndarray, k: int, seed: int = 0, batch_size: int = 100,
                      proposal: tuple[torch.Tensor, torch.Tensor] | None = None, device: str = "cpu") -> np.ndarray:
    """Per-image IWAE estimate of -log2 p(x) with k samples; proposal q(z|x), or the given (N, D)
    mu and sigma rows. One generator seeded `seed`; `model` lives on `device`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    if proposal is not None:
        proposal = (proposal[0].to(device), proposal[1].to(device))
    out = [iwae_bits(model, torch.from_numpy(images[i:i + batch_size]).to(device), k, gen,
                     posterior=_rows(proposal, i, i + batch_size)).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)
