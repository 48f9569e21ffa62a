"""The MLP VAE: Gaussian q(z|x), N(0, I) prior, factorised pixel likelihood."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig
from .likelihoods import LIKELIHOODS

SIGMA_FLOOR = 1e-5  # added to softplus(std) so q never collapses to a point


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Gaussian q(z|x), N(0, I) prior, factorised pixel likelihood p(x|z)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        P, D = cfg.n_pixels, cfg.latent_dim
        self.likelihood = LIKELIHOODS[cfg.likelihood](cfg)
        self.encoder = mlp([P, *cfg.hidden, 2 * D])
        self.decoder = mlp([D, *reversed(cfg.hidden), P * self.likelihood.params_per_pixel])

    # x arrives as raw pixel values (B, H, W) or (B, P): {0,1} or 0..255
    def flat_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).float()

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flat_pixels(x)
        return x if self.cfg.pixel_kind == "binary" else x / 255.0

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(mu, sigma^2): (B, D), (B, D)."""
        h = self.encoder(self.encoder_input(x))
        mu, raw = h.chunk(2, dim=-1)
        return mu, F.softplus(raw) + SIGMA_FLOOR

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for (B, D) latents: likelihood parameters (B, P * params_per_pixel)."""
        return self.decoder(z)

    n_phases = 1  # pixel groups coded one after another (1: all pixels independent given z)

    def pixel_out(self, z: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters of every pixel of x (B, P) given z (B, D): (B, P * params_per_pixel).
        Here they depend on z only; a context model also reads x (teacher forcing)."""
        return self.decode(z)

    def pixel_coder_params(self, z: torch.Tensor):
        return self.likelihood.coder_params(self.decode(z))

    def sample_given(self, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z): (B, D) -> (B, P) pixel values."""
        return self.likelihood.sample(self.decode(z), gen)

    def sample(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.cfg.n_latents, generator=gen)
        return self.sample_given(z, gen).view(n, *self.cfg.array_shape)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
