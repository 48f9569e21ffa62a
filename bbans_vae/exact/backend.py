"""The exact coder path's backend: posterior bucket masses and pixel parameters from the exact
integer networks and table lookups, reproducible bit for bit."""
from __future__ import annotations

import hashlib

import numpy as np

from ..errors import InputError
from ..models import SIGMA_FLOOR, VAE
from ..models.likelihoods import (GAUSSIAN_LOG_STD_RANGE, LOGISTIC_LOG_SCALE_RANGE, MEAN_HALF_RANGE,
                                 SCALE_UNIT)
from .qnet import ExactConvNetworks, ExactNetworks
from .tables import ExactBuckets, Lut

_ROWS = 256  # rows of 257 edges per block in the table loops (fits in L2)


EXACT_ARCHS = ("mlp", "ctx", "conv")  # architectures this integer arithmetic implements


class ExactBackend:
    """The `ans.backends.Backend` protocol on the exact integer networks: every output is
    reproducible bit for bit, whatever the batch (so chains may be split across processes).

    `batch_split=k` evaluates the networks on sub-batches of k lanes (results are identical by
    construction; tests use it to show that batch composition does not matter).
    """

    path = "exact"
    batch_invariant = True

    def __init__(self, model: VAE, latent_bits: int, batch_split: int | None = None):
        if model.cfg.arch not in EXACT_ARCHS:
            raise InputError(f"the exact coder path supports architectures {', '.join(EXACT_ARCHS)}, not "
                             f"{model.cfg.arch!r}; use --coder-path float32")
        self.model = model
        self.buckets = ExactBuckets(latent_bits)
        self.latent_dim = model.cfg.n_latents
        self.pixel_family = model.likelihood.coder_family
        self.batch_split = batch_split
        self.net = exact_networks(model)
        self.cfg = model.cfg
        self.softplus = Lut("softplus")
        self.sigmoid_neg = Lut("sigmoid_neg")
        self.exp = Lut("exp")
        self._centers_int = self.net._z_int(self.buckets.centers)
        self._logistic_edges = np.concatenate([[-np.inf], np.arange(255) + 0.5, [np.inf]])
        self.n_phases = model.n_phases
        self.phase = model.phase.cpu().numpy() if self.n_phases > 1 else None        # (P,) phase per pixel

    def _split(self, fn, x):
        k = self.batch_split
        if not k or len(x) <= k:
            return fn(x)
        parts = [fn(x[i:i + k]) for i in range(0, len(x), k)]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(p) for p in zip(*parts))
        return np.concatenate(parts)

    # -- q(z|x)
    def posterior_probs(self, x: np.ndarray) -> np.ndarray:
        return self._split(self._posterior_probs, x)

    def posterior_params(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) float64 mean and std of q(z|x) on the exact path."""
        a = np.asarray(x).reshape(len(x), -1).astype(np.float64)
        h = self.net.encoder(a)
        D = self.latent_dim
        mu, raw = h[:, :D], h[:, D:]
        sp = self.softplus(raw)
        sigma = np.where(raw > 32.0, raw, sp)
        sigma += SIGMA_FLOOR
        return mu, sigma

    def _posterior_probs(self, x: np.ndarray) -> np.ndarray:
        mu, sigma = self.posterior_params(x)
        return self.buckets.posterior_probs(mu, sigma)

    # -- p(x|z): decoder output, then each phase's parameters (one phase without pixel context)
    def decoder_out(self, z_idx: np.ndarray) -> np.ndarray:
        return self._split(lambda z: self.net.decoder(self._centers_int[z]), np.asarray(z_idx, dtype=np.int64))

    def phase_params(self, out: np.ndarray, x_vis: np.ndarray | None, phase: int):
        if self.n_phases == 1:
            return self._split(self.params_from_output, out)
        vis, sel = self.phase < phase, self.phase == phase    # only phase `phase`'s pixels are valid
        return self._split(lambda i: self.params_from_output(self.net.context(out[i], x_vis[i], vis, sel)),
                           np.arange(len(out)))

    def params_from_output(self, out: np.ndarray):
        B, P = out.shape[0], self.cfg.n_pixels
        lik = self.cfg.likelihood
        if lik == "bernoulli":
            t = self.sigmoid_neg(np.abs(out))                           # sigmoid(-|l|)
            return np.where(out < 0, t, 1.0 - t)
        if lik == "gaussian":
            o = out.reshape(B, P, 2)
            mean = o[..., 0] * MEAN_HALF_RANGE
            mean += MEAN_HALF_RANGE
            std = self.exp(np.clip(o[..., 1], *GAUSSIAN_LOG_STD_RANGE))
            std *= SCALE_UNIT                                           # exp(c + ln 16)
            return np.ascontiguousarray(mean), std
        return self._logistic_tables(out.reshape(B, P, 3, self.cfg.mixtures))

    def _logistic_tables(self, o: np.ndarray) -> np.ndarray:
        """(B, P, 256) mixture tables: per component, bin masses are CDF differences by the tail
        trick (as for the posterior), CDF(e) = sigmoid((e - mean) / s), end bins take the tails."""
        B, P, _, K = o.shape
        mean = o[:, :, 1] * MEAN_HALF_RANGE
        mean += MEAN_HALF_RANGE
        log_s = np.clip(o[:, :, 2], *LOGISTIC_LOG_SCALE_RANGE)
        # grid position in the sigmoid table per unit of (e - mean): e^-(c + ln 16) * 2^8
        pos_scale = self.exp(-log_s) * (self.sigmoid_neg.scale / SCALE_UNIT)
        edges = self._logistic_edges
        if K > 1:
            logit_w = o[:, :, 0]
            m = logit_w[..., 0].copy()
            for k in range(1, K):
                np.maximum(m, logit_w[..., k], out=m)
            e = self.exp(logit_w - m[..., None])                        # (B, P, K), largest is 1
            tot = e[..., 0].copy()
            for k in range(1, K):
                tot += e[..., k]                                        # fixed order, no np.sum
        R = B * P
        mean, pos_scale = mean.reshape(R, K), pos_scale.reshape(R, K)
        weight = (e / tot[..., None]).reshape(R, K) if K > 1 else None
        table = np.empty((R, 256))
        for r0 in range(0, R, _ROWS):                       # cache-sized blocks: ~4x faster
            r1 = min(R, r0 + _ROWS)
            rows = np.arange(r1 - r0)
            out = table[r0:r1]
            for k in range(K):
                d = np.subtract(edges, mean[r0:r1, k, None])            # (rows, 257) edge - mean
                t = np.abs(d)
                t *= pos_scale[r0:r1, k, None]
                g = self.sigmoid_neg.at_scaled(t)                       # sigmoid(-|z|)
                np.negative(d, out=d)
                np.copysign(g, d, out=g)                                # CDF(e) - [e >= mean]
                mass = np.subtract(g[:, 1:], g[:, :-1], out=out if k == 0 else None)
                j = np.searchsorted(edges, mean[r0:r1, k], side="left") - 1
                mass[rows, j] += 1.0                                    # the bin holding the mean
                np.maximum(mass, 0.0, out=mass)
                if K > 1:
                    mass *= weight[r0:r1, k, None]
                if k:
                    out += mass
        return table.reshape(B, P, 256)

    def pixel_log2_prob(self, params, x: np.ndarray) -> np.ndarray:
        return self.model.likelihood.coder_log2_prob(params, x)


_NETWORKS: dict[str, ExactNetworks] = {}
_NETWORKS_KEPT = 4


def weights_digest(model: VAE) -> str:
    """sha256 of the model's config and parameter bytes: what its exact networks are a function of."""
    h = hashlib.sha256(repr(model.cfg.to_dict()).encode())
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def exact_networks(model: VAE) -> ExactNetworks:
    """The model's exact networks, built once per distinct weights (keyed by their content, so a
    model trained further, or a copy, gets the right ones; the models themselves are not kept)."""
    if model.cfg.any_size:                  # conv models: one integer net for every size
        return _cached_networks(model.owner).at(*model.cfg.image_shape)
    return _cached_networks(model)


def _cached_networks(model: VAE):
    key = weights_digest(model)
    net = _NETWORKS.get(key)
    if net is None:
        net = (ExactConvNetworks if model.cfg.any_size else ExactNetworks)(model)
        if len(_NETWORKS) >= _NETWORKS_KEPT:
            _NETWORKS.pop(next(iter(_NETWORKS)))
        _NETWORKS[key] = net
    return net
