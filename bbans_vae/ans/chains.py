"""Coding many images with a VAE: independent chains, batched network calls, exact accounting.

Image i goes to chain i % C at position i // C. Round t codes images t*C .. t*C+C-1, one per
chain, so every network call is a batch over the chains active in that round; decoding runs the
rounds backwards and feeds the networks exactly the same batches (docs/DESIGN.md, chain layout). Consecutive images
never share a chain's latent bits in a way that correlates them within one lane: each chain is
its own ANS stack.

Starting a chain: a chain starts empty. While a chain holds too few bits for the posterior pop
(fewer than 24 bits per latent plus 64 would be a sure-safe amount), the encoder trial-pops on a
clone; if the clone runs empty, that image is coded *plain* (z = the most probable posterior
bucket, no bits back) and its index is recorded in the container. The bits not got back on
plain images are reported as `initial_bits`: the one-time cost of starting chains. No pop ever
reads from an empty coder, and decoding returns every chain to empty (its starting state).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import constriction
import numpy as np
import torch

from ..errors import ContainerError
from ..models import VAE
from ..models.likelihoods import table_log2_prob
from .codecs import (AnsCoder, Bernoulli, Categorical, Codec, LatentBuckets, Message, QuantizedGaussian,
                    Uniform, bits_back)

PIXEL_CODECS = {"bernoulli": Bernoulli, "categorical": Categorical, "quantized_gaussian": QuantizedGaussian}
DEFAULT_LATENT_BITS = 8  # measured best rate for mlp-paper (k=6..12), see README
_CAT = constriction.stream.model.Categorical(perfect=False)  # the posterior's family


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Network calls inside coding run on one thread: batches are small (one image per chain),
    threads only add contention, and the thread count cannot then change the numbers (docs/DESIGN.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ChainLayout:
    """Which image goes where. Pure function of (n_images, n_chains)."""

    n_images: int
    n_chains: int

    @property
    def n_rounds(self) -> int:
        return -(-self.n_images // self.n_chains)

    def round_images(self, t: int) -> np.ndarray:
        return np.arange(t * self.n_chains, min((t + 1) * self.n_chains, self.n_images))


@dataclass
class Encoded:
    chain_words: list[np.ndarray]          # per chain, uint32 words (AnsCoder.get_compressed())
    plain_images: list[int]                # images coded without bits-back
    ideal_bits: np.ndarray                 # (N,) -log2 p(x|z) - log2 p(z) + log2 q(z|x), z used
    initial_bits: float                    # bits not got back on plain images
    payload_bits: int                      # sum of the chains' valid bits

    @property
    def ideal_bits_total(self) -> float:
        return float(self.ideal_bits.sum())


class FloatBackend:
    """Where the coder's distribution parameters come from: the float32 networks on this machine.

    A backend has three jobs, each a pure function of its batch (docs/DESIGN.md, determinism):
        posterior_probs(x)  (B, H, W) symbols -> (B, D, 2^k) float64 bucket masses of q(z|x)
        pixel_params(z_idx) (B, D) bucket indices -> the pixel codec's float64 parameters
        pixel_log2_prob(params, x) -> (B,) log2 p(x|z) as the coder sees it (for accounting)
    and a `pixel_family` naming the codec in PIXEL_CODECS. Other backends (an exact integer
    path, posterior refinement) implement the same three.

    A context model (`n_phases` > 1) replaces pixel_params by two calls:
        decoder_out(z_idx)            (B, D) -> the decoder's output (opaque, kept for the round)
        phase_params(out, x_vis, p)   -> codec parameters for all pixels, valid for phase p;
                                         reads only the pixels of phases < p of x_vis (B, P)
    """

    path = "float32"

    def __init__(self, model: VAE, latent_bits: int):
        self.model = model
        self.buckets = LatentBuckets(latent_bits)
        self.latent_dim = model.cfg.latent_dim
        self.pixel_family = model.likelihood.coder_family
        self.n_phases = model.n_phases
        self.phase = model.phase.numpy() if self.n_phases > 1 else None          # (P,) phase per pixel

    def decoder_out(self, z_idx: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.decode(self.buckets.values(z_idx))                   # (B, P*k)

    def phase_params(self, out: torch.Tensor, x_vis: np.ndarray, phase: int):
        with torch.inference_mode():
            o = self.model.phase_out(out, torch.from_numpy(x_vis).float(), phase)
            return self.model.likelihood.coder_params(o)

    def posterior_probs(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            mu, sigma = self.model.posterior(torch.from_numpy(x))                # (B, D) each
        return self.buckets.posterior_probs(mu, sigma)                             # (B, D, 2^k)

    def pixel_params(self, z_idx: np.ndarray):
        with torch.inference_mode():
            return self.model.pixel_coder_params(self.buckets.values(z_idx))     # (B, P[, 256])

    def pixel_log2_prob(self, params, x: np.ndarray) -> np.ndarray:
        return self.model.likelihood.coder_log2_prob(params, x)


class _Round:
    """The backend's codecs for one round, with what the accounting needs stashed.

    `plain` (lanes,) bool: lanes coded without bits-back. The encoder decides it (trial pops);
    the decoder is told it by the container.
    """

    def __init__(self, backend: FloatBackend, plain: np.ndarray, decide_plain: bool):
        self.backend = backend
        self.plain, self.decide_plain = plain, decide_plain
        self.D = backend.latent_dim
        self.n_buckets = backend.buckets.n
        self.safe_bits = 24 * self.D + 64
        self.q_probs: np.ndarray | None = None
        self.px_params = None
        self.z: np.ndarray | None = None                      # latents popped at encode
        self.codec = bits_back(Uniform(self.n_buckets, self.D), self.likelihood, self.posterior)

    def likelihood(self, z_idx: np.ndarray) -> Codec:
        if self.backend.n_phases > 1:
            return self.phased_likelihood(z_idx)
        self.px_params = self.backend.pixel_params(z_idx)
        return PIXEL_CODECS[self.backend.pixel_family](self.px_params)

    def phased_likelihood(self, z_idx: np.ndarray) -> Codec:
        """p(x|z) of a context model: phase p's pixels coded given phases < p.

        Push computes every phase's parameters from x with the pixels of phases >= p zeroed,
        exactly the array pop has when it reaches phase p, in the same batched call per phase;
        phases are pushed last-first so pop reads phase 0 first (ANS is a stack).
        """
        backend, phase = self.backend, self.backend.phase
        family = PIXEL_CODECS[backend.pixel_family]
        out = backend.decoder_out(z_idx)
        sels = [phase == p for p in range(backend.n_phases)]

        def visible(x: np.ndarray, p: int) -> np.ndarray:
            return np.where(phase < p, x, 0).astype(np.uint8)

        def keep(params_by_phase):  # assemble every pixel's params from its own phase (accounting)
            full = [np.array(a) for a in _as_tuple(params_by_phase[0])]
            for p, sel in enumerate(sels[1:], 1):
                for f, a in zip(full, _as_tuple(params_by_phase[p])):
                    f[:, sel] = a[:, sel]
            self.px_params = full[0] if len(full) == 1 else tuple(full)

        def push(msg: Message, x: np.ndarray) -> Message:
            params = [backend.phase_params(out, visible(x, p), p) for p in range(backend.n_phases)]
            for p in reversed(range(backend.n_phases)):
                family(_select(params[p], sels[p])).push(msg, np.ascontiguousarray(x[:, sels[p]]))
            keep(params)
            return msg

        def pop(msg: Message) -> tuple[Message, np.ndarray]:
            x = np.zeros((len(msg), len(phase)), np.uint8)
            params = []
            for p in range(backend.n_phases):
                params.append(backend.phase_params(out, x, p))
                msg, xs = family(_select(params[p], sels[p])).pop(msg)
                x[:, sels[p]] = xs
            keep(params)
            return msg, x

        return Codec(push, pop)

    def posterior(self, x: np.ndarray) -> Codec:
        probs = self.q_probs = self.backend.posterior_probs(x)

        def pop(msg: Message):
            z = probs.argmax(-1)                                  # plain lanes keep the mode
            for lane, coder in enumerate(msg):
                if self.plain[lane]:
                    continue
                if self.decide_plain and coder.num_valid_bits() < self.safe_bits:
                    trial = coder.clone()
                    trial.decode(_CAT, probs[lane])
                    if trial.is_empty():                          # would read past the stack
                        self.plain[lane] = True
                        continue
                z[lane] = coder.decode(_CAT, probs[lane])
            self.z = z
            return msg, z

        def push(msg: Message, z: np.ndarray):
            for lane, coder in enumerate(msg):
                if not self.plain[lane]:
                    coder.encode_reverse(z[lane].astype(np.int32), _CAT, probs[lane])
            return msg

        return Codec(push, pop)

    def ideal_bits(self, x: np.ndarray, z_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per lane: ideal net bits, and -log2 q(z|x) (the bits a plain image does not get back)."""
        flat = x.reshape(x.shape[0], -1)
        neg_log_px = -self.backend.pixel_log2_prob(self.px_params, flat)
        neg_log_q = -table_log2_prob(self.q_probs, z_idx)
        return neg_log_px + self.backend.buckets.bits * self.D - neg_log_q, neg_log_q


