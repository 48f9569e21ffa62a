"""The exact coder path: distributions that are bit-identical on any IEEE-754 machine (SPEC §6.3).

The float32 path gets the coder's parameters from float32 network inference, whose rounding
depends on BLAS kernels, CPU instruction sets, thread counts and batch composition; one ulp
changes the decoded image. This path removes every such dependency:

Integer network (derived from the float32 weights at load time, no stored state)
    * Every Linear layer gets integer-valued weights w_int = round(w * 2^s_j) with a power-of-two
      scale per output row (|w_int| <= 2^18; 2^24 for the first encoder layer, whose inputs are
      the raw pixel integers {0,1} or 0..255 with the 1/255 folded into the weights). Biases are
      integers at the accumulator's scale (|b_int| <= 2^50; a row whose bias needs it gets a
      smaller weight scale).
    * Activations are integers a_int with a power-of-two scale per layer and |a_int| < 2^AB,
      where AB = 51 - ceil(log2(max_row sum_i |w_int[row, i]|)) of the layer that reads them.
      So every product is an exact integer and every partial sum of `a_int @ w_int.T + b_int`
      is below 2^52 < 2^53 in magnitude: a float64 GEMM gives the exact integer result in ANY
      summation order, blocking, FMA use or thread split, on any BLAS or device. Batch
      composition cannot change a row's result.
    * ReLU is exact; requantisation multiplies by a power of two (exact) and rounds with
      floor(x + 0.5) (exact), then clips to the activation range (saturation, never overflow).
      The last layer's accumulator times a power of two is its exact float64 output.
    * Activation scales come from calibration with this exact integer path itself (so the
      calibration is reproducible too): 256 latent vectors drawn from the prior by an integer
      hash (bucket centres from the bundled quantile table) run through the decoder; the
      decoder's own mean images (thresholded / rounded, all exact) then calibrate the encoder.
      Each layer's scale leaves 2^6-2^7 headroom above the calibration maximum. Everything is a
      pure function of the float32 weights, which the container pins by their sha256.

Context models (arch "ctx")
    The pixel-context conv net runs as integer GEMMs over im2col patches (`QContext`): its
    input (decoder output, visible pixels, mask) is rounded to integers at one power-of-two
    scale; its weights get twice the bits (`QSplitLayer`: w = w_hi * 2^18 + w_lo, two exact
    GEMMs whose sums, like the bias and the final correction, are combined element by element
    with single IEEE operations, which are correctly rounded and so identical everywhere). Per
    phase only the pixels of that phase are computed (the coder reads no others).

Non-linearities without transcendental functions
    softplus (posterior std), sigmoid (Bernoulli p, logistic CDFs), exp (Gaussian std, logistic
    scales and mixture weights) and the normal tail Phi(-a) (posterior bucket masses) are linear
    interpolations in tables using only + - * / floor copysign and comparisons (correctly
    rounded in IEEE-754, hence identical everywhere). The tables and the latent bucket
    edges/centres (Phi^-1(j / 2^15)) are bundled as .npy files under `bundled/exact/`,
    generated with mpmath by `python -m bbans_vae.exact --write-tables`, and verified by sha256
    at load. Masses keep the tail trick (differences of the smaller tails). No reduction (sum)
    of floats is done in numpy: its pairwise/SIMD summation order is not guaranteed.

What is still assumed
    The coder turns float64 parameters into integer CDFs inside constriction (Rust): the
    posterior and logistic tables via `Categorical(perfect=False)` (IEEE arithmetic only) and
    the 8-bit Gaussian pixels via `QuantizedGaussian(0, 255)`, whose CDF is evaluated in
    constriction's Rust code with Rust's float runtime. Identical inputs then give identical
    coders for the same constriction version (pinned and recorded in the header) on the same
    architecture; a different libm `exp` behind that Rust erf is the one residual dependency
    of the 8-bit Gaussian family. Binary models and posteriors have none.

The path is recorded in the container as coder_path "exact" (version 1 of this arithmetic:
any change to the rules above must use a new coder path name).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import InputError, ModelError
from .models import SIGMA_FLOOR, VAE

TABLE_DIR = Path(__file__).resolve().parent / "bundled" / "exact"
MAX_LATENT_BITS = 14          # bucket edges/centres come from the 2^15 quantile grid
HEADROOM_BITS = 6             # activation range above the calibration maximum
N_CALIBRATION = 256
N_CONTEXT_CALIBRATION = 64    # of those, for a context net (its patches are 9x wider)
WEIGHT_BITS = 18
LO_WEIGHT_BITS = 18           # context nets: weights of WEIGHT_BITS + LO_WEIGHT_BITS bits (QSplitLayer)
FIRST_WEIGHT_BITS = 24
ACC_BITS = 51                 # |sum of products| < 2^51, |bias| <= 2^51: all partial sums < 2^52

# name: (x0, log2 of 1/step, n intervals, what)  -- values[j] = f(x0 + j * step)
TABLE_SPECS = {
    "normal_tail": (0.0, 12, 8 * 4096, "Phi(-x), x in [0, 8]"),
    "normal_quantile": (0.0, 15, 1 << 15, "Phi^-1(x), x in [0, 1] (+-inf at the ends)"),
    "softplus": (-32.0, 8, 64 * 256, "log(1 + e^x), x in [-32, 32]"),
    "sigmoid_neg": (0.0, 8, 32 * 256, "1 / (1 + e^x), x in [0, 32]"),
    "exp": (-40.0, 9, 46 * 512, "e^x, x in [-40, 6]"),
}
TABLE_SHA256 = {
    "normal_tail": "85009cb47687d5085615bd09c4f795c84b45d95ebc1f253b668e3bc3c0367726",
    "normal_quantile": "8bdb7de316fc5627446d191d3c7324bc9301de886322832ca31d00facc422b77",
    "softplus": "d663d5c9974d0d56017b19890f767ab155c5e6961b7420a55fcb16d3555bb880",
    "sigmoid_neg": "d86088bf7086fcc62be0850af67da744d314aaae51da1f0a7acbdd369c8c59ac",
    "exp": "cb4382b27ce87cae89ca43500a9f443670e5f144aafc74ca4055784b18518008",
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
        else:
            raise KeyError(name)
        return float(v)


def build_table(name: str) -> np.ndarray:
    n = TABLE_SPECS[name][2]
    return np.array([table_value(name, j) for j in range(n + 1)], dtype=np.float64)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f8").tobytes()).hexdigest()


_TABLES: dict[str, np.ndarray] = {}


def load_table(name: str) -> np.ndarray:
    if name not in _TABLES:
        path = TABLE_DIR / f"{name}.npy"
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelError(f"exact coder path: cannot read its bundled table {path} ({e})") from None
        if a.dtype != np.float64 or a.shape != (TABLE_SPECS[name][2] + 1,) or _sha(a) != TABLE_SHA256[name]:
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


# ----------------------------------------------------------------------------- integer network


def _pow2(e: np.ndarray) -> np.ndarray:
    return np.ldexp(1.0, np.asarray(e, dtype=np.int64).astype(np.int32))


def _exponent(m: np.ndarray) -> np.ndarray:
    """Smallest e with |m| < 2^e (0 for m == 0): exact, via frexp."""
    return np.frexp(np.asarray(m, dtype=np.float64))[1].astype(np.int64)


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


@dataclass
class QLayer:
    w_t: torch.Tensor          # (in, out) float64, integer-valued, |w| <= 2^wb
    b: np.ndarray              # (out,) float64 integer-valued, accumulator scale
    acc_exp: np.ndarray        # (out,) accumulator value = acc * 2^-acc_exp
    in_bits: int               # inputs are integers with |a| < 2^in_bits
    # set for hidden layers once the next scale is calibrated:
    mult: np.ndarray | None = None   # (out,) 2^(s_next - acc_exp): acc -> next activation ints
    clip: float = 0.0                # 2^AB_next - 1

    def accumulate(self, a: np.ndarray) -> np.ndarray:
        acc = (torch.from_numpy(a) @ self.w_t).numpy()
        acc += self.b
        return acc

    def hidden(self, a: np.ndarray) -> np.ndarray:
        return self.requantize(self.accumulate(a))

    def requantize(self, acc: np.ndarray) -> np.ndarray:
        """ReLU, then the next layer's activation integers (in place on acc)."""
        np.maximum(acc, 0.0, out=acc)                                   # ReLU
        acc *= self.mult
        acc += 0.5
        np.floor(acc, out=acc)
        np.minimum(acc, self.clip, out=acc)
        return acc

    def output(self, a: np.ndarray) -> np.ndarray:
        acc = self.accumulate(a)
        acc *= _pow2(-self.acc_exp)                                     # exact real value
        return acc


