"""Pixel likelihoods p(x|z): the training loss (`nll_bits`, differentiable) and the coder's
parameters (`coder_params`, float64) from the same decoder output."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig

LN2 = math.log(2.0)

# The decoder output -> pixel parameter transforms. The exact coder path (exact/backend.py)
# evaluates the same transforms with table lookups; both read these constants.
MEAN_HALF_RANGE = 127.5           # mean = 127.5 + 127.5 * o: o in [-1, 1] spans 0..255
GAUSSIAN_LOG_STD_RANGE = (-5.0, 6.0)
LOGISTIC_LOG_SCALE_RANGE = (-4.0, 6.0)
SCALE_UNIT = 16.0                 # std (scale) = exp(clamped output) * 16: exp(c + ln 16)


def table_log2_prob(table: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """(B, n, K) unnormalised tables, (B, n) symbols -> (B,) summed log2 probabilities, as the
    coder sees them (it gives every symbol at least 2^-24)."""
    p = np.take_along_axis(table, symbols[..., None].astype(np.int64), -1)[..., 0] / table.sum(-1)
    return np.log2(np.maximum(p, 2.0 ** -24)).sum(-1)



class BernoulliPixels:
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)). Decoder output: (B, P) logits."""

    params_per_pixel = 1
    coder_family = "bernoulli"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def coder_log2_prob(self, p_one: np.ndarray, x: np.ndarray) -> np.ndarray:
        p = np.maximum(np.where(x == 1, p_one, 1.0 - p_one), 2.0 ** -24)
        return np.log2(p).sum(-1)

    def nll_bits(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # x: (B, P) float in {0,1}; out: (B, P) -> (B,)
        return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1) / LN2

    def coder_params(self, out: torch.Tensor) -> np.ndarray:
        # (B, P) probabilities of a 1, float64 (the coder's input format)
        return torch.sigmoid(out.double()).detach().numpy()

    def sample(self, out: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(out), generator=gen)


