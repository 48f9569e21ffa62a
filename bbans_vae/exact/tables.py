"""The exact path's bundled tables (correctly rounded function values, verified by sha256),
table lookup by linear interpolation (`Lut`) and the latent buckets built from them."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError

TABLE_DIR = Path(__file__).resolve().parent.parent / "bundled" / "exact"
MAX_LATENT_BITS = 14          # bucket edges/centres come from the 2^15 quantile grid

# name: (x0, log2 of 1/step, n intervals, what)  -- values[j] = f(x0 + j * step)
TABLE_SPECS = {
    "normal_tail": (0.0, 12, 8 * 4096, "Phi(-x), x in [0, 8]"),
    "normal_quantile": (0.0, 15, 1 << 15, "Phi^-1(x), x in [0, 1] (+-inf at the ends)"),
    "softplus": (-32.0, 8, 64 * 256, "log(1 + e^x), x in [-32, 32]"),
    "sigmoid_neg": (0.0, 8, 32 * 256, "1 / (1 + e^x), x in [0, 32]"),
    "exp": (-40.0, 9, 46 * 512, "e^x, x in [-40, 6]"),
    "log2_1p": (0.0, 10, 1024, "log2(1 + x), x in [0, 1] (importance weights, ans/importance.py)"),
    "exp2_neg": (0.0, 10, 1024, "2^-x, x in [0, 1] (importance weights, ans/importance.py)"),
}
TABLE_SHA256 = {
    "normal_tail": "85009cb47687d5085615bd09c4f795c84b45d95ebc1f253b668e3bc3c0367726",
    "normal_quantile": "8bdb7de316fc5627446d191d3c7324bc9301de886322832ca31d00facc422b77",
    "softplus": "d663d5c9974d0d56017b19890f767ab155c5e6961b7420a55fcb16d3555bb880",
    "sigmoid_neg": "d86088bf7086fcc62be0850af67da744d314aaae51da1f0a7acbdd369c8c59ac",
    "exp": "cb4382b27ce87cae89ca43500a9f443670e5f144aafc74ca4055784b18518008",
    "log2_1p": "735db492158e4d3755914b73d37b9ed2131bb6b083943ff2a40eb817d910f790",
    "exp2_neg": "bb00ceff79626ba2cd59a1ee600a82ca5acc5d460e74c8ec0d1a3eff0232d990",
}



# ----------------------------------------------------------------------------- tables


def table_value(name: str, j: int, prec: int = 120) -> float:
    """Entry j of table `name`, correctly rounded from a `prec`-bit mpmath evaluation."""
    import mpmath
    x0, lg, n, _ = TABLE_SPECS[name]
    with mpmath.workprec(prec):
        x = mpmath.mpf(x0) + mpmath.mpf(j) / (1 << lg)
        if name == "normal_tail":
            v = mpmath.ncdf(-x)
        elif name == "normal_quantile":
            if j == 0:
                return -math.inf
            if j == n:
                return math.inf
            if 2 * j > n:                                   # exact symmetry
                return -table_value(name, n - j, prec)
            v = mpmath.sqrt(2) * mpmath.erfinv(2 * x - 1)
        elif name == "softplus":
            v = mpmath.log1p(mpmath.exp(x))
        elif name == "sigmoid_neg":
            v = 1 / (1 + mpmath.exp(x))
        elif name == "exp":
            v = mpmath.exp(x)
        elif name == "log2_1p":
            v = mpmath.log(1 + x, 2)
        elif name == "exp2_neg":
            v = mpmath.power(2, -x)
        else:
            raise KeyError(name)
        return float(v)


def build_table(name: str) -> np.ndarray:
    n = TABLE_SPECS[name][2]
    return np.array([table_value(name, j) for j in range(n + 1)], dtype=np.float64)


def table_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f8").tobytes()).hexdigest()


_TABLES: dict[str, np.ndarray] = {}


def load_table(name: str) -> np.ndarray:
    if name not in _TABLES:
        path = TABLE_DIR / f"{name}.npy"
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelError(f"exact coder path: cannot read its bundled table {path} ({e})") from None
        if a.dtype != np.float64 or a.shape != (TABLE_SPECS[name][2] + 1,) or table_sha256(a) != TABLE_SHA256[name]:
            raise ModelError(f"exact coder path: bundled table {path} is corrupt (sha256 mismatch); reinstall")
        a = a.astype("=f8")
        a.flags.writeable = False
        _TABLES[name] = a
    return _TABLES[name]


class Lut:
    """f(x) by linear interpolation on a uniform grid, x clamped to the grid's range.

    t = (x - x0) * 2^lg; i = min(floor(t), n - 1); f(x) ~ v[i] + (t - i) * (v[i+1] - v[i]).
    Each step is one correctly rounded IEEE operation, done as a separate numpy ufunc (no FMA
    contraction), so the result is the same bits on every machine.
    """

    def __init__(self, name: str):
        self.x0, lg, self.n, _ = TABLE_SPECS[name]
        self.v = load_table(name)
        self.d = self.v[1:] - self.v[:-1]
        self.scale = float(2.0 ** lg)
        # padded so that index n (x at the end of the range) needs no second clamp
        self.v_pad = np.append(self.v, self.v[-1])
        self.d_pad = np.append(self.d, [0.0, 0.0])

    def at_scaled(self, t: np.ndarray) -> np.ndarray:
        """f at grid positions t = (x - x0) * 2^lg >= 0, given (t is overwritten): the fast path."""
        np.minimum(t, float(self.n), out=t)
        i = np.floor(t)
        t -= i                                                        # fraction in [0, 1)
        ii = i.astype(np.intp)
        out = self.d_pad[ii]
        out *= t
        out += self.v_pad[ii]
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = np.subtract(x, self.x0)
        t *= self.scale
        np.maximum(t, 0.0, out=t)
        np.minimum(t, float(self.n), out=t)
        i = np.floor(t)
        np.minimum(i, float(self.n - 1), out=i)
        t -= i
        ii = i.astype(np.intp)
        out = self.d[ii]
        out *= t
        out += self.v[ii]
        return out


# ----------------------------------------------------------------------------- buckets


class ExactBuckets:
    """LatentBuckets for the exact path: edges/centres from the bundled Phi^-1 table, bucket
    masses from the tail table (tail trick: masses are differences of the smaller tails)."""

    def __init__(self, bits: int):
        if not 1 <= bits <= MAX_LATENT_BITS:
            raise InputError(f"the exact coder path supports 1..{MAX_LATENT_BITS} latent bits, not {bits}")
        self.bits = bits
        self.n = 1 << bits
        q = load_table("normal_quantile")
        step = 1 << (15 - bits)
        self.edges = q[::step].copy()                                  # (n+1,), +-inf at the ends
        self.centers = q[step // 2::step].copy()                       # (n,) Phi^-1((i + 1/2) / n)
        self.tail = Lut("normal_tail")

    def posterior_probs(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """(B, D) float64 mean/std -> (B, D, 2^k) float64 bucket masses, by the tail trick.

        Per edge e: t = |e - mu| / (sigma * 2^-12) = |s| * 2^12 (power-of-two scaling: exact) is
        the position in the tail table, tail = Phi(-|s|) by linear interpolation, and
        g = -tail above the mean, +tail below it (= CDF(e) - [e >= mu]). A bucket's mass is
        g_hi - g_lo: lo - hi above the mean, hi - lo below it (differences of small tails, full
        relative precision far from the mean), plus 1 for the one bucket holding the mean
        (1 - lo - hi). This is the hot loop: few passes, no masked operations.
        """
        tab = self.tail
        B, D = mu.shape
        R = B * D
        mu, sigma = mu.reshape(R), sigma.reshape(R)
        out = np.empty((R, self.n))
        block = max(1, (256 * 257) // (self.n + 1))                   # cache-sized blocks of rows
        for r0 in range(0, R, block):
            r1 = min(R, r0 + block)
            m = mu[r0:r1]
            d = np.subtract(self.edges, m[:, None])                   # (rows, n+1) edge - mu
            t = np.abs(d)
            t /= (sigma[r0:r1] * (1.0 / tab.scale))[:, None]
            g = tab.at_scaled(t)                                      # Phi(-|s|) per edge
            np.negative(d, out=d)
            np.copysign(g, d, out=g)                                  # -tail where e >= mu
            mass = np.subtract(g[:, 1:], g[:, :-1], out=out[r0:r1])
            # the bucket with e_lo < mu <= e_hi gets the +1 (edges[0] = -inf, edges[n] = +inf)
            k = np.searchsorted(self.edges, m, side="left") - 1
            mass[np.arange(r1 - r0), k] += 1.0
        np.maximum(out, 0.0, out=out)
        return out.reshape(B, D, self.n)