@dataclass
class QSplitLayer(QLayer):
    """A QLayer with twice the weight precision: w_int = w_hi * 2^lo_bits + w_lo, two exact
    GEMMs, combined per element (a power-of-two multiply, then IEEE additions of the two sums and
    the bias: correctly rounded, so identical everywhere). The bias is not rounded at all.
    Context nets use it: their weights are heavy-tailed, so 18 bits per row leave the typical
    weight ~12 bits (measured on mnist-ctx: 1e-3 error in the pixel parameters vs float64; with
    the split 1e-4; at either precision the rate equals float32's within sampling noise)."""

    w_lo_t: torch.Tensor | None = None
    lo_bits: int = 0

    def accumulate(self, a: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(a)
        acc = (t @ self.w_t).numpy()
        acc *= 2.0 ** self.lo_bits
        acc += (t @ self.w_lo_t).numpy()
        acc += self.b
        return acc


@dataclass
class _Prepared:
    """A Linear layer's float64 weights with its provisional row scales and L1 bound."""

    w: np.ndarray              # (out, in) float64 (1/255 folded in for 8-bit encoder inputs)
    b: np.ndarray              # (out,)
    row_exp: np.ndarray        # (out,) max|w_row| * 2^row_exp <= 2^weight_bits
    l1_exp: int                # every row: sum |w_int| < 2^l1_exp

    @staticmethod
    def of(lin: torch.nn.Module, weight_bits: int, divide: float = 1.0) -> "_Prepared":
        """From a Linear, or a Conv2d read as a Linear on its im2col patches (`_conv_matrix`)."""
        w = (_conv_matrix(lin) if isinstance(lin, torch.nn.Conv2d) else lin.weight).detach().cpu().double().numpy()
        if divide != 1.0:
            w = w / divide                                              # correctly rounded
        b = lin.bias.detach().cpu().double().numpy()
        row_exp = weight_bits - _exponent(np.abs(w).max(1))
        w_int = _round(np.ldexp(w, row_exp[:, None].astype(np.int32)))
        # integers < 2^(weight_bits + 1) summed over < 2^20 terms: exact in any order
        l1 = float(np.abs(w_int).sum(1).max()) + 1.0
        return _Prepared(w, b, row_exp, int(_exponent(np.float64(l1))))

    def input_bits(self) -> int:
        """Input activation bits that keep every partial sum of products below 2^ACC_BITS."""
        return ACC_BITS - self.l1_exp

    def quantize(self, in_exp: int, in_bits: int) -> QLayer:
        if in_bits > self.input_bits():
            raise ModelError("exact coder path: accumulator range exceeded (internal)")
        # a large bias next to small weights lowers the row's scale: |b_int| <= 2^(ACC_BITS - 1)
        bias_cap = (ACC_BITS - 1) - _exponent(np.abs(self.b)) - in_exp
        row_exp = np.minimum(self.row_exp, bias_cap)                   # only shrinks |w_int|
        w_int = _round(np.ldexp(self.w, row_exp[:, None].astype(np.int32)))
        acc_exp = row_exp + in_exp
        b_int = _round(np.ldexp(self.b, acc_exp.astype(np.int32)))
        b_int = np.clip(b_int, -2.0 ** ACC_BITS, 2.0 ** ACC_BITS)
        return QLayer(torch.from_numpy(np.ascontiguousarray(w_int.T)), b_int, acc_exp, in_bits)

    def split(self, lo_bits: int) -> "_PreparedSplit":
        """The weights at 2^lo_bits finer row scales, as integer hi and lo parts (QSplitLayer)."""
        row_exp = self.row_exp + lo_bits
        w_int = _round(np.ldexp(self.w, row_exp[:, None].astype(np.int32)))
        w_hi = np.floor(np.ldexp(w_int, -lo_bits))                     # exact: power-of-two scaling
        w_lo = w_int - np.ldexp(w_hi, lo_bits)                          # in [0, 2^lo_bits), exact
        l1 = max(float(np.abs(w_hi).sum(1).max()), float(w_lo.sum(1).max())) + 1.0
        return _PreparedSplit(w_hi, w_lo, row_exp, self.b, lo_bits, int(_exponent(np.float64(l1))))


@dataclass
class _PreparedSplit:
    """A layer's split integer weights (`_Prepared.split`); the same interface as _Prepared."""

    w_hi: np.ndarray           # (out, in) integer-valued
    w_lo: np.ndarray           # (out, in) integer-valued, in [0, 2^lo_bits)
    row_exp: np.ndarray        # (out,) w ~ (w_hi * 2^lo_bits + w_lo) * 2^-row_exp
    b: np.ndarray              # (out,) float64
    lo_bits: int
    l1_exp: int                # every row of w_hi and of w_lo: sum |w| < 2^l1_exp

    def input_bits(self) -> int:
        """Input activation bits that keep both GEMMs' partial sums below 2^ACC_BITS."""
        return ACC_BITS - self.l1_exp

    def quantize(self, in_exp: int, in_bits: int) -> QSplitLayer:
        if in_bits > self.input_bits():
            raise ModelError("exact coder path: accumulator range exceeded (internal)")
        acc_exp = self.row_exp + in_exp
        b = np.ldexp(self.b, acc_exp.astype(np.int32))                  # exact, no rounding
        return QSplitLayer(torch.from_numpy(np.ascontiguousarray(self.w_hi.T)), b, acc_exp, in_bits,
                           w_lo_t=torch.from_numpy(np.ascontiguousarray(self.w_lo.T)), lo_bits=self.lo_bits)


def _linears(seq: torch.nn.Sequential) -> list[torch.nn.Linear]:
    layers = [m for m in seq if isinstance(m, torch.nn.Linear)]
    others = [m for m in seq if not isinstance(m, (torch.nn.Linear, torch.nn.ReLU))]
    if others:
        raise ModelError(f"the exact coder path supports Linear/ReLU MLPs, not {type(others[0]).__name__}")
    return layers


def _calibrate(prepared: list, in_exp: int, in_bits: int, chunks: list[np.ndarray],
               patches: Callable[[int, np.ndarray], np.ndarray] = lambda i, a: a) -> list[QLayer]:
    """Quantise `prepared` (_Prepared or _PreparedSplit) layer by layer. Each hidden layer's output
    scale is the calibration maximum of its exact accumulators + HEADROOM_BITS, over the
    activation `chunks` (any shape, channels last); patches(i, a) is layer i's input matrix for a
    chunk (identity for an MLP, im2col for a conv)."""
    layers: list[QLayer] = []
    for i, prep in enumerate(prepared):
        q = prep.quantize(in_exp, in_bits)
        layers.append(q)
        if i == len(prepared) - 1:
            break
        accs = [q.accumulate(patches(i, a)) for a in chunks]
        real_max = max((float((np.maximum(acc, 0.0) * _pow2(-q.acc_exp)).max()) for acc in accs if len(acc)),
                       default=0.0)
        in_bits = prepared[i + 1].input_bits()
        if in_bits < 12:
            raise ModelError("a layer is too wide for the exact coder path")
        in_exp = int(in_bits - HEADROOM_BITS - _exponent(np.float64(real_max)))
        q.mult = _pow2(in_exp - q.acc_exp)
        q.clip = float(2.0 ** in_bits - 1)
        chunks = [q.requantize(acc).reshape(*a.shape[:-1], -1) for a, acc in zip(chunks, accs)]
    return layers


class QNet:
    """A quantised MLP: integer inputs (scale 2^-in_exp) -> ... -> exact float64 outputs."""

    def __init__(self, prepared: list[_Prepared], in_exp: int, in_bits: int, calibration: np.ndarray):
        self.layers = _calibrate(prepared, in_exp, in_bits, [calibration])

    def __call__(self, a: np.ndarray) -> np.ndarray:
        for q in self.layers[:-1]:
            a = q.hidden(a)
        return self.layers[-1].output(a)


def _calibration_latents(buckets_centers: np.ndarray, n: int, d: int) -> np.ndarray:
    """(n, d) prior samples: bucket centres of the 2^14 grid picked by a splitmix64 hash."""
    k = np.arange(n * d, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        k = (k ^ (k >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        k = (k ^ (k >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        k = k ^ (k >> np.uint64(31))
    idx = (k >> np.uint64(50)).astype(np.int64)                         # 14 bits
    return buckets_centers[idx].reshape(n, d)


def _im2col(a: np.ndarray, k: int, at: np.ndarray | None = None) -> np.ndarray:
    """(B, H, W, C) -> (B*n, k*k*C) zero-padded k x k patches centred on the n pixels where the
    (H, W) bool mask `at` is set (all if None), ordered (dy, dx, c) like `_conv_matrix`'s
    columns. One gather: only copies values, so exact."""
    B, H, W, C = a.shape
    p = k // 2
    if at is None and p == 0:
        return a.reshape(B * H * W, C)
    Hp, Wp = H + 2 * p, W + 2 * p
    padded = np.zeros((B, Hp * Wp, C))
    padded.reshape(B, Hp, Wp, C)[:, p:p + H, p:p + W] = a
    ys, xs = np.nonzero(np.ones((H, W), bool) if at is None else at)
    d = np.arange(k)
    idx = ((ys[:, None, None] + d[None, :, None]) * Wp + xs[:, None, None] + d[None, None, :]).reshape(-1)
    return np.take(padded, idx, axis=1).reshape(B * len(ys), k * k * C)       # take: ~5x faster than []


def _conv_matrix(conv: torch.nn.Conv2d) -> torch.Tensor:
    """(C_out, kh*kw*C_in) weight matrix of a conv, columns ordered (dy, dx, c) as in `_im2col`."""
    w = conv.weight.detach()
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """(H, W) bool: the pixels a k x k same-padded conv reads to produce `mask`'s pixels."""
    p = k // 2
    if not p:
        return mask
    padded = np.pad(mask, p)
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k)).any((-2, -1))


class QContext:
    """A context model's pixel-context conv net as integer GEMMs over im2col patches.

    The net reads [decoder output h (k channels), visible pixels, visibility mask] per pixel.
    All inputs share one power-of-two scale: h (exact float64) and the pixel values (x/255 for
    8-bit, correctly rounded) are rounded to integers at that scale, clipped to the first
    layer's input range; the mask is exactly 2^in_exp. Then each conv is a QLayer on patches,
    calibrated like QNet, and the last one's exact float64 correction is added to h (one IEEE
    addition per element: correctly rounded, identical everywhere).
    """

    def __init__(self, model: VAE, out_cal: np.ndarray, x_cal: np.ndarray, phases_cal: np.ndarray):
        cfg = model.cfg
        self.H, self.W = cfg.image_shape
        self.k = model.likelihood.params_per_pixel
        self.phase = model.phase.cpu().numpy()
        convs = [m for m in model.context if isinstance(m, torch.nn.Conv2d)]
        others = [m for m in model.context if not isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU))]
        if others or any(c.stride != (1, 1) or c.kernel_size[0] != c.kernel_size[1] or c.kernel_size[0] % 2 == 0
                         or c.padding != (c.kernel_size[0] // 2,) * 2 or c.dilation != (1, 1) for c in convs):
            raise ModelError("the exact coder path supports context nets of same-padded odd square "
                             "convolutions with ReLU")
        self.ksize = [c.kernel_size[0] for c in convs]
        prepared = [_Prepared.of(c, WEIGHT_BITS).split(LO_WEIGHT_BITS) for c in convs]
        in_bits = min(prepared[0].input_bits(), 30)
        if in_bits < 12:
            raise ModelError("the context net's first layer is too wide for the exact coder path")
        real_max = max(float(np.abs(out_cal).max()) if out_cal.size else 0.0, 1.0)
        self.in_bits = in_bits
        self.in_exp = int(in_bits - HEADROOM_BITS - _exponent(np.float64(real_max)))
        self.in_clip = float(2.0 ** in_bits - 1)
        values = np.arange(256, dtype=np.float64) / (255.0 if cfg.pixel_kind == "8bit" else 1.0)
        self.pixel_ints = _round(np.ldexp(values, self.in_exp))                        # (256,)
        self.one = float(2.0 ** self.in_exp)
        chunks = [self._input(out_cal[i:i + 16], x_cal[i:i + 16], self.phase[None, :] < phases_cal[i:i + 16, None])
                  for i in range(0, len(out_cal), 16)]
        self.layers = _calibrate(prepared, self.in_exp, in_bits, chunks, lambda i, a: _im2col(a, self.ksize[i]))

    def _input(self, out: np.ndarray, x: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """(B, H, W, k + 2) integer input: h, visible pixels, mask; vis (B or 1, P) bool."""
        B, P, k = out.shape[0], self.H * self.W, self.k
        h = np.ldexp(out.reshape(B, P, k), self.in_exp)
        np.clip(h, -self.in_clip, self.in_clip, out=h)
        h = _round(h)
        vis = np.broadcast_to(vis, (B, P))
        xi = np.where(vis, self.pixel_ints[np.asarray(x, dtype=np.int64).reshape(B, P)], 0.0)
        m = np.where(vis, self.one, 0.0)
        return np.concatenate([h, xi[..., None], m[..., None]], -1).reshape(B, self.H, self.W, k + 2)

    def __call__(self, out: np.ndarray, x: np.ndarray, vis: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        """out (B, P*k) exact decoder output, x (B, P) pixel symbols, vis (P,) bool -> out +
        correction (B, P*k). With `sel` (P,) bool, only the pixels of sel are corrected (each layer
        runs only where a later layer reads it); the others keep out's values."""
        B, H, W, k = out.shape[0], self.H, self.W, self.k
        a = self._input(out, x, vis[None, :])
        sel2 = np.ones((H, W), bool) if sel is None else sel.reshape(H, W)
        need = [sel2]                                       # pixels each layer must produce, last first
        for ks in reversed(self.ksize[1:]):
            need.append(_dilate(need[-1], ks))
        need = need[::-1]
        for i, q in enumerate(self.layers[:-1]):
            at = None if need[i].all() else need[i]
            h = q.hidden(_im2col(a, self.ksize[i], at))
            if at is None:
                a = h.reshape(B, H, W, -1)
            else:
                a = np.zeros((B, H, W, h.shape[-1]))
                a[:, at] = h.reshape(B, -1, h.shape[-1])
        at = None if sel is None else sel2
        corr = self.layers[-1].output(_im2col(a, self.ksize[-1], at))                # (B*n, k)
        if sel is None:
            return out + corr.reshape(B, -1)
        res = out.reshape(B, H * W, k).copy()
        res[:, sel] += corr.reshape(B, -1, k)
        return res.reshape(B, -1)


class ExactNetworks:
    """The VAE's encoder and decoder as exact integer networks (see the module docstring)."""

    def __init__(self, model: VAE):
        cfg = model.cfg
        self.cfg = cfg
        self.likelihood = cfg.likelihood
        self.k = cfg.mixtures
        D = cfg.latent_dim
        dec = [_Prepared.of(l, WEIGHT_BITS) for l in _linears(model.decoder)]
        # decoder input: bucket centres, |z| < 4 = 2^2
        self.z_bits = min(dec[0].input_bits(), 40)
        self.z_exp = self.z_bits - 3
        centers14 = load_table("normal_quantile")[1::2]                  # Phi^-1((i + 1/2) / 2^14)
        z_cal = self._z_int(_calibration_latents(centers14, N_CALIBRATION, D))
        self.decoder = QNet(dec, self.z_exp, self.z_bits, z_cal)
        # encoder input: raw pixel integers; calibrated on the decoder's own mean images
        x_cal = self.mean_images(self.decoder(z_cal))
        in_bits = 1 if cfg.pixel_kind == "binary" else 8
        divide = 1.0 if cfg.pixel_kind == "binary" else 255.0
        enc_layers = _linears(model.encoder)
        wb = FIRST_WEIGHT_BITS
        first = _Prepared.of(enc_layers[0], wb, divide)
        while first.input_bits() < in_bits:
            wb -= 1
            first = _Prepared.of(enc_layers[0], wb, divide)
        enc = [first] + [_Prepared.of(l, WEIGHT_BITS) for l in enc_layers[1:]]
        self.encoder = QNet(enc, 0, in_bits, x_cal)
        self.context = None
        if cfg.arch == "ctx":
            # calibrated on the decoder's outputs and mean images, image i seen at phase i mod n
            n = N_CONTEXT_CALIBRATION
            self.context = QContext(model, self.decoder(z_cal[:n]), x_cal[:n], np.arange(n) % model.n_phases)

    def _z_int(self, z: np.ndarray) -> np.ndarray:
        return _round(np.ldexp(np.asarray(z, dtype=np.float64), self.z_exp))

    def mean_images(self, out: np.ndarray) -> np.ndarray:
        B, P = out.shape[0], self.cfg.n_pixels
        if self.likelihood == "bernoulli":
            return (out > 0).astype(np.float64)
        if self.likelihood == "gaussian":
            o = out.reshape(B, P, 2)[..., 0]
        else:
            o = out.reshape(B, P, 3, self.k)[:, :, 1, 0]
        mean = 127.5 + 127.5 * o
        return np.clip(_round(mean), 0.0, 255.0)


# ----------------------------------------------------------------------------- backend


_ROWS = 256  # rows of 257 edges per block in the table loops (fits in L2)


EXACT_ARCHS = ("mlp", "ctx")  # architectures this integer arithmetic implements


class ExactBackend:
    """Same interface as coding.FloatBackend; every output is reproducible bit for bit.

    `batch_split=k` evaluates the networks on sub-batches of k lanes (results are identical by
    construction; tests use it to show that batch composition does not matter).
    """

    path = "exact"

    def __init__(self, model: VAE, latent_bits: int, batch_split: int | None = None):
        if model.cfg.arch not in EXACT_ARCHS:
            raise InputError(f"the exact coder path supports architectures {', '.join(EXACT_ARCHS)}, not "
                             f"{model.cfg.arch!r}; use --coder-path float32")
        self.model = model
        self.buckets = ExactBuckets(latent_bits)
        self.latent_dim = model.cfg.latent_dim
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

    # -- p(x|z)
    def pixel_params(self, z_idx: np.ndarray):
        return self._split(self._pixel_params, np.asarray(z_idx, dtype=np.int64))

    def _pixel_params(self, z_idx: np.ndarray):
        if self.n_phases > 1:
            raise ModelError("a context model's pixel parameters depend on x: use phase_params per phase")
        out = self.net.decoder(self._centers_int[z_idx])
        return self.params_from_output(out)

    # -- p(x|z) of a context model, phase by phase (see coding.FloatBackend)
    def decoder_out(self, z_idx: np.ndarray) -> np.ndarray:
        return self._split(lambda z: self.net.decoder(self._centers_int[z]), np.asarray(z_idx, dtype=np.int64))

    def phase_params(self, out: np.ndarray, x_vis: np.ndarray, phase: int):
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
            mean = o[..., 0] * 127.5
            mean += 127.5
            std = self.exp(np.clip(o[..., 1], -5.0, 6.0))
            std *= 16.0                                                 # exp(c + ln 16)
            return np.ascontiguousarray(mean), std
        return self._logistic_tables(out.reshape(B, P, 3, self.cfg.mixtures))

    def _logistic_tables(self, o: np.ndarray) -> np.ndarray:
        """(B, P, 256) mixture tables: per component, bin masses are CDF differences by the tail
        trick (as for the posterior), CDF(e) = sigmoid((e - mean) / s), end bins take the tails."""
        B, P, _, K = o.shape
        mean = o[:, :, 1] * 127.5
        mean += 127.5
        log_s = np.clip(o[:, :, 2], -4.0, 6.0)
        # grid position in the sigmoid table per unit of (e - mean): e^-(c + ln 16) * 2^8
        pos_scale = self.exp(-log_s) * (self.sigmoid_neg.scale / 16.0)
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


_CACHE: dict = {}


def exact_networks(model: VAE) -> ExactNetworks:
    """The model's exact networks, cached per model object and weight version."""
    key = id(model)
    version = tuple((p.data_ptr(), p._version) for p in model.parameters())
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is model and hit[1] == version:
        return hit[2]
    net = ExactNetworks(model)
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[key] = (model, version, net)
    return net


def write_tables() -> None:
    TABLE_DIR.mkdir(parents=True, exist_ok=True)
    for name in TABLE_SPECS:
        a = build_table(name)
        np.save(TABLE_DIR / f"{name}.npy", a, allow_pickle=False)
        print(f"{name}: {len(a)} entries, sha256 {_sha(a)}")


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--write-tables"]:
        write_tables()
    else:
        print("usage: python -m bbans_vae.exact --write-tables")
