"""The fully convolutional VAE: one set of weights codes images of any size (docs/DESIGN.md, conv models).

Spatial latents, `latent_dim` channels per 4x4 pixel block (the layout of HiLLoC, Townsend et al.,
ICLR 2020). Encoder: zero-pad H x W to multiples of 4, space-to-depth (each 4x4 block becomes
16*C channels, `pixel_unshuffle`), then same-padded 3x3 convolutions with ReLU on the block
grid to 2 * latent_dim channels (mean, pre-softplus std). Decoder: same-padded 3x3 convolutions
on the latent grid to 16*C*k channels, depth-to-space back to pixels (`pixel_shuffle`), cropped to
H x W. Only real pixels are coded (the padding never is); every latent of a partial block is
coded and charged, so bpd is per original value. `at(H, W)` is the same weights seen at another
size: a VAE whose `cfg.image_shape` is (H, W) and whose `cfg.n_latents` is latent_dim * blocks.

Being only same-padded odd convolutions on one grid plus reshapes, the networks run on the
exact coder path as integer GEMMs over im2col patches (`exact.qnet.ExactConvNetworks`).
Colour (3 channels) adds the channel-order context net of the colour models (`ConvContextVAE`).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig
from .context import ContextVAE, coding_phases
from .likelihoods import LIKELIHOODS
from .vae import SIGMA_FLOOR, VAE

STRIDE = 4     # pixels per latent block side


def conv_stack(sizes: list[int]) -> nn.Sequential:
    """Same-padded 3x3 convolutions sizes[0] -> ... -> sizes[-1] channels, ReLU between."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Conv2d(sizes[i], sizes[i + 1], 3, padding=1))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def blocks(height: int, width: int) -> tuple[int, int]:
    """Latent grid of an H x W image: (ceil(H / 4), ceil(W / 4))."""
    return -(-height // STRIDE), -(-width // STRIDE)


class ConvVAE(VAE):
    """Gaussian q(z|x) over a grid of latents, N(0, I) prior, factorised pixel likelihood; the
    weights do not depend on the image size (`at`)."""

    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)                 # not VAE.__init__: no MLPs
        cfg.validate()
        self.cfg = cfg
        self.likelihood = LIKELIHOODS[cfg.likelihood](cfg)
        r, C, D = STRIDE * STRIDE, cfg.channels, cfg.latent_dim
        self.encoder = conv_stack([r * C, *cfg.hidden, 2 * D])
        self.decoder = conv_stack([D, *reversed(cfg.hidden), r * C * self.likelihood.params_per_pixel])

    @property
    def owner(self) -> "ConvVAE":
        """The model whose weights these are (itself, or the model a view was made from)."""
        return self.__dict__.get("_owner", self)

    def at(self, height: int, width: int) -> "ConvVAE":
        """These weights for H x W images (shared, not copied); itself at its own size."""
        height, width = int(height), int(width)
        if (height, width) == tuple(self.cfg.image_shape):
            return self
        owner = self.owner
        view = copy.copy(owner)                  # shares the parameter and module dicts
        view._buffers = dict(owner._buffers)     # ... but not the buffers (the phases are per size)
        view.cfg = replace(owner.cfg, image_shape=(height, width))
        view.cfg.validate()
        view.likelihood = LIKELIHOODS[view.cfg.likelihood](view.cfg)
        if "phase" in view._buffers:
            view._buffers["phase"] = coding_phases(height, width, view.cfg.channels, spatial=False)
        object.__setattr__(view, "_owner", owner)
        return view

    def _grid_shape(self) -> tuple[int, int, int, int]:
        H, W = self.cfg.image_shape
        return (H, W, *blocks(H, W))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(mu, sigma^2), (B, n_latents) each, latents ordered (block row, block column, channel)."""
        H, W, h4, w4 = self._grid_shape()
        B, C, D = x.shape[0], self.cfg.channels, self.cfg.latent_dim
        a = self.encoder_input(x).view(B, H, W, C).permute(0, 3, 1, 2)
        a = F.pad(a, (0, w4 * STRIDE - W, 0, h4 * STRIDE - H))
        h = self.encoder(F.pixel_unshuffle(a, STRIDE)).permute(0, 2, 3, 1)    # (B, h4, w4, 2D)
        mu, raw = h[..., :D].reshape(B, -1), h[..., D:].reshape(B, -1)
        return mu, F.softplus(raw) + SIGMA_FLOOR

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, n_latents) -> (B, P * k) likelihood parameters, pixel-major, then channel, then parameter."""
        H, W, h4, w4 = self._grid_shape()
        B, C, D, k = z.shape[0], self.cfg.channels, self.cfg.latent_dim, self.likelihood.params_per_pixel
        g = z.reshape(B, h4, w4, D).permute(0, 3, 1, 2)
        out = F.pixel_shuffle(self.decoder(g), STRIDE)[:, :, :H, :W]           # (B, C*k, H, W)
        return out.reshape(B, C, k, H, W).permute(0, 3, 4, 1, 2).reshape(B, H * W * C * k)


def sized_model(model: VAE, image_shape: tuple) -> VAE:
    """The model for images of `image_shape` (H, W[, C]): an any-size (conv) model's weights at
    that H x W; any other model as it is (callers refuse other sizes with its size named)."""
    if model.cfg.any_size and len(image_shape) >= 2:
        return model.at(*image_shape[:2])
    return model


class ConvContextVAE(ContextVAE, ConvVAE):
    """A colour ConvVAE: channel c of a pixel is coded given channels < c (the colour models' order,
    ContextVAE with 1x1 convolutions), the latents and decoder as in ConvVAE."""