def _as_tuple(params) -> tuple:
    return params if isinstance(params, tuple) else (params,)


def _select(params, sel: np.ndarray):
    """Codec parameters of the pixels in `sel` (P,) bool: same structure, (B, n_sel) arrays."""
    picked = tuple(np.ascontiguousarray(a[:, sel]) for a in _as_tuple(params))
    return picked if isinstance(params, tuple) else picked[0]


def make_backend(model: VAE, latent_bits: int, backend=None):
    return backend if backend is not None else FloatBackend(model, latent_bits)


def encode_images(model: VAE, images: np.ndarray, n_chains: int, latent_bits: int = DEFAULT_LATENT_BITS,
                  progress: Callable[[int], None] | None = None, backend=None) -> Encoded:
    """Code (N, H, W) uint8 pixels ({0,1} for binary models, 0..255 for 8-bit) into C chains.

    `backend` (default FloatBackend(model, latent_bits)) supplies the distributions.
    """
    N = images.shape[0]
    layout = ChainLayout(N, max(1, min(n_chains, N)))
    backend = make_backend(model, latent_bits, backend)
    chains = [AnsCoder() for _ in range(layout.n_chains)]
    ideal = np.zeros(N)
    plain_images: list[int] = []
    initial_bits = 0.0
    model.eval()
    with single_thread():
        for t in range(layout.n_rounds):
            idx = layout.round_images(t)
            x = np.ascontiguousarray(images[idx])
            rnd = _Round(backend, np.zeros(len(idx), bool), decide_plain=True)
            rnd.codec.push(chains[:len(idx)], x.reshape(len(idx), -1))
            bits, neg_log_q = rnd.ideal_bits(x, rnd.z)
            ideal[idx] = bits
            plain_images.extend(int(i) for i in idx[rnd.plain])
            initial_bits += float(neg_log_q[rnd.plain].sum())
            if progress:
                progress(len(idx))
    return Encoded(
        chain_words=[c.get_compressed() for c in chains],
        plain_images=sorted(plain_images),
        ideal_bits=ideal,
        initial_bits=initial_bits,
        payload_bits=sum(int(c.num_valid_bits()) for c in chains),
    )


