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

Codecs return what they produce: a round's posterior and pixel codecs carry the parameters they
were built from, `bits_back(...).push_drawn` returns the latents it drew, and `push_round`
returns the per-lane accounting; nothing is stored between calls.

Workers: chains are independent stacks, so contiguous groups of chains can be coded in separate
processes (`workers.py`). On a batch-invariant backend (the exact path) a lane's numbers do not
depend on the other lanes in its network batch, so every worker count writes the same words; the
float32 path always codes in one process (its numbers depend on the batch).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import constriction
import numpy as np
import torch

from ..errors import ContainerError
from ..models import VAE
from ..models.likelihoods import table_log2_prob
from .backends import Backend, FloatBackend
from .codecs import (AnsCoder, Bernoulli, BitsBack, Categorical, Codec, Message, QuantizedGaussian, Uniform,
                     bits_back)
from . import importance
from .workers import run_jobs, run_team_jobs, shared_array

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


# ----------------------------------------------------------------------------- codecs of a round


def posterior_codec(probs: np.ndarray, plain: np.ndarray) -> Codec:
    """q(z|x) over latent buckets, probs (lanes, D, 2^k). Lanes in `plain` (lanes,) bool are coded
    without bits back: their pop reads nothing and gives the most probable bucket, their push
    writes nothing."""

    def pop(msg: Message) -> tuple[Message, np.ndarray]:
        z = probs.argmax(-1)
        for lane, coder in enumerate(msg):
            if not plain[lane]:
                z[lane] = coder.decode(_CAT, probs[lane])
        return msg, z

    def push(msg: Message, z: np.ndarray) -> Message:
        for lane, coder in enumerate(msg):
            if not plain[lane]:
                coder.encode_reverse(z[lane].astype(np.int32), _CAT, probs[lane])
        return msg

    return Codec(push, pop, probs)


def starved_lanes(msg: Message, probs: np.ndarray, safe_bits: int) -> np.ndarray:
    """(lanes,) bool: lanes whose coder cannot give back a posterior sample yet (a trial pop on a
    clone would read past the stack). Coders holding >= safe_bits are skipped without a trial."""
    plain = np.zeros(len(msg), bool)
    for lane, coder in enumerate(msg):
        if coder.num_valid_bits() < safe_bits:
            trial = coder.clone()
            trial.decode(_CAT, probs[lane])
            plain[lane] = trial.is_empty()
    return plain


def pixel_codec(backend: Backend, z_idx: np.ndarray, x: np.ndarray | None = None) -> Codec:
    """p(x|z) over (lanes, P) pixel symbols; a context model codes phase p given phases < p.

    Given x (the encoder knows it), every phase's parameters are computed up front from x with
    the pixels of phases >= p zeroed, exactly the array pop has when it reaches phase p, in the
    same batched call per phase; the codec then carries every pixel's parameters (from its own
    phase) as `params`. Phases are pushed last-first so pop reads phase 0 first (ANS is a stack).
    """
    family = PIXEL_CODECS[backend.pixel_family]
    out = backend.decoder_out(z_idx)
    if backend.n_phases == 1:
        return family(backend.phase_params(out, None, 0))
    phase, n = backend.phase, backend.n_phases
    sels = [phase == p for p in range(n)]

    def all_phases(x: np.ndarray) -> list:
        return [backend.phase_params(out, np.where(phase < p, x, 0).astype(np.uint8), p) for p in range(n)]

    known = all_phases(x) if x is not None else None

    def push(msg: Message, x: np.ndarray) -> Message:
        by_phase = known if known is not None else all_phases(x)
        for p in reversed(range(n)):
            family(_select(by_phase[p], sels[p])).push(msg, np.ascontiguousarray(x[:, sels[p]]))
        return msg

    def pop(msg: Message) -> tuple[Message, np.ndarray]:
        x = np.zeros((len(msg), len(phase)), np.uint8)
        for p in range(n):
            msg, xs = family(_select(backend.phase_params(out, x, p), sels[p])).pop(msg)
            x[:, sels[p]] = xs
        return msg, x

    return Codec(push, pop, _assemble(known, sels) if known is not None else None)


