"""The context VAE: the likelihood also reads already-coded neighbours and/or channels."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .vae import VAE


def coding_phases(height: int, width: int, channels: int = 1, spatial: bool = True, levels: int = 1) -> torch.Tensor:
    """(H*W*C,) phase of every value (pixel-major, channel-minor, as image arrays flatten):
    checkerboard phase * C + channel, or only the channel without `spatial` (colour mlp models).
    So channel c of a pixel is coded after channels < c of the same pixel; C = 1 gives exactly
    `checkerboard_phases`."""
    cb = _checkerboard(height, width, levels).reshape(-1) if spatial else np.zeros(height * width, np.int64)
    return torch.from_numpy((cb[:, None] * channels + np.arange(channels)[None, :]).reshape(-1))


def checkerboard_phases(height: int, width: int, levels: int = 1) -> torch.Tensor:
    """(H*W,) phase of every pixel in a `levels`-deep multi-scale checkerboard: 3*levels+1 phases.

    levels 1 (He et al., "Checkerboard context model", CVPR 2021, 2 x 2 form): (even, even) 0,
    (odd, odd) 1, (even, odd) 2, (odd, even) 3; phase p is coded after phases < p, so phase 1
    sees its 4 diagonal neighbours, phase 2 its 4 direct ones, phase 3 all 8, and a quarter of
    the pixels (phase 0) are coded from z alone.
    levels L > 1: the (even, even) sub-image is itself ordered by the (L-1)-level scheme first
    (phases 0 .. 3L-3), then the other three quarters follow as phases 3L-2, 3L-1, 3L, as at one
    level. At L = 2 only 1/16 of the pixels lack context and every pixel of phases 1-3 has
    already-coded neighbours at distance 2, inside the context net's 5 x 5 receptive field
    (multi-scale order as in PixelCNN's subsampled variants and Reed et al. 2017; 7 network
    calls per image instead of 4).
    """
    return torch.from_numpy(_checkerboard(height, width, levels).reshape(-1))


def _checkerboard(height: int, width: int, levels: int) -> np.ndarray:
    """(H, W) int64 phases of `checkerboard_phases`. numpy, not torch: under a
    `torch.device("meta")` context (limits.model_parameter_count) torch's elementwise ops would
    import torch._dynamo and sympy (+90 MB of RSS and ~1 s at every model load)."""
    r, c = np.indices((height, width))
    phase = np.zeros((height, width), dtype=np.int64)
    for level in range(levels, 0, -1):         # finest level: the three last phases
        step = 1 << (levels - level)            # this level's pixels lie on the grid of this step
        on_grid = (r % step == 0) & (c % step == 0)
        rr, cc = (r // step) % 2, (c // step) % 2
        first = 3 * (level - 1)                 # phases of the coarser levels come before
        phase[on_grid & (rr == 1) & (cc == 1)] = first + 1
        phase[on_grid & (rr == 0) & (cc == 1)] = first + 2
        phase[on_grid & (rr == 1) & (cc == 0)] = first + 3
    coarsest = 1 << levels
    phase[(r % coarsest == 0) & (c % coarsest == 0)] = 0
    return phase


class ContextVAE(VAE):
    """VAE whose pixel likelihood also reads already-coded neighbours: 4 checkerboard phases
    (arch "ctx", 3x3 convs; 3L+1 with `context_levels` L), times the channels for colour, where
    channel c of a pixel is coded given channels < c (PixelCNN++'s order); a colour "mlp" model has the channel order only
    (3 phases, 1x1 convs).

    p(x|z) = prod_p prod_{i in phase p} p(x_i | z, x_{phases < p}). The decoder MLP gives every
    pixel base parameters h(z); a small conv net reads [h, visible pixels, visibility mask] and
    adds a correction (zero at init, so a context model started from an mlp checkpoint begins as
    that model). Coding runs the phases in order, each one batched network call (ans/chains.py).
    The bits-back structure is unchanged: the context only sharpens p(x|z).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, c, C = self.likelihood.params_per_pixel, cfg.context_channels, cfg.channels
        spatial = cfg.arch == "ctx"
        ks = 3 if spatial else 1
        hidden = [nn.Conv2d(C * (k + 2), c, ks, padding=ks // 2), nn.ReLU()]
        for _ in range(cfg.context_layers - 1):
            hidden += [nn.Conv2d(c, c, ks, padding=ks // 2), nn.ReLU()]
        self.context = nn.Sequential(*hidden, nn.Conv2d(c, C * k, 1))   # receptive field 2L+1 (3x3 convs)
        nn.init.zeros_(self.context[-1].weight)
        nn.init.zeros_(self.context[-1].bias)
        self.n_phases = (3 * cfg.context_levels + 1 if spatial else 1) * C
        self.register_buffer("phase", coding_phases(*cfg.image_shape, C, spatial, cfg.context_levels),
                             persistent=False)

    def _with_context(self, out: torch.Tensor, xf: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """out (N, P*k) plus the context net's correction, reading the values of xf (N, P) where
        vis (N, P) is 1 (the rest are zeroed, so unseen values cannot leak in). The net's input
        channels: h (C*k, channel-major), visible values (C), mask (C)."""
        N, (H, W), C = out.shape[0], self.cfg.image_shape, self.cfg.channels
        k = self.likelihood.params_per_pixel
        x_in = self.encoder_input(xf) * vis                                       # (N, P)
        h = out.view(N, H, W, C * k).permute(0, 3, 1, 2)                          # (N, C*k, H, W)
        planes = [h, x_in.view(N, H, W, C).permute(0, 3, 1, 2), vis.view(N, H, W, C).permute(0, 3, 1, 2)]
        return out + self.context(torch.cat(planes, 1)).permute(0, 2, 3, 1).reshape(N, H * W * C * k)

    def phase_out(self, out: torch.Tensor, xf: torch.Tensor, phase: int) -> torch.Tensor:
        """Parameters (B, P*k) for the pixels of `phase`, reading only pixels of phases < phase of
        xf (B, P) (others are ignored, so a partly decoded image gives the same result)."""
        vis = (self.phase < phase).to(out.dtype).expand(out.shape[0], -1)         # (B, P)
        return self._with_context(out, xf, vis)

    def pixel_out(self, z: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        # all phases in one batched call (training); the coder calls phase_out per phase instead
        out = self.decode(z)                                                      # (B, P*k)
        B, k, n = out.shape[0], self.likelihood.params_per_pixel, self.n_phases
        row_phase = torch.arange(n, device=out.device).repeat_interleave(B)       # (nB,)
        vis = (self.phase.view(1, -1) < row_phase.view(-1, 1)).to(out.dtype)     # (nB, P)
        all_out = self._with_context(out.repeat(n, 1), xf.repeat(n, 1), vis)     # (nB, P*k)
        pick = self.phase.repeat_interleave(k)                                    # (P*k,) phase per output
        return all_out.view(n, B, -1).gather(0, pick.view(1, 1, -1).expand(1, B, -1))[0]

    def pixel_coder_params(self, z: torch.Tensor):
        raise NotImplementedError("a context model's pixel parameters depend on x: use phase_out per phase")

    def sample_given(self, z: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        out = self.decode(z)
        x = torch.zeros(z.shape[0], self.cfg.n_pixels, device=z.device)
        for p in range(self.n_phases):
            sel = self.phase == p        # torch.where, not x[:, sel] = ...: no host sync (CUDA graphs)
            x = torch.where(sel, self.likelihood.sample(self.phase_out(out, x, p), gen), x)
        return x