def decode_images(model: VAE, chain_words: list[np.ndarray], n_images: int, image_shape: tuple,
                  plain_images: list[int], latent_bits: int = DEFAULT_LATENT_BITS,
                  progress: Callable[[int], None] | None = None, backend=None) -> np.ndarray:
    """Inverse of `encode_images`: (N, H, W) uint8 symbols. Every chain must end empty.

    Corrupt input is caught as early as possible: a chain that runs dry before its first image
    or holds bits after it raises ContainerError (so a hostile image count cannot make us loop).
    """
    layout = ChainLayout(n_images, len(chain_words))
    backend = make_backend(model, latent_bits, backend)
    try:
        chains = [AnsCoder(np.asarray(w, dtype=np.uint32)) for w in chain_words]
    except Exception as e:  # constriction rejects e.g. a zero last word
        raise ContainerError(f"corrupt payload: {e}") from None
    plain_set = np.zeros(n_images, bool)
    plain_set[np.asarray(plain_images, dtype=np.int64)] = True
    out = np.empty((n_images, *image_shape), np.uint8)
    model.eval()
    with single_thread():
        for t in reversed(range(layout.n_rounds)):
            idx = layout.round_images(t)
            rnd = _Round(backend, plain_set[idx].copy(), decide_plain=False)
            msg = chains[:len(idx)]
            if any(c.is_empty() for c in msg):
                raise ContainerError("corrupt payload: a chain ran out of data before its first image")
            msg, x = rnd.codec.pop(msg)
            out[idx] = x.reshape(len(idx), *image_shape)
            if progress:
                progress(len(idx))
    if not all(c.is_empty() for c in chains):
        raise ContainerError("corrupt payload: data left over after the last image")
    return out