def _as_tuple(params) -> tuple:
    return params if isinstance(params, tuple) else (params,)


def _select(params, sel: np.ndarray):
    """Codec parameters of the pixels in `sel` (P,) bool: same structure, (B, n_sel) arrays."""
    picked = tuple(np.ascontiguousarray(a[:, sel]) for a in _as_tuple(params))
    return picked if isinstance(params, tuple) else picked[0]


def _assemble(by_phase: list, sels: list[np.ndarray]):
    """Every pixel's parameters from its own phase's entry of `by_phase` (same structure)."""
    full = [np.array(a) for a in _as_tuple(by_phase[0])]
    for p, sel in enumerate(sels[1:], 1):
        for f, a in zip(full, _as_tuple(by_phase[p])):
            f[:, sel] = a[:, sel]
    return full[0] if len(full) == 1 else tuple(full)


def round_codec(backend: Backend, plain: np.ndarray, x: np.ndarray | None = None,
                probs: np.ndarray | None = None) -> BitsBack:
    """One round's BB-ANS codec over (lanes, P) images: uniform prior over buckets, p(x|z), q(z|x).

    The encoder passes the images x and their posterior `probs` (it needed them to choose the
    plain lanes); the decoder passes neither and computes q(z|x) once it has popped x.
    """
    prior = Uniform(backend.buckets.n, backend.latent_dim)
    return bits_back(prior,
                     likelihood=lambda z: pixel_codec(backend, z, x),
                     posterior=lambda xs: posterior_codec(backend.posterior_probs(xs) if probs is None else probs,
                                                          plain))


@dataclass
class RoundCode:
    """What encoding one round produced, per lane (the chains' words are in the coders)."""

    plain: np.ndarray                       # (lanes,) bool: coded without bits back
    ideal_bits: np.ndarray                  # (lanes,) -log2 p(x|z) - log2 p(z) + log2 q(z|x)
    neg_log2_q: np.ndarray                  # (lanes,) -log2 q(z|x): bits a plain lane does not get back


def push_round(backend: Backend, msg: Message, x: np.ndarray, importance_samples: int = 1,
               cheap_start: bool = False) -> RoundCode:
    """Push one image per lane, x (lanes, H, W) uint8, with bits back where the lane can pay.

    importance_samples K > 1: lanes holding enough bits for a coupled round are coded with the
    K-sample bound (`importance.py`). cheap_start: plain lanes code their latent at the precision
    that makes them shortest (`push_cheap_plain`). With either, plain and bits-back lanes are
    coded in separate network batches (the decoder knows them from the plain list); with neither,
    this is the original single-sample BB-ANS round (one batch, the golden files)."""
    flat = x.reshape(len(x), -1)
    if importance_samples == 1:
        probs = backend.posterior_probs(flat)
        plain = starved_lanes(msg, probs, 24 * backend.latent_dim + 64)
        if not cheap_start:
            return _push_elbo(backend, msg, flat, probs, plain)
    else:
        plain = np.array([c.num_valid_bits() < importance.safe_bits(backend.latent_dim) for c in msg], bool)
    code = RoundCode(plain, np.zeros(len(msg)), np.zeros(len(msg)))
    if plain.any():
        if cheap_start:
            # nothing is got back: the latent's bits (p D + log2(k + 1)) are the start cost
            total, latent = push_cheap_plain(backend, _lanes(msg, plain), flat[plain])
            code.ideal_bits[plain], code.neg_log2_q[plain] = total - latent, latent
        else:
            part = _push_elbo(backend, _lanes(msg, plain), flat[plain], backend.posterior_probs(flat[plain]),
                              np.ones(int(plain.sum()), bool))
            code.ideal_bits[plain], code.neg_log2_q[plain] = part.ideal_bits, part.neg_log2_q
    if not plain.all():
        rest = flat[~plain]
        probs = backend.posterior_probs(rest)
        if importance_samples == 1:
            code.ideal_bits[~plain] = _push_elbo(backend, _lanes(msg, ~plain), rest, probs,
                                                 np.zeros(len(rest), bool)).ideal_bits
        else:
            code.ideal_bits[~plain] = importance.push_lanes(backend, pixel_codec, _lanes(msg, ~plain), rest, probs,
                                                            importance_samples)
    return code


