"""VAE architectures, pixel likelihoods, and the one negative-ELBO-in-bits function.

Every quantity is in bits (log base 2). The model meets the coder through two small hooks:
`VAE.posterior(x) -> (mu, sigma)` and `VAE.pixel_coder_params(z)`, which give the parameters
the ANS codecs in `codec.py` turn into integer distributions.

References
- Kingma & Welling, Auto-Encoding Variational Bayes (2014): the VAE and the reparameterised ELBO.
- Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016): the IWAE bound.
- Salimans et al., PixelCNN++ (2017): the discretized logistic (mixture) likelihood.
- The discretized Gaussian is exactly constriction's `QuantizedGaussian(0, 255)`: bins of width 1,
  the end bins take the tails (measured), so the coder evaluates it natively, with no tables.
- The gaps paper's setting (`mlp-paper`): 784-500-500-500-10 ReLU MLP, softplus std, N(0, I).

Presets (one table, `PRESETS`; parameter counts from `count_parameters`, 28x28 images):

| preset          | encoder / decoder     | z  | likelihood                | params   |
|-----------------|-----------------------|----|---------------------------|----------|
| mlp-paper       | 3 x 500 ReLU          | 10 | Bernoulli                 | 1,802,804|
| mlp-bbans-bin   | 1 x 100 ReLU          | 40 | Bernoulli                 |   169,864|
| mlp-bin         | 2 x 500 ReLU          | 32 | Bernoulli                 | 1,334,848|
| mlp-8bit        | 2 x 500 ReLU          | 32 | discretized Gaussian      | 1,727,632|
| mlp-8bit-logistic| 2 x 500 ReLU         | 32 | discretized logistic, K=1 | 2,120,416|
| mlp-8bit-mix    | 2 x 500 ReLU          | 32 | discretized logistic, K=3 | 4,477,120|
| mlp-bbans-8bit  | 1 x 200 ReLU          | 50 | discretized Gaussian      |   502,468|
| ctx-bin         | mlp-bin + context net | 32 | Bernoulli, 4 phases       | 1,345,025|
| ctx-8bit        | mlp-8bit + context net| 32 | discretized Gaussian, 4 ph| 1,738,130|

`ctx-*` (ContextVAE): the likelihood also reads already-coded neighbours in a 2x2 checkerboard
order (He et al., "Checkerboard Context Model for Efficient Learned Image Compression", CVPR
2021; PixelVAE, Gulrajani et al. 2017, for the idea of a local autoregressive VAE decoder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .errors import ModelError

LN2 = math.log(2.0)
SIGMA_FLOOR = 1e-5  # added to softplus(std) so q never collapses to a point


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an architecture. JSON-serialisable via `to_dict`."""

    arch: str = "mlp"
    image_shape: tuple = (28, 28)
    pixel_kind: str = "binary"          # "binary" (values {0,1}) or "8bit" (0..255)
    hidden: tuple = (500, 500, 500)
    latent_dim: int = 10
    likelihood: str = "bernoulli"       # "bernoulli" | "gaussian" | "logistic"
    mixtures: int = 1                   # logistic mixture components (likelihood == "logistic")
    context_channels: int = 0           # arch "ctx": channels of the pixel-context conv net

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["hidden"] = list(self.hidden)
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        try:
            cfg = ModelConfig(
                arch=str(d["arch"]),
                image_shape=tuple(int(v) for v in d["image_shape"]),
                pixel_kind=str(d["pixel_kind"]),
                hidden=tuple(int(v) for v in d["hidden"]),
                latent_dim=int(d["latent_dim"]),
                likelihood=str(d["likelihood"]),
                mixtures=int(d.get("mixtures", 1)),
                context_channels=int(d.get("context_channels", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model config is incomplete or malformed ({e!r})") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if self.pixel_kind not in ("binary", "8bit"):
            raise ModelError(f"pixel_kind must be 'binary' or '8bit', not {self.pixel_kind!r}")
        allowed = ("bernoulli",) if self.pixel_kind == "binary" else ("gaussian", "logistic")
        if self.likelihood not in allowed:
            raise ModelError(f"{self.pixel_kind} pixels need one of the likelihoods {allowed}, not {self.likelihood!r}")
        if not (1 <= self.latent_dim <= 4096) or not self.hidden or min(self.hidden) < 1:
            raise ModelError("latent_dim must be in 1..4096 and hidden sizes positive")
        if len(self.image_shape) != 2 or min(self.image_shape) < 1 or self.n_pixels > 1 << 20:
            raise ModelError(f"image_shape must be (H, W) with H*W <= 2^20, got {self.image_shape}")
        if not (1 <= self.mixtures <= 16):
            raise ModelError("mixtures must be in 1..16")
        if (self.arch == "ctx") != (self.context_channels > 0) or self.context_channels > 512:
            raise ModelError("context_channels must be in 1..512 for arch 'ctx' and 0 otherwise")
        if self.arch == "ctx" and self.likelihood == "logistic":
            raise ModelError("arch 'ctx' supports the bernoulli and gaussian likelihoods")

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def levels(self) -> int:
        return 2 if self.pixel_kind == "binary" else 256


PRESETS: dict[str, tuple[ModelConfig, str]] = {
    "mlp-paper": (ModelConfig(hidden=(500, 500, 500), latent_dim=10),
                  "gaps paper setting: 3x500 ReLU MLP, z=10, Bernoulli"),
    "mlp-bbans-bin": (ModelConfig(hidden=(100,), latent_dim=40),
                      "BB-ANS paper binary setting: 784-100-40, Bernoulli"),
    "mlp-bin": (ModelConfig(hidden=(500, 500), latent_dim=32),
                "default binary model: 2x500 ReLU, z=32, Bernoulli"),
    "mlp-8bit": (ModelConfig(pixel_kind="8bit", likelihood="gaussian", hidden=(500, 500), latent_dim=32),
                 "default 8-bit model: 2x500 ReLU, z=32, discretized Gaussian"),
    "mlp-8bit-logistic": (ModelConfig(pixel_kind="8bit", likelihood="logistic", hidden=(500, 500), latent_dim=32),
                          "2x500 ReLU, z=32, discretized logistic (table-coded: slower)"),
    "mlp-8bit-mix": (ModelConfig(pixel_kind="8bit", likelihood="logistic", hidden=(500, 500), latent_dim=32,
                                 mixtures=3),
                     "2x500 ReLU, z=32, 3-component discretized logistic mixture"),
    "mlp-bbans-8bit": (ModelConfig(pixel_kind="8bit", likelihood="gaussian", hidden=(200,), latent_dim=50),
                       "BB-ANS paper 8-bit size: 784-200-50 (discretized Gaussian instead of beta-binomial)"),
    "ctx-bin": (ModelConfig(arch="ctx", hidden=(500, 500), latent_dim=32, context_channels=32),
                "mlp-bin + checkerboard pixel context (2 conv3x3 layers, 32 channels), Bernoulli"),
    "ctx-8bit": (ModelConfig(arch="ctx", pixel_kind="8bit", likelihood="gaussian", hidden=(500, 500),
                             latent_dim=32, context_channels=32),
                 "mlp-8bit + checkerboard pixel context (2 conv3x3 layers, 32 channels), discretized Gaussian"),
}


def preset_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ModelError(f"unknown architecture preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name][0]


# ----------------------------------------------------------------------------- likelihoods


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
        mean = 127.5 + 127.5 * out[..., 0]
        std = torch.exp(out[..., 1].clamp(min=-5.0, max=6.0) + math.log(16.0))   # (B, P)
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
        return torch.round(mean + std * torch.randn(mean.shape, generator=gen)).clamp(0, 255)


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
        p = np.take_along_axis(table, x[..., None].astype(np.int64), -1)[..., 0] / table.sum(-1)
        return np.log2(np.maximum(p, 2.0 ** -24)).sum(-1)

    def _split(self, out: torch.Tensor):
        B = out.shape[0]
        out = out.view(B, -1, 3, self.k)
        logit_w = out[:, :, 0]                                  # (B, P, K)
        mean = 127.5 + 127.5 * out[:, :, 1]                     # (B, P, K) pixel units
        log_s = out[:, :, 2].clamp(min=-4.0, max=6.0) + math.log(16.0)  # (B, P, K)
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
        u = torch.rand(m.shape, generator=gen).clamp(1e-6, 1 - 1e-6)
        return torch.round(m + s * (torch.log(u) - torch.log1p(-u))).clamp(0, 255)


LIKELIHOODS = {"bernoulli": BernoulliPixels, "gaussian": GaussianPixels, "logistic": LogisticPixels}


# ----------------------------------------------------------------------------- networks


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
        z = torch.randn(n, self.cfg.latent_dim, generator=gen)
        return self.sample_given(z, gen).view(n, *self.cfg.image_shape)


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
    that model). Coding runs the phases in order, each one batched network call (coding.py).
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


ARCHITECTURES = {"mlp": VAE, "ctx": ContextVAE}


def build_model(cfg: ModelConfig) -> VAE:
    cfg.validate()
    return ARCHITECTURES[cfg.arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- objectives


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
              chunk: int = 250) -> torch.Tensor:
    """Importance-weighted estimate of -log2 p(x) with k samples, (B,). Upper bound in expectation."""
    mu, sigma = model.posterior(x)
    xf = model.flat_pixels(x)
    B, D = mu.shape
    logws = []
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        eps = torch.randn(m, B, D, generator=gen)
        z = mu + sigma * eps                                            # (m, B, D)
        xr = xf.repeat(m, 1)
        nll = model.likelihood.nll_bits(xr, model.pixel_out(z.view(m * B, D), xr)).view(m, B) * LN2
        log_prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1) - torch.log(sigma).sum(-1)
        logws.append(-nll + log_prior - log_q)
    logw = torch.cat(logws, 0)                                          # (k, B)
    return -(torch.logsumexp(logw, 0) - math.log(k)) / LN2
