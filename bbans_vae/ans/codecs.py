"""Codecs on constriction's ANS stack: push/pop pairs and the bits-back combinator.

A *message* is a list of `constriction.stream.stack.AnsCoder` objects, one per independent
chain ("lane") taking part in a network batch. A `Codec` is a pair of functions

    push(msg, x) -> msg          pop(msg) -> (msg, x)

with `x` an array whose first axis runs over the lanes. `pop` inverts `push` exactly. The
coders are mutated in place and returned for readability. The integer CDF that constriction
builds (24-bit, leaky, `perfect=False`) from the float64 parameters is the single source of
truth: encoder and decoder must hand it bit-identical parameters (docs/DESIGN.md, determinism).

References: Townsend, Bird & Barber, "Practical lossless compression with latent variables
using bits back coding" (BB-ANS, ICLR 2019); craystack (codec = push/pop, equal-mass prior
buckets); constriction (Bamler, 2022).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import constriction
import torch

AnsCoder = constriction.stream.stack.AnsCoder
Message = list  # list[AnsCoder], one per lane

PRECISION_BITS = 24  # constriction's Python bindings: 24-bit probabilities, 32-bit words


@dataclass(frozen=True)
class Codec:
    """push(msg, x) -> msg and pop(msg) -> (msg, x). `params`: the distribution's parameters where
    the codec was built from known ones (accounting reads them from the codec, nothing is stashed)."""

    push: Callable[[Message, np.ndarray], Message]
    pop: Callable[[Message], tuple[Message, np.ndarray]]
    params: Any = None


def _family_codec(family, *params: np.ndarray) -> Codec:
    """Codec over (lanes, n) symbols; params[j] has shape (lanes, n, ...) (float64)."""

    def push(msg: Message, symbols: np.ndarray) -> Message:
        for lane, coder in enumerate(msg):
            coder.encode_reverse(symbols[lane].astype(np.int32, copy=False), family,
                                 *(p[lane] for p in params))
        return msg

    def pop(msg: Message) -> tuple[Message, np.ndarray]:
        return msg, np.stack([coder.decode(family, *(p[lane] for p in params))
                              for lane, coder in enumerate(msg)])

    return Codec(push, pop, params[0] if len(params) == 1 else params)


def Categorical(probs: np.ndarray) -> Codec:
    """probs: (lanes, n, K) float64, each row normalisable. Symbols in 0..K-1."""
    if probs.dtype != np.float64:
        raise TypeError("Categorical tables must be float64: the dtype changes the quantisation")
    return _family_codec(constriction.stream.model.Categorical(perfect=False), probs)


def Bernoulli(p_one: np.ndarray) -> Codec:
    """p_one: (lanes, n) float64 probability of a 1. Symbols in {0, 1}."""
    if p_one.dtype != np.float64:
        raise TypeError("Bernoulli probabilities must be float64")
    return _family_codec(constriction.stream.model.Bernoulli(perfect=False), p_one)


def QuantizedGaussian(params: tuple[np.ndarray, np.ndarray], lo: int = 0, hi: int = 255) -> Codec:
    """Integers lo..hi, Gaussian(mean, std) mass per unit bin, end bins take the tails.

    params: (mean, std), each (lanes, n) float64. constriction evaluates the CDF in Rust.
    """
    mean, std = params
    if mean.dtype != np.float64 or std.dtype != np.float64:
        raise TypeError("QuantizedGaussian parameters must be float64")
    return _family_codec(constriction.stream.model.QuantizedGaussian(lo, hi), mean, std)


def Uniform(n_symbols: int, n: int) -> Codec:
    """n i.i.d. uniform symbols in 0..n_symbols-1 per lane (the prior over latent buckets)."""
    model = constriction.stream.model.Uniform(n_symbols)

    def push(msg: Message, symbols: np.ndarray) -> Message:
        for lane, coder in enumerate(msg):
            coder.encode_reverse(symbols[lane].astype(np.int32, copy=False), model)
        return msg

    def pop(msg: Message) -> tuple[Message, np.ndarray]:
        return msg, np.stack([coder.decode(model, n) for coder in msg])

    return Codec(push, pop)


@dataclass(frozen=True)
class Drawn:
    """What one bits-back push drew and coded with, per lane (returned, for accounting)."""

    z: np.ndarray              # the latents popped from q(z|x)
    posterior: Codec           # q(z|x) as coded
    likelihood: Codec          # p(x|z) as coded


@dataclass(frozen=True)
class BitsBack(Codec):
    """A bits-back codec; `push_drawn(msg, x) -> (msg, Drawn)` is `push` that also returns what it drew."""

    push_drawn: Callable[[Message, np.ndarray], tuple[Message, Drawn]] | None = None


def bits_back(prior: Codec, likelihood: Callable[[np.ndarray], Codec],
              posterior: Callable[[np.ndarray], Codec]) -> BitsBack:
    """BB-ANS: code x with p(x|z) p(z), taking back the bits of z ~ q(z|x) from the stack.

    Net length of a push: -log p(x|z) - log p(z) + log q(z|x) bits, the negative ELBO on average.
    """

    def push_drawn(msg: Message, x: np.ndarray) -> tuple[Message, Drawn]:
        q = posterior(x)
        msg, z = q.pop(msg)                     # sample z ~ q(z|x) by decoding: get bits back
        lik = likelihood(z)
        msg = lik.push(msg, x)
        return prior.push(msg, z), Drawn(z, q, lik)

    def push(msg: Message, x: np.ndarray) -> Message:
        return push_drawn(msg, x)[0]

    def pop(msg: Message) -> tuple[Message, np.ndarray]:
        msg, z = prior.pop(msg)
        msg, x = likelihood(z).pop(msg)
        return posterior(x).push(msg, z), x     # return the bits we borrowed

    return BitsBack(push, pop, push_drawn=push_drawn)


# ----------------------------------------------------------------------------- latents


class LatentBuckets:
    """2^k buckets per latent dim of equal mass 2^-k under N(0, 1); the prior is uniform.

    Bucket i spans [Phi^-1(i/2^k), Phi^-1((i+1)/2^k)]; its representative (fed to the decoder)
    is the prior median of the bucket, Phi^-1((i + 1/2)/2^k). The posterior over buckets is
    the mass of N(mu, sigma^2) in each bucket; constriction's leaky quantisation keeps every
    bucket codable. Larger k: closer to the continuous ELBO, bigger tables (2^k per dim).
    """

    def __init__(self, bits: int):
        if not 1 <= bits <= 16:
            raise ValueError("latent bucket bits must be in 1..16")
        self.bits = bits
        self.n = 1 << bits
        grid = torch.arange(self.n + 1, dtype=torch.float64) / self.n
        self.edges = torch.special.ndtri(grid)                             # (n+1,), +-inf at ends
        self.centers = torch.special.ndtri((torch.arange(self.n, dtype=torch.float64) + 0.5) / self.n)

    def posterior_probs(self, mu: torch.Tensor, sigma: torch.Tensor) -> np.ndarray:
        """(B, D) float32 mean/std -> (B, D, 2^k) float64 bucket masses.

        One ndtr call on -|s| gives the smaller tail at every edge, so masses are tail
        differences on both sides of the mean (full relative precision far from it), and
        1 - both tails for the bucket that holds the mean.
        """
        mu = mu.double().unsqueeze(-1)                                       # (B, D, 1)
        s = (self.edges - mu) / sigma.double().unsqueeze(-1)                 # (B, D, n+1)
        tail = torch.special.ndtr(s.abs_().neg_())                           # min(cdf, sf) per edge
        lo, hi = tail[..., :-1], tail[..., 1:]
        mass = (hi - lo).abs_()                                              # tail difference
        j = (torch.searchsorted(self.edges, mu) - 1).clamp_(0, self.n - 1)   # bucket holding mu
        mass.scatter_(-1, j, 1.0 - lo.gather(-1, j) - hi.gather(-1, j))
        return mass.clamp_(min=0.0).numpy()

    def values(self, idx: np.ndarray) -> torch.Tensor:
        """(B, D) bucket indices -> (B, D) float32 latent values for the decoder."""
        return self.centers[torch.from_numpy(np.asarray(idx, dtype=np.int64))].float()
