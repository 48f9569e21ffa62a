"""The checkerboard context VAE: the likelihood also reads already-coded neighbours."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .vae import VAE


def checkerboard_phases(height: int, width: int) -> torch.Tensor:
    """(H*W,) phase of every pixel: (even, even) 0, (odd, odd) 1, (even, odd) 2, (odd, even) 3.

    Phase p is coded after phases < p: phase 1 sees its 4 diagonal neighbours, phase 2 its 4
    direct ones, phase 3 all 8 (He et al., "Checkerboard context model", CVPR 2021, 2 x 2 form).
    """
    r = torch.arange(height).view(-1, 1) % 2
    c = torch.arange(width).view(1, -1) % 2
    return torch.where(r == c, r, 2 + r).reshape(-1)


class ContextVAE(VAE):
    """VAE whose pixel likelihood also reads already-coded neighbours: 4 checkerboard phases.

    p(x|z) = prod_p prod_{i in phase p} p(x_i | z, x_{phases < p}). The decoder MLP gives every
    pixel base parameters h(z); a small conv net reads [h, visible pixels, visibility mask] and
    adds a correction (zero at init, so a context model started from an mlp checkpoint begins as
    that model). Coding runs the phases in order, each one batched network call (ans/chains.py).
    The bits-back structure is unchanged: the context only sharpens p(x|z).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, c = self.likelihood.params_per_pixel, cfg.context_channels
        self.context = nn.Sequential(nn.Conv2d(k + 2, c, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, k, 1))
        nn.init.zeros_(self.context[-1].weight)
        nn.init.zeros_(self.context[-1].bias)
        self.register_buffer("phase", checkerboard_phases(*cfg.image_shape), persistent=False)

    n_phases = 4

    def _with_context(self, out: torch.Tensor, xf: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        """out (N, P*k) plus the context net's correction, reading the pixels of xf (N, P) where
        vis (N, P) is 1 (the rest are zeroed, so unseen pixels cannot leak in)."""
        N, (H, W), k = out.shape[0], self.cfg.image_shape, self.likelihood.params_per_pixel
        x_in = self.encoder_input(xf) * vis                                       # (N, P)
        h = out.view(N, H, W, k).permute(0, 3, 1, 2)                              # (N, k, H, W)
        inp = torch.cat([h, x_in.view(N, 1, H, W), vis.view(N, 1, H, W)], 1)
        return out + self.context(inp).permute(0, 2, 3, 1).reshape(N, H * W * k)

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
            sel = self.phase == p
            x[:, sel] = self.likelihood.sample(self.phase_out(out, x, p), gen)[:, sel]
        return x