# ----------------------------------------------------------------------------- cheap chain starts


def _coarse_latents(z_fine: np.ndarray, latent_bits: int, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """(coarse indices at `precision` bits, the fine bucket the decoder sees): coarse bucket c of
    2^precision equal-mass buckets is fine buckets [c 2^s, (c+1) 2^s), s = latent_bits - precision;
    its representative is the middle fine bucket c 2^s + 2^(s-1) (the mode itself when s = 0)."""
    s = latent_bits - precision
    coarse = z_fine >> s
    return coarse, (coarse << s) + ((1 << s) >> 1)


def push_cheap_plain(backend: Backend, msg: Message, flat: np.ndarray) -> np.ndarray:
    """Code plain lanes (no bits to take back) with the latent precision p in 0..k that makes each
    shortest: -log2 p(x|z_p) + p D bits + log2(k + 1) for p itself, z_p = the posterior mode
    rounded to 2^p equal-mass buckets (p = 0: every dimension at the prior median). The choice
    is the encoder's alone (the decoder reads p), so it may use this machine's float sums.
    Pushes x, the coarse latent (uniform), then p; returns (lanes,) bits coded and (lanes,) of
    them spent on the latent (p D + log2(k + 1): the start cost, `initial_bits`)."""
    L, D, k = len(flat), backend.latent_dim, backend.buckets.bits
    mode = backend.posterior_probs(flat).argmax(-1)
    cands = np.stack([_coarse_latents(mode, k, p)[1] for p in range(k + 1)], 1)          # (L, k+1, D)
    cost = np.empty((L, k + 1))
    for p in range(k + 1):      # one precision at a time: memory of one pass (a photo: 1/(k+1) of all at once)
        params = pixel_codec(backend, cands[:, p], flat).params
        cost[:, p] = -backend.pixel_log2_prob(params, flat) + p * D
    best = cost.argmin(-1)
    z = cands[np.arange(L), best]
    pixel_codec(backend, z, flat).push(msg, flat)
    pmodel = constriction.stream.model.Uniform(k + 1)
    for lane, c in enumerate(msg):
        p = int(best[lane])
        if p:
            c.encode_reverse(_coarse_latents(mode[lane], k, p)[0].astype(np.int32),
                             constriction.stream.model.Uniform(1 << p))
        c.encode_reverse(np.array([p], np.int32), pmodel)
    return cost[np.arange(L), best] + np.log2(k + 1), best * D + np.log2(k + 1)


def pop_cheap_plain(backend: Backend, msg: Message) -> np.ndarray:
    """Inverse of `push_cheap_plain`: (lanes, P) pixel symbols."""
    D, k = backend.latent_dim, backend.buckets.bits
    pmodel = constriction.stream.model.Uniform(k + 1)
    z = np.zeros((len(msg), D), np.int64)
    for lane, c in enumerate(msg):
        p = int(c.decode(pmodel, 1)[0])
        coarse = c.decode(constriction.stream.model.Uniform(1 << p), D).astype(np.int64) if p else np.zeros(D, np.int64)
        s = k - p
        z[lane] = (coarse << s) + ((1 << s) >> 1)
    return pixel_codec(backend, z).pop(msg)[1]


def _lanes(msg: Message, sel: np.ndarray) -> Message:
    return [c for c, s in zip(msg, sel) if s]


def _push_elbo(backend: Backend, msg: Message, flat: np.ndarray, probs: np.ndarray, plain: np.ndarray) -> RoundCode:
    msg, drawn = round_codec(backend, plain, flat, probs).push_drawn(msg, flat)
    neg_log_px = -backend.pixel_log2_prob(drawn.likelihood.params, flat)
    neg_log_q = -table_log2_prob(probs, drawn.z)
    return RoundCode(plain, neg_log_px + backend.buckets.bits * backend.latent_dim - neg_log_q, neg_log_q)


def pop_round(backend: Backend, msg: Message, plain: np.ndarray, n_pixels: int,
              importance_samples: int = 1, cheap_start: bool = False) -> np.ndarray:
    """Inverse of `push_round` given which lanes were plain: (lanes, P) pixel symbols."""
    if importance_samples == 1 and not cheap_start:
        return round_codec(backend, plain).pop(msg)[1]
    x = np.zeros((len(msg), n_pixels), np.uint8)
    if not plain.all():
        rest = _lanes(msg, ~plain)
        x[~plain] = (round_codec(backend, np.zeros(len(rest), bool)).pop(rest)[1] if importance_samples == 1 else
                     importance.pop_lanes(backend, pixel_codec, rest, importance_samples))
    if plain.any():
        first = _lanes(msg, plain)
        x[plain] = (pop_cheap_plain(backend, first) if cheap_start else
                    round_codec(backend, np.ones(len(first), bool)).pop(first)[1])
    return x


# ----------------------------------------------------------------------------- many images


def chain_groups(n_chains: int, workers: int) -> list[tuple[int, int]]:
    """Split chains 0..C-1 into at most `workers` contiguous, near-equal groups [c0, c1)."""
    k = max(1, min(workers, n_chains))
    bounds = [round(i * n_chains / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def _group_rounds(layout: ChainLayout, c0: int, c1: int) -> Iterator[tuple[int, np.ndarray]]:
    """(round, image indices) of chains c0..c1-1 in each round where they code an image."""
    for t in range(layout.n_rounds):
        idx = np.arange(t * layout.n_chains + c0, min(t * layout.n_chains + c1, layout.n_images))
        if len(idx):
            yield t, idx


def _group_images(layout: ChainLayout, c0: int, c1: int) -> np.ndarray:
    """Indices of the images chains c0..c1-1 code, in coding order (round by round)."""
    parts = [idx for _, idx in _group_rounds(layout, c0, c1)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _part_arrays(part: tuple) -> list[np.ndarray]:
    """A group's encoding (`_encode_group`) as arrays, to cross ranks: words..., bits, ideal, plain."""
    return [*part[0], np.asarray(part[1], np.int64), part[2], part[3], part[4]]


def _part_from_arrays(a: list[np.ndarray]) -> tuple:
    return list(a[:-4]), [int(b) for b in a[-4]], a[-3], a[-2], a[-1]


def _coder(words: np.ndarray | None) -> AnsCoder:
    """A chain's coder: empty, or continuing from the words another run of images left."""
    return AnsCoder(np.asarray(words, dtype=np.uint32)) if words is not None and len(words) else AnsCoder()


def _encode_group(backend: Backend, images: np.ndarray, layout: ChainLayout, c0: int, c1: int,
                  progress: Callable[[int], None], importance_samples: int = 1,
                  cheap_start: bool = False, start_words: list | None = None) -> tuple:
    chains = [_coder(None if start_words is None else start_words[c]) for c in range(c0, c1)]
    ideal, plain_idx, plain_q = [], [], []
    with single_thread():
        for _, idx in _group_rounds(layout, c0, c1):
            code = push_round(backend, chains[:len(idx)], np.ascontiguousarray(images[idx]), importance_samples,
                              cheap_start)
            ideal.append(code.ideal_bits)
            plain_idx.append(idx[code.plain])
            plain_q.append(code.neg_log2_q[code.plain])
            progress(len(idx))
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return ([c.get_compressed() for c in chains], [int(c.num_valid_bits()) for c in chains],
            cat(ideal, np.float64), cat(plain_idx, np.int64), cat(plain_q, np.float64))


def encode_images(model: VAE, images: np.ndarray, n_chains: int, latent_bits: int = DEFAULT_LATENT_BITS,
                  progress: Callable[[int], None] | None = None, backend: Backend | None = None,
                  workers: int = 1, importance_samples: int = 1, cheap_start: bool = False,
                  team=None, start_words: list | None = None) -> Encoded | None:
    """Code (N, H, W) uint8 pixels ({0,1} for binary models, 0..255 for 8-bit) into C chains.

    `backend` (default FloatBackend(model, latent_bits)) supplies the distributions. With
    `workers` > 1 and a batch-invariant backend (the exact path), groups of chains are coded in
    parallel processes: every chain's words, hence the file, are the same for any worker count.
    `importance_samples` K > 1 codes with the coupled K-sample bound (`importance.py`); `cheap_start`
    codes plain images with the latent precision that makes them shortest (`push_cheap_plain`).
    With a torchrun `team` (`distributed.Team`) each rank codes its share of team.size x workers
    groups and rank 0 gets the whole result (the other ranks get None); same words again.
    `start_words` (per chain) continues chains that already hold images (`encode_runs`).
    """
    N = images.shape[0]
    layout = ChainLayout(N, max(1, min(n_chains, N)))
    backend = backend if backend is not None else FloatBackend(model, latent_bits)
    model.eval()
    ranks = team.size if team is not None else 1
    groups = chain_groups(layout.n_chains, ranks * workers if backend.batch_invariant else 1)
    jobs = [functools.partial(_encode_group, backend, images, layout, c0, c1,
                              importance_samples=importance_samples, cheap_start=cheap_start,
                              start_words=start_words)
            for c0, c1 in groups]
    if team is None:
        parts = run_jobs(jobs, progress)
    else:
        parts = run_team_jobs(jobs, team, progress, to_arrays=_part_arrays, from_arrays=_part_from_arrays)
        if parts is None:
            return None
    ideal = np.zeros(N)
    for (c0, c1), part in zip(groups, parts):
        ideal[_group_images(layout, c0, c1)] = part[2]
    plain_idx = np.concatenate([part[3] for part in parts])
    plain_q = np.concatenate([part[4] for part in parts])
    order = np.argsort(plain_idx, kind="stable")
    plain_idx, plain_q = plain_idx[order], plain_q[order]
    initial_bits = 0.0                                      # summed per round, in image order
    rounds = plain_idx // layout.n_chains
    for t in np.unique(rounds):
        initial_bits += float(plain_q[rounds == t].sum())
    return Encoded(
        chain_words=[w for part in parts for w in part[0]],
        plain_images=[int(i) for i in plain_idx],
        ideal_bits=ideal,
        initial_bits=initial_bits,
        payload_bits=sum(b for part in parts for b in part[1]),
    )


def _decode_group(backend: Backend, chain_words: list[np.ndarray], layout: ChainLayout, plain_images: np.ndarray,
                  out: np.ndarray, c0: int, c1: int, progress: Callable[[int], None], hook=None,
                  importance_samples: int = 1, cheap_start: bool = False, keep_rest: bool = False) -> list | None:
    try:
        chains = [_coder(w) for w in chain_words[c0:c1]]
    except Exception as e:  # constriction rejects e.g. a zero last word
        raise ContainerError(f"corrupt payload: {e}") from None
    with single_thread():
        for _, idx in reversed(list(_group_rounds(layout, c0, c1))):
            msg = chains[:len(idx)]
            if any(c.is_empty() for c in msg):
                raise ContainerError("corrupt payload: a chain ran out of data before its first image")
            x = pop_round(backend, msg, np.isin(idx, plain_images), int(np.prod(out.shape[1:])), importance_samples,
                          cheap_start)
            out[idx] = x.reshape(len(idx), *out.shape[1:])
            if hook is not None:
                hook(idx, out[idx])
            progress(len(idx))
    if keep_rest:
        return [c.get_compressed() for c in chains]
    if not all(c.is_empty() for c in chains):
        raise ContainerError("corrupt payload: data left over after the last image")
    return None


class _CompleteRounds:
    """`job_progress` for grouped decoding: calls `on_round(idx, out[idx])` for every round, last
    first, as soon as every group has decoded its part of it (each progress report of a group is
    one round of that group, its rounds also run last-first)."""

    def __init__(self, layout: ChainLayout, groups: list[tuple[int, int]], out: np.ndarray,
                 on_round: Callable[[np.ndarray, np.ndarray], None]):
        self.layout, self.out, self.on_round = layout, out, on_round
        self.group_rounds = [[t for t, _ in reversed(list(_group_rounds(layout, c0, c1)))] for c0, c1 in groups]
        self.done = [0] * len(groups)               # rounds each group has reported
        self.next_round = layout.n_rounds - 1       # the next round to hand to on_round

    def _group_done_with(self, g: int, t: int) -> bool:
        rounds = self.group_rounds[g]
        return not rounds or t > rounds[0] or (self.done[g] > 0 and rounds[self.done[g] - 1] <= t)

    def __call__(self, g: int, n_images: int) -> None:
        self.done[g] += 1
        while self.next_round >= 0 and all(self._group_done_with(k, self.next_round) for k in range(len(self.done))):
            idx = self.layout.round_images(self.next_round)
            self.next_round -= 1
            self.on_round(idx, self.out[idx])


def decode_images(model: VAE, chain_words: list[np.ndarray], n_images: int, image_shape: tuple,
                  plain_images: list[int], latent_bits: int = DEFAULT_LATENT_BITS,
                  progress: Callable[[int], None] | None = None, backend: Backend | None = None,
                  workers: int = 1, on_round: Callable[[np.ndarray, np.ndarray], None] | None = None,
                  importance_samples: int = 1, cheap_start: bool = False,
                  team=None, keep_rest: bool = False):
    """Inverse of `encode_images`: (N, H, W) uint8 symbols. Every chain must end empty, or with
    `keep_rest` returns (symbols, the words each chain holds after these images) (`decode_runs`).

    A chain that runs dry before its first image or holds bits after it raises ContainerError.
    A chain fed random words does not run dry (it settles at a few hundred valid bits), so the
    work on corrupt data is bounded by the caller: `on_round(idx, x)` sees every round's images
    as soon as they are decoded (rounds run last-first) and may raise (pipeline's block checks);
    with several worker groups this process calls it as each round completes in every group, and
    raising there stops all workers. With a torchrun `team`, each rank decodes its share of the
    groups and rank 0 gets every pixel (the other ranks get None); there `on_round` sees the
    rounds (last first) once every rank is done.
    """
    layout = ChainLayout(n_images, len(chain_words))
    backend = backend if backend is not None else FloatBackend(model, latent_bits)
    model.eval()
    if team is not None:
        return _decode_as_team(backend, chain_words, layout, image_shape, plain_images, progress, workers,
                               on_round, team, importance_samples=importance_samples, cheap_start=cheap_start)
    groups = chain_groups(layout.n_chains, workers if backend.batch_invariant else 1)
    out = (shared_array if len(groups) > 1 else np.zeros)((n_images, *image_shape), np.uint8)
    plain = np.unique(np.asarray(plain_images, dtype=np.int64))
    jobs = [functools.partial(_decode_group, backend, chain_words, layout, plain, out, c0, c1,
                              hook=on_round if len(groups) == 1 else None, importance_samples=importance_samples,
                              cheap_start=cheap_start, keep_rest=keep_rest)
            for c0, c1 in groups]
    # with several groups a round spans every group's chains: this process reassembles whole rounds
    # from the groups' progress (their pixels are in the shared `out`) and calls on_round on them
    merged = _CompleteRounds(layout, groups, out, on_round) if on_round is not None and len(groups) > 1 else None
    rests = run_jobs(jobs, progress, job_progress=merged)
    return (out, [w for part in rests for w in part]) if keep_rest else out


def _decode_group_pixels(backend: Backend, chain_words: list[np.ndarray], layout: ChainLayout, plain: np.ndarray,
                         out: np.ndarray, c0: int, c1: int, progress: Callable[[int], None],
                         **coding) -> list[np.ndarray]:
    _decode_group(backend, chain_words, layout, plain, out, c0, c1, progress, **coding)
    return [np.ascontiguousarray(out[_group_images(layout, c0, c1)])]


def _decode_as_team(backend: Backend, chain_words: list[np.ndarray], layout: ChainLayout, image_shape: tuple,
                    plain_images: list[int], progress, workers: int, on_round, team,
                    **coding) -> np.ndarray | None:
    """`decode_images` over the ranks of a torchrun team: groups as in `encode_images`."""
    groups = chain_groups(layout.n_chains, team.size * workers if backend.batch_invariant else 1)
    local = len(team.share(len(groups)))
    out = (shared_array if local > 1 else np.zeros)((layout.n_images, *image_shape), np.uint8)
    plain = np.unique(np.asarray(plain_images, dtype=np.int64))
    parts = run_team_jobs([functools.partial(_decode_group_pixels, backend, chain_words, layout, plain, out, c0, c1,
                                             **coding)
                           for c0, c1 in groups], team, progress)
    if parts is None:
        return None
    for (c0, c1), (pixels,) in zip(groups, parts):
        out[_group_images(layout, c0, c1)] = pixels
    if on_round is not None:
        for t in reversed(range(layout.n_rounds)):
            idx = layout.round_images(t)
            on_round(idx, out[idx])
    return out


# ----------------------------------------------------------------------------- images of several sizes


def encode_runs(runs: list[tuple[Backend, np.ndarray]], n_chains: int,
                progress: Callable[[int], None] | None = None, workers: int = 1) -> Encoded:
    """Code runs of images of different sizes (any-size models): run r, an (n_r, H_r, W_r[, C])
    array coded with its backend, continues the C chains where run r-1 left them, its image j on
    chain j % min(C, n_r). Bits back carry over from run to run; plain images are numbered in
    the file's image order."""
    words: list = [None] * n_chains
    ideal, plain, initial, offset = [], [], 0.0, 0
    for backend, images in runs:
        enc = encode_images(backend.model, images, n_chains, progress=progress, backend=backend,
                            workers=workers, start_words=words)
        words[:len(enc.chain_words)] = enc.chain_words
        ideal.append(enc.ideal_bits)
        plain.extend(offset + i for i in enc.plain_images)
        initial += enc.initial_bits
        offset += len(images)
    words = [np.zeros(0, np.uint32) if w is None else w for w in words]
    return Encoded(chain_words=words, plain_images=plain, ideal_bits=np.concatenate(ideal), initial_bits=initial,
                   payload_bits=sum(int(_coder(w).num_valid_bits()) for w in words))


def decode_runs(runs: list[tuple[Backend, int, tuple]], chain_words: list[np.ndarray], plain_images: list[int],
                progress: Callable[[int], None] | None = None, workers: int = 1,
                on_round: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[np.ndarray]:
    """Inverse of `encode_runs`, runs (backend, count, image shape) -> one symbol array per run.
    Runs are decoded last-first; `on_round` gets the file's image indices."""
    words = list(chain_words)
    plain = np.asarray(plain_images, dtype=np.int64)
    starts = np.cumsum([0] + [n for _, n, _ in runs])
    outs: list = [None] * len(runs)
    for r in reversed(range(len(runs))):
        backend, n, shape = runs[r]
        lo = int(starts[r])
        hook = None if on_round is None else (lambda idx, x, lo=lo: on_round(idx + lo, x))
        local = plain[(plain >= lo) & (plain < lo + n)] - lo
        C = min(len(words), n)
        outs[r], rest = decode_images(backend.model, words[:C], n, shape, list(local), progress=progress,
                                      backend=backend, workers=workers, on_round=hook, keep_rest=True)
        words[:C] = rest
    if any(len(w) for w in words):
        raise ContainerError("corrupt payload: data left over after the last image")
    return outs
