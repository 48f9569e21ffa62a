"""Multi-sample bits-back: coding with the importance-weighted bound (docs/DESIGN.md, BB-IS).

BB-IS (Ruan et al. 2021, "Improving Lossless Compression Rates via Monte Carlo Bits-Back
Coding") codes x at -log2 (1/K) sum_k w_k, w_k = p(x, z_k) / q(z_k|x), the IWAE bound, instead
of the -ELBO. Plain BB-IS pops K independent latents, so a chain needs K latents' worth of bits
before it can start. This is the *coupled* variant: the K latents come from one shared uniform
u (per latent dimension, COUPLING_BITS bits) shifted by k / K,

    z_k[d] = Q_d((u[d] + floor(k M / K)) mod M),   M = 2^COUPLING_BITS,

with Q_d the inverse CDF of q~ (q(z|x) quantised to integer frequencies F summing to M). Each
z_k is marginally q~, so (1/K) sum_k w_k stays an unbiased estimate of p(x) (stratified, so of
lower variance). Extended space: proposal Q(u, j) = M^-D w_j / sum_k w_k; target
P(x, u, j) = (1/K) p(x, z_j) prod_d 1 / F_d(z_j) (u uniform among the values that shift j maps
into z_j's interval). log P - log Q = log (1/K) sum_k w_k: the IWAE bound, exactly.

Encoder, per lane:  pop u (uniform), pop j ~ w / sum w, push r = u_j - C(z_j) (uniform in
F(z_j)), push x with p(x|z_j), push z_j with the prior, push j (uniform in K).
Decoder, reversed:  pop j, pop z_j, pop x, pop r (u from r, j, z_j), push j ~ w / sum w, push u.

A chain must hold D * COUPLING_BITS + 24 + 64 bits before such a round, whatever K (the coupled
variant's point); lanes holding fewer code their image plain, as with K = 1.

Determinism: the weights decide the distribution of j, so they are computed identically at both
ends from bit-identical inputs: per-pixel probabilities (from the codec parameters by single IEEE
operations and the exact path's tables), log2 by table (`log2_1p`), rounded to fixed point
(2^-FIXED_BITS bits) and summed as integers; 2^d by table (`exp2_neg`) and ldexp. No numpy float
reduction and no libm call touches a coded number.
"""
from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from ..errors import ContainerError
from ..exact.tables import Lut
from .codecs import Message

COUPLING_BITS = 16
M = 1 << COUPLING_BITS
FIXED_BITS = 20                     # log-weights in units of 2^-20 bits (int64)
_CAT = constriction.stream.model.Categorical(perfect=False)
_UNIFORM = constriction.stream.model.Uniform()      # size given per symbol
_FLOOR = 2.0 ** -24                                  # the coder's smallest probability


def safe_bits(latent_dim: int) -> int:
    """Valid bits a chain needs for one coupled round (u, then j); fewer: the image is plain."""
    return latent_dim * COUPLING_BITS + 24 + 64


# ----------------------------------------------------------------------------- q~ and the coupling


