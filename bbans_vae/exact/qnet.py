"""The VAE's networks as exact integer networks: quantised layers, their calibration, and the
context net as integer GEMMs over im2col patches (the rules are in the package docstring)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ModelError
from ..models import VAE
from ..models.likelihoods import MEAN_HALF_RANGE
from .tables import load_table

HEADROOM_BITS = 6             # activation range above the calibration maximum
N_CALIBRATION = 256
N_CONTEXT_CALIBRATION = 64    # of those, for a context net (its patches are 9x wider)
WEIGHT_BITS = 18
LO_WEIGHT_BITS = 18           # context nets: weights of WEIGHT_BITS + LO_WEIGHT_BITS bits (QSplitLayer)
FIRST_WEIGHT_BITS = 24
BAND_PATCH_VALUES = 1 << 21     # im2col values per band of rows when a conv net runs on a large grid
CONTEXT_BAND_VALUES = 1 << 16   # values per band of rows when a 1x1 context net runs on a large image
ACC_BITS = 51                 # |sum of products| < 2^51, |bias| <= 2^51: all partial sums < 2^52


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
    w_t: np.ndarray            # (in, out) float64, integer-valued, |w| <= 2^wb
    b: np.ndarray              # (out,) float64 integer-valued, accumulator scale
    acc_exp: np.ndarray        # (out,) accumulator value = acc * 2^-acc_exp
    in_bits: int               # inputs are integers with |a| < 2^in_bits
    # set for hidden layers once the next scale is calibrated:
    mult: np.ndarray | None = None   # (out,) 2^(s_next - acc_exp): acc -> next activation ints
    clip: float = 0.0                # 2^AB_next - 1

    def accumulate(self, a: np.ndarray) -> np.ndarray:
        # numpy's BLAS GEMM: 2-3x torch's float64 one on the measured CPUs; exact in any order
        acc = a @ self.w_t
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

    w_lo_t: np.ndarray | None = None
    lo_bits: int = 0

    def __post_init__(self):
        # hi and lo side by side: one GEMM with twice the columns gives each column the same exact
        # integer sum as two GEMMs, ~1.7x faster on these skinny shapes
        self.w_hilo_t = np.ascontiguousarray(np.concatenate([self.w_t, self.w_lo_t], 1))

    def accumulate(self, a: np.ndarray) -> np.ndarray:
        n = self.w_t.shape[1]
        both = a @ self.w_hilo_t
        acc = both[:, :n]
        acc *= 2.0 ** self.lo_bits
        acc += both[:, n:]
        acc += self.b
        return np.ascontiguousarray(acc)


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
        return QLayer(np.ascontiguousarray(w_int.T), b_int, acc_exp, in_bits)

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
        return QSplitLayer(np.ascontiguousarray(self.w_hi.T), b, acc_exp, in_bits,
                           w_lo_t=np.ascontiguousarray(self.w_lo.T), lo_bits=self.lo_bits)


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


def _prepared_encoder(layers: list, pixel_kind: str) -> tuple[list, int]:
    """An encoder's prepared layers (Linear or Conv2d) and its input bits: the raw pixel integers
    ({0,1}: 1 bit, 0..255: 8 bits, the 1/255 folded into the first layer's weights, which get up
    to FIRST_WEIGHT_BITS, fewer if the accumulator needs it)."""
    in_bits = 1 if pixel_kind == "binary" else 8
    divide = 1.0 if pixel_kind == "binary" else 255.0
    wb = FIRST_WEIGHT_BITS
    first = _Prepared.of(layers[0], wb, divide)
    while first.input_bits() < in_bits:
        wb -= 1
        first = _Prepared.of(layers[0], wb, divide)
    return [first] + [_Prepared.of(l, WEIGHT_BITS) for l in layers[1:]], in_bits


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


def _same_convs(seq: torch.nn.Sequential, what: str) -> list[torch.nn.Conv2d]:
    """The convolutions of a Conv2d/ReLU stack, checked to be same-padded odd square ones."""
    convs = [m for m in seq if isinstance(m, torch.nn.Conv2d)]
    others = [m for m in seq if not isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU))]
    if others or any(c.stride != (1, 1) or c.kernel_size[0] != c.kernel_size[1] or c.kernel_size[0] % 2 == 0
                     or c.padding != (c.kernel_size[0] // 2,) * 2 or c.dilation != (1, 1) for c in convs):
        raise ModelError(f"the exact coder path supports {what} of same-padded odd square convolutions with ReLU")
    return convs


class QConvNet:
    """A stack of same-padded odd square convolutions with ReLU on one grid, as integer GEMMs
    over im2col patches: (B, h, w, C) integer inputs (scale 2^-in_exp) -> (B, h, w, out) exact
    float64 outputs. Each output row reads only its own patch, so neither the batch nor the
    grid size changes a value."""

    def __init__(self, convs: list[torch.nn.Conv2d], prepared: list, in_exp: int, in_bits: int,
                 chunks: list[np.ndarray]):
        self.ksize = [c.kernel_size[0] for c in convs]
        self.layers = _calibrate(prepared, in_exp, in_bits, chunks, lambda i, a: _im2col(a, self.ksize[i]))

    def __call__(self, a: np.ndarray) -> np.ndarray:
        for i, q in enumerate(self.layers):
            a = _banded(q.hidden if i < len(self.layers) - 1 else q.output, a, self.ksize[i])
        return a


def _banded(fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray, k: int) -> np.ndarray:
    """fn over the k x k im2col patches of (B, h, w, C) `a` -> (B, h, w, out), on bands of rows
    (with their k // 2 rows of halo) so the patches of a large grid never exist all at once; each
    output row reads only its own patch, so the values are those of one call."""
    B, h, w, C = a.shape
    rows = max(1, BAND_PATCH_VALUES // (B * w * C * k * k))
    if h <= rows:
        return fn(_im2col(a, k)).reshape(B, h, w, -1)
    p, parts = k // 2, []
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        s0, s1 = max(0, r0 - p), min(h, r1 + p)
        at = np.zeros((s1 - s0, w), bool)
        at[r0 - s0:r1 - s0] = True
        parts.append(fn(_im2col(a[:, s0:s1], k, at)).reshape(B, r1 - r0, w, -1))
    return np.concatenate(parts, axis=1)


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
        self.C = cfg.channels
        self.k = model.likelihood.params_per_pixel
        self.phase = model.phase.cpu().numpy()
        convs = _same_convs(model.context, "context nets")
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
        """(B, H, W, C*(k + 2)) integer input: h, visible values, mask; vis (B or 1, P) bool over
        the P = H*W*C values. Channels ordered as the torch net's input: h (channel-major), x, mask."""
        B, HW, C, k = out.shape[0], self.H * self.W, self.C, self.k
        h = np.ldexp(out.reshape(B, HW, C * k), self.in_exp)
        np.clip(h, -self.in_clip, self.in_clip, out=h)
        h = _round(h)
        vis = np.broadcast_to(vis, (B, HW * C)).reshape(B, HW, C)
        xi = np.where(vis, self.pixel_ints[np.asarray(x, dtype=np.int64).reshape(B, HW, C)], 0.0)
        m = np.where(vis, self.one, 0.0)
        return np.concatenate([h, xi, m], -1).reshape(B, self.H, self.W, C * (k + 2))

    def at(self, height: int, width: int, phase: np.ndarray) -> "QContext":
        """The same integer net for H x W images with coding phases `phase` (conv models)."""
        view = copy.copy(self)
        view.H, view.W, view.phase = height, width, phase
        return view

    def __call__(self, out: np.ndarray, x: np.ndarray, vis: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        """out (B, P*k) exact decoder output, x (B, P) pixel symbols, vis (P,) bool -> out +
        correction (B, P*k). With `sel` (P,) bool, only the pixels of sel are corrected (each layer
        runs only where a later layer reads it); the others keep out's values. A net of 1x1
        convolutions (the conv colour models' channel context) runs on bands of image rows, so a
        photo's memory stays bounded; a pixel reads only itself, so the values are the same."""
        n = self.W * self.C                                         # values per image row
        rows = max(1, CONTEXT_BAND_VALUES // (len(out) * n))
        if max(self.ksize) > 1 or self.H <= rows:
            return self._call(out, x, vis, sel)
        k, parts = self.k, []
        for r0 in range(0, self.H, rows):
            a, b = r0 * n, min(self.H, r0 + rows) * n
            band = self.at(b // n - r0, self.W, self.phase[a:b])
            parts.append(band._call(out[:, a * k:b * k], x[:, a:b], vis[a:b], None if sel is None else sel[a:b]))
        return np.concatenate(parts, axis=1)

    def _call(self, out: np.ndarray, x: np.ndarray, vis: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
        B, H, W, k = out.shape[0], self.H, self.W, self.k * self.C
        a = self._input(out, x, vis[None, :])
        # the pixels to compute: those holding a selected value (a pixel's C*k outputs come together)
        sel2 = np.ones((H, W), bool) if sel is None else sel.reshape(H, W, self.C).any(-1)
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
        res[:, sel2.reshape(-1)] += corr.reshape(B, -1, k)
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
        enc, in_bits = _prepared_encoder(_linears(model.encoder), cfg.pixel_kind)
        self.encoder = QNet(enc, 0, in_bits, x_cal)
        self.context = None
        if cfg.has_context:
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
        mean = MEAN_HALF_RANGE + MEAN_HALF_RANGE * o
        return np.clip(_round(mean), 0.0, 255.0)


CONV_CALIBRATION_BLOCKS = 8   # conv models are calibrated on 32 x 32 images (8 x 8 latent blocks)


class ExactConvNetworks(ExactNetworks):
    """A conv model's (models/conv.py) encoder and decoder as exact integer networks, for any image
    size (`at`). Calibrated once, on N_CALIBRATION (decoder) and N_CONTEXT_CALIBRATION (encoder,
    context net) 32 x 32 images, like ExactNetworks; every layer is a QLayer on im2col patches of
    the block grid, and space-to-depth, padding and cropping only move values."""

    def __init__(self, model: VAE):
        from ..models.conv import STRIDE
        cfg = model.cfg
        self.cfg, self.likelihood, self.k, self.stride = cfg, cfg.likelihood, cfg.mixtures, STRIDE
        self.context = None
        g = CONV_CALIBRATION_BLOCKS
        cal = model.at(g * STRIDE, g * STRIDE)
        dec_convs = _same_convs(model.decoder, "conv models")
        dec = [_Prepared.of(c, WEIGHT_BITS) for c in dec_convs]
        self.z_bits = min(dec[0].input_bits(), 40)                       # bucket centres: |z| < 4 = 2^2
        self.z_exp = self.z_bits - 3
        centers14 = load_table("normal_quantile")[1::2]
        n = N_CONTEXT_CALIBRATION
        z_cal = self._z_int(_calibration_latents(centers14, N_CALIBRATION, cal.cfg.n_latents))
        z_grid = z_cal.reshape(N_CALIBRATION, g, g, cfg.latent_dim)
        self.decoder_grid = QConvNet(dec_convs, dec, self.z_exp, self.z_bits,
                                     [z_grid[i:i + n] for i in range(0, N_CALIBRATION, n)])
        self.cfg = cal.cfg                                                # mean_images at the calibration size
        out_cal = self.at(g * STRIDE, g * STRIDE).decoder(z_cal[:n])
        x_cal = self.mean_images(out_cal)
        self.cfg = cfg
        enc_convs = _same_convs(model.encoder, "conv models")
        enc, in_bits = _prepared_encoder(enc_convs, cfg.pixel_kind)
        self.encoder_grid = QConvNet(enc_convs, enc, 0, in_bits, [self._blocks(x_cal, g * STRIDE, g * STRIDE)])
        if cfg.has_context:
            self.context = QContext(cal, out_cal, x_cal, np.arange(n) % cal.n_phases)

    def _blocks(self, a: np.ndarray, height: int, width: int) -> np.ndarray:
        """(B, H*W*C) pixel integers -> (B, h4, w4, 16 C) zero-padded 4x4 blocks, channels ordered
        (c, dy, dx) as torch's pixel_unshuffle."""
        B, C, s = len(a), self.cfg.channels, self.stride
        h4, w4 = -(-height // s), -(-width // s)
        padded = np.zeros((B, h4 * s, w4 * s, C))
        padded[:, :height, :width] = a.reshape(B, height, width, C)
        g = padded.reshape(B, h4, s, w4, s, C).transpose(0, 1, 3, 5, 2, 4)
        return np.ascontiguousarray(g).reshape(B, h4, w4, C * s * s)

    def at(self, height: int, width: int) -> "SizedConvNetworks":
        return SizedConvNetworks(self, height, width)


class SizedConvNetworks:
    """ExactConvNetworks at one image size: the encoder/decoder/context interface of ExactNetworks
    (flat (B, P) pixels in, [mu | raw std] and (B, P*k) decoder outputs out)."""

    def __init__(self, nets: ExactConvNetworks, height: int, width: int):
        from ..models.context import coding_phases
        self.nets, self.H, self.W = nets, height, width
        s, C = nets.stride, nets.cfg.channels
        self.h4, self.w4 = -(-height // s), -(-width // s)
        self.context = None
        if nets.context is not None:
            phase = coding_phases(height, width, C, spatial=False).numpy()
            self.context = nets.context.at(height, width, phase)
        self._z_int = nets._z_int

    def encoder(self, a: np.ndarray) -> np.ndarray:
        """(B, P) pixel integers -> (B, 2 n_latents): means, then pre-softplus stds (latents
        ordered block row, block column, channel, as ConvVAE.posterior)."""
        B, D = len(a), self.nets.cfg.latent_dim
        h = self.nets.encoder_grid(self.nets._blocks(a, self.H, self.W))         # (B, h4, w4, 2D)
        return np.concatenate([h[..., :D].reshape(B, -1), h[..., D:].reshape(B, -1)], 1)

    def decoder(self, z_int: np.ndarray) -> np.ndarray:
        """(B, n_latents) latent integers -> (B, P * k) exact decoder outputs (ConvVAE.decode's layout)."""
        B, s = len(z_int), self.nets.stride
        g = self.nets.decoder_grid(z_int.reshape(B, self.h4, self.w4, self.nets.cfg.latent_dim))
        ck = g.shape[-1] // (s * s)                                              # C * k planes
        pix = g.reshape(B, self.h4, self.w4, ck, s, s).transpose(0, 1, 4, 2, 5, 3)
        pix = np.ascontiguousarray(pix).reshape(B, self.h4 * s, self.w4 * s, ck)[:, :self.H, :self.W]
        return np.ascontiguousarray(pix).reshape(B, -1)