class GaussianPixels:
    """Discretized Gaussian over 0..255, end bins take the tails (= constriction QuantizedGaussian).

    Decoder output: (B, P * 2) = mean (pixel units, via 127.5 + 127.5 * o) and log-std.
    Coded natively by constriction from (mean, std): fast, and no float tables.
    """

    params_per_pixel = 2
    coder_family = "quantized_gaussian"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def _split(self, out: torch.Tensor):
        out = out.view(out.shape[0], -1, 2)
        mean = MEAN_HALF_RANGE + MEAN_HALF_RANGE * out[..., 0]
        lo, hi = GAUSSIAN_LOG_STD_RANGE
        std = torch.exp(out[..., 1].clamp(min=lo, max=hi) + math.log(SCALE_UNIT))   # (B, P)
        return mean, std

    @staticmethod
    def _mass(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """P(x) for integer x in 0..255, as a difference of the two smaller tails (precise far
        from the mean; values below 2^-24 do not matter since the coder floors there)."""
        a = (x - 0.5 - mean) / std
        b = (x + 0.5 - mean) / std
        a = torch.where(x > 0, a, torch.full_like(a, -1e4))   # end bins reach into the tails;
        b = torch.where(x < 255, b, torch.full_like(b, 1e4))   # finite, so gradients stay finite
        flip = (a + b) > 0
        lo = torch.where(flip, -b, a)                           # mirror to the left tail
        hi = torch.where(flip, -a, b)
        return torch.special.ndtr(hi) - torch.special.ndtr(lo)

    def nll_bits(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log2 of (P(x) + 2^-24): the coder never spends more than 24 bits on a pixel."""
        mean, std = self._split(out)
        return -torch.log2(self._mass(x, mean, std) + 2.0 ** -24).sum(-1)

    def coder_params(self, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self._split(out.detach())
        return mean.double().numpy(), std.double().numpy()

    def coder_log2_prob(self, params, x: np.ndarray) -> np.ndarray:
        mean, std = (torch.from_numpy(p) for p in params)
        p = self._mass(torch.from_numpy(x).double(), mean, std).clamp(min=2.0 ** -24)
        return torch.log2(p).sum(-1).numpy()           # the coder gives every value >= 2^-24

    def sample(self, out: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        mean, std = self._split(out)
        return torch.round(mean + std * torch.randn(mean.shape, generator=gen, device=mean.device)).clamp(0, 255)


class LogisticPixels:
    """Discretized logistic mixture over 0..255 (PixelCNN++), end bins take the tails.

    Decoder output: (B, P, 3K) = K mixture logits, K means (pixel units), K log-scales.
    """

    coder_family = "categorical"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.k = cfg.mixtures
        self.params_per_pixel = 3 * self.k

    def coder_log2_prob(self, table: np.ndarray, x: np.ndarray) -> np.ndarray:
        return table_log2_prob(table, x)

    def _split(self, out: torch.Tensor):
        B = out.shape[0]
        out = out.view(B, -1, 3, self.k)
        logit_w = out[:, :, 0]                                  # (B, P, K)
        mean = MEAN_HALF_RANGE + MEAN_HALF_RANGE * out[:, :, 1]      # (B, P, K) pixel units
        lo, hi = LOGISTIC_LOG_SCALE_RANGE
        log_s = out[:, :, 2].clamp(min=lo, max=hi) + math.log(SCALE_UNIT)  # (B, P, K)
        return logit_w, mean, log_s

    def nll_bits(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # x: (B, P) float in 0..255; out: (B, P*3K) -> (B,)
        logit_w, mean, log_s = self._split(out)
        inv_s = torch.exp(-log_s)
        xk = x.unsqueeze(-1)
        a = (xk - 0.5 - mean) * inv_s                           # lower edge, standardised
        b = (xk + 0.5 - mean) * inv_s                           # upper edge
        lo = torch.where(xk > 0, -F.softplus(a), torch.zeros_like(a))
        hi = torch.where(xk < 255, -F.softplus(-b), torch.zeros_like(b))
        # log(sigmoid(b) - sigmoid(a)) = -softplus(a) - softplus(-b) + log(1 - exp(-(b - a)))
        width = torch.where((xk > 0) & (xk < 255), torch.log(-torch.expm1(-inv_s)), torch.zeros_like(a))
        logp = lo + hi + width                                  # (B, P, K)
        logp = torch.logsumexp(logp + F.log_softmax(logit_w, -1), -1)
        return -logp.sum(-1) / LN2

    def coder_params(self, out: torch.Tensor) -> np.ndarray:
        """(B, P, 256) float64 probability tables (normalised to ~1e-6; the coder rescales).

        Bin [a, b] has mass sigmoid(b) - sigmoid(a) = sigmoid(b) * sigmoid(-a) * (1 - e^(a-b)):
        a product of positive factors, so no cancellation in the tails (float32 is enough).
        The end bins reach to -inf / +inf, where the last factor is 1.
        """
        logit_w, mean, log_s = self._split(out.float())
        inv_s = torch.exp(-log_s).unsqueeze(-1)                              # (B, P, K, 1)
        edges = torch.arange(0, 255, dtype=torch.float32) + 0.5             # (255,) inner edges
        z = (edges - mean.unsqueeze(-1)) * inv_s                             # (B, P, K, 255)
        B, P, K, _ = z.shape
        ones = z.new_ones(B, P, K, 1)
        below = torch.cat([torch.sigmoid(z), ones], -1)                      # sigmoid(b) per bin
        above = torch.cat([ones, torch.sigmoid(-z)], -1)                     # sigmoid(-a) per bin
        width = -torch.expm1(-inv_s).expand(B, P, K, 256).clone()            # 1 - e^(a-b)
        width[..., 0] = 1.0
        width[..., -1] = 1.0
        w = torch.softmax(logit_w, -1).unsqueeze(-1)                         # (B, P, K, 1)
        return (below * above * width * w).sum(2).double().detach().numpy()

    def sample(self, out: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        logit_w, mean, log_s = self._split(out)
        comp = torch.multinomial(torch.softmax(logit_w, -1).reshape(-1, self.k), 1, generator=gen)
        comp = comp.view(*logit_w.shape[:2], 1)
        m = mean.gather(-1, comp).squeeze(-1)
        s = torch.exp(log_s.gather(-1, comp).squeeze(-1))
        u = torch.rand(m.shape, generator=gen, device=m.device).clamp(1e-6, 1 - 1e-6)
        return torch.round(m + s * (torch.log(u) - torch.log1p(-u))).clamp(0, 255)


LIKELIHOODS = {"bernoulli": BernoulliPixels, "gaussian": GaussianPixels, "logistic": LogisticPixels}