def quantised_posterior(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, D, n) float64 bucket masses -> integer frequencies F (L, D, n) summing to M per row,
    and their cumulative sums C (L, D, n + 1). F = floor(q M), the rest to the most probable
    bucket; buckets may get 0 (never sampled, so never coded). Integer sums only."""
    f = np.floor(probs * float(M)).astype(np.int64)
    top = probs.argmax(-1)[..., None]
    rest = M - f.sum(-1, keepdims=True)
    np.put_along_axis(f, top, np.take_along_axis(f, top, -1) + rest, -1)
    c = np.zeros(f.shape[:-1] + (f.shape[-1] + 1,), np.int64)
    np.cumsum(f, -1, out=c[..., 1:])
    return f, c


def shifts(k: int) -> np.ndarray:
    return (np.arange(k, dtype=np.int64) * M) // k


def coupled_latents(u: np.ndarray, cum: np.ndarray, k: int) -> np.ndarray:
    """(L, D) uniforms in [0, M), C (L, D, n + 1) -> (L, K, D) bucket indices z_k = Q((u + s_k) mod M)."""
    uk = (u[:, :, None] + shifts(k)[None, None, :]) % M                       # (L, D, K)
    z = (cum[:, :, 1:-1, None] <= uk[:, :, None, :]).sum(2)                  # buckets below: integer count
    return np.ascontiguousarray(z.transpose(0, 2, 1))


# ----------------------------------------------------------------------------- portable log2 and 2^x


class _Tables:
    _luts: dict = {}

    @classmethod
    def get(cls, name: str) -> Lut:
        if name not in cls._luts:
            cls._luts[name] = Lut(name)
        return cls._luts[name]


def fixed_log2(p: np.ndarray) -> np.ndarray:
    """log2 p for p in (0, 1] as int64 in units of 2^-FIXED_BITS: frexp (exact), log2 of the
    mantissa by table, one rounding to fixed point; identical on every IEEE-754 machine."""
    m, e = np.frexp(p)                                                    # p = m 2^e, m in [0.5, 1)
    t = m * 2.0
    t -= 1.0                                                              # exact: in [0, 1)
    v = _Tables.get("log2_1p")(t)
    v += (e - 1).astype(np.float64)
    v *= float(1 << FIXED_BITS)
    return np.rint(v).astype(np.int64)


def fixed_exp2(d: np.ndarray) -> np.ndarray:
    """2^(d 2^-FIXED_BITS) for int64 d <= 0, by table and ldexp (float64, identical everywhere)."""
    n = d >> FIXED_BITS                                                   # floor
    frac = (d - (n << FIXED_BITS)).astype(np.float64) * (1.0 / (1 << FIXED_BITS))   # [0, 1), exact
    one_minus = np.subtract(1.0, frac)                                    # (0, 1], exact
    return np.ldexp(_Tables.get("exp2_neg")(one_minus), (n + 1).astype(np.int32))


def pixel_probs(family: str, params, x: np.ndarray) -> np.ndarray:
    """(B, P) probability of each pixel value x under the codec parameters, by single IEEE
    operations and the normal tail table (no libm), floored at the coder's 2^-24."""
    if family == "bernoulli":
        p = np.where(x == 1, params, np.subtract(1.0, params))
    elif family == "categorical":                                           # (B, P, 256) tables, ~normalised
        p = np.take_along_axis(params, x[..., None].astype(np.int64), -1)[..., 0]
    elif family == "quantized_gaussian":
        mean, std = params
        xf = x.astype(np.float64)
        lo = np.where(x == 0, -np.inf, xf - 0.5)
        hi = np.where(x == 255, np.inf, xf + 0.5)
        tail = _Tables.get("normal_tail")

        def g(e):                                                           # CDF(e) - [e >= mean]
            d = np.subtract(e, mean)
            t = np.abs(d)
            t /= std
            return np.copysign(tail(t), np.negative(d))

        p = g(hi) - g(lo)
        p += ((lo < mean) & (mean <= hi)).astype(np.float64)
    else:
        raise ValueError(f"unknown pixel family {family!r}")
    return np.minimum(np.maximum(p, _FLOOR), 1.0)


# ----------------------------------------------------------------------------- weights


@dataclass
class Weights:
    probs: np.ndarray           # (L, K) float64: the distribution of j handed to the coder
    log2_w: np.ndarray          # (L, K) float64 log2 p(x|z_k) p(z_k) / q~(z_k): accounting only


def weights(backend, pixel_codec, flat: np.ndarray, z: np.ndarray, freq: np.ndarray) -> Weights:
    """Importance weights of the K coupled latents z (L, K, D) of images flat (L, P).

    One batched decoder pass over the L*K latents (pixel context from the known x, as the
    encoder's pixel codec computes it); both ends call this with the same arrays."""
    L, K, D = z.shape
    x_rep = np.repeat(flat, K, axis=0)
    params = pixel_codec(backend, z.reshape(L * K, D), x_rep).params
    fam = backend.pixel_family
    log_px = fixed_log2(pixel_probs(fam, params, x_rep)).sum(-1).reshape(L, K)      # int64: exact sum
    fz = np.take_along_axis(freq[:, None, :, :], z[..., None], -1)[..., 0]          # (L, K, D) F(z_k)
    log_f = fixed_log2(fz.astype(np.float64) * (1.0 / M)).sum(-1)                   # log2 q~(z_k)
    lw = log_px - log_f
    probs = fixed_exp2(lw - lw.max(-1, keepdims=True))
    prior = -float(backend.buckets.bits * D)
    acc = backend.pixel_log2_prob(params, x_rep).reshape(L, K) + prior \
        - np.log2(fz * (1.0 / M)).sum(-1)
    return Weights(probs, acc)


def neg_log2_mean_weight(log2_w: np.ndarray) -> np.ndarray:
    """(L, K) -> (L,) -log2 (1/K) sum_k w_k: the code length the IWAE bound promises."""
    K = log2_w.shape[-1]
    return np.log2(K) - np.logaddexp2.reduce(log2_w, axis=-1)


# ----------------------------------------------------------------------------- one round


def _pick(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a (L, n, ...) rows picked per lane by idx (L, D) along axis 2 -> (L, D)."""
    return np.take_along_axis(a, idx[..., None], -1)[..., 0]


def push_lanes(backend, pixel_codec, msg: Message, flat: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Encode one image per lane (none plain) with the coupled K-sample bound; (L,) ideal bits."""
    L, D = len(msg), backend.latent_dim
    freq, cum = quantised_posterior(probs)
    sizes = np.full(D, M, np.int32)
    u = np.stack([c.decode(_UNIFORM, sizes) for c in msg]).astype(np.int64)
    z = coupled_latents(u, cum, k)
    w = weights(backend, pixel_codec, flat, z, freq)
    j = np.array([c.decode(_CAT, w.probs[lane][None])[0] for lane, c in enumerate(msg)], np.int64)
    zj = z[np.arange(L), j]                                                        # (L, D)
    uj = (u + shifts(k)[j][:, None]) % M
    lo, width = _pick(cum[..., :-1], zj), _pick(freq, zj)
    r = uj - lo
    for lane, c in enumerate(msg):
        sel = width[lane] > 1                                  # a width-1 interval holds r = 0: nothing to code
        c.encode_reverse(r[lane][sel].astype(np.int32), _UNIFORM, width[lane][sel].astype(np.int32))
    pixel_codec(backend, zj, flat).push(msg, flat)
    prior = constriction.stream.model.Uniform(backend.buckets.n)
    kmodel = constriction.stream.model.Uniform(k)
    for lane, c in enumerate(msg):
        c.encode_reverse(zj[lane].astype(np.int32), prior)
        c.encode_reverse(np.array([j[lane]], np.int32), kmodel)
    return neg_log2_mean_weight(w.log2_w)


def pop_lanes(backend, pixel_codec, msg: Message, k: int) -> np.ndarray:
    """Inverse of `push_lanes`: (L, P) pixel symbols."""
    L, D = len(msg), backend.latent_dim
    prior = constriction.stream.model.Uniform(backend.buckets.n)
    kmodel = constriction.stream.model.Uniform(k)
    j = np.array([c.decode(kmodel, 1)[0] for c in msg], np.int64)
    zj = np.stack([c.decode(prior, D) for c in msg]).astype(np.int64)
    msg, flat = pixel_codec(backend, zj).pop(msg)
    freq, cum = quantised_posterior(backend.posterior_probs(flat))
    width = _pick(freq, zj)
    if np.any(width == 0):
        raise ContainerError("corrupt payload: a latent outside its posterior's support")
    r = np.zeros((L, D), np.int64)
    for lane, c in enumerate(msg):
        sel = width[lane] > 1
        r[lane, sel] = c.decode(_UNIFORM, width[lane][sel].astype(np.int32))
    u = (_pick(cum[..., :-1], zj) + r - shifts(k)[j][:, None]) % M
    z = coupled_latents(u, cum, k)
    w = weights(backend, pixel_codec, flat, z, freq)
    sizes = np.full(D, M, np.int32)
    for lane, c in enumerate(msg):
        c.encode_reverse(np.array([j[lane]], np.int32), _CAT, w.probs[lane][None])
        c.encode_reverse(u[lane].astype(np.int32), _UNIFORM, sizes)
    return flat
