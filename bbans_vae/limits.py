"""Resource limits for hostile files and models, checked before anything large is allocated.

Every bound used at encode is used at decode (a file can ask for nothing the encoder would not
write), and decode's memory is bounded by a stated function of the header and the model
(`decode_memory_bytes`), checked against `--max-memory` (default: half of the available RAM)
before the model's coding tables, the output array or the payload are allocated.

    decode memory  =  64 MiB                               (allocator slack, torch workspaces)
                   +  2 x file bytes                       (payload words, the coders' copies)
                   +  3 x output bytes                     (decoded array, scaled copy, writer)
                   +  24 bytes x parameters                (float32 weights + exact-path copies)
                   +  setup bytes                          (exact path: integer networks calibrated on
                                                            256 latents; context nets on 64 images)
                   +  chains x round bytes per chain       (posterior tables D x 2^k, pixel
                                                            parameters, context-net patches)
(exact terms in `decode_memory_bytes`), with coefficients fitted to measured peaks on the
bundled models (benchmarks/results/fuzz/README.md): the estimate is 1.4-2.9x the measured increase.
"""
from __future__ import annotations

import dataclasses
import os
import re

from .errors import VaeCompressError

MAX_CHAINS = 4096
LATENT_BITS = (4, 14)              # 2^k latent buckets per dimension, encode and decode
MAX_REFINE_STEPS = 1000
MAX_IMPORTANCE_SAMPLES = 64       # K of the coupled K-sample bound (ans/importance.py)
MAX_TABLE_ENTRIES = 1 << 25        # float64 entries in one round's largest table (256 MiB)
MAX_FILE_BYTES = 1 << 34           # a .vae file larger than this is refused before reading
MAX_PARAMETERS = 64_000_000        # a model config declaring more is refused before building
MAX_MODEL_FILE_BYTES = 4 * MAX_PARAMETERS + (1 << 20)
MEMORY_FRACTION = 0.5              # default --max-memory: this fraction of the available RAM


class LimitError(VaeCompressError):
    """A file or model asks for more than the configured limits allow."""


# ----------------------------------------------------------------------------- sizes


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000 ** 4,
          "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """'500M', '2GiB', '1.5G', '1000000' -> bytes (K/M/G/T alone are binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 500M, 2G, 1.5GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory, else 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_max_memory() -> int:
    return int(MEMORY_FRACTION * available_memory_bytes())


# ----------------------------------------------------------------------------- models


def model_parameter_count(cfg) -> int:
    """Parameters of the model `cfg` describes, counted on torch's meta device (no memory)."""
    import torch
    from .models import build_model
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def check_model_size(cfg) -> int:
    n = model_parameter_count(cfg)
    if n > MAX_PARAMETERS:
        raise LimitError(f"the model config declares {n:,} parameters, more than the limit {MAX_PARAMETERS:,}")
    return n


def table_entries(cfg, n_chains: int, latent_bits: int) -> int:
    """Entries of the largest per-round table: posterior buckets or pixel tables, all lanes."""
    per_pixel = 256 if cfg.likelihood == "logistic" else 2
    return n_chains * max(cfg.n_latents << latent_bits, cfg.n_pixels * per_pixel * cfg.mixtures)


# Coefficients fitted to peaks measured with /usr/bin/time-like ru_maxrss on the bundled models
# (exact and float32 paths, 1..256 chains, latent bits 8 and 12; see benchmarks/results/fuzz/):
# every estimate is 1.4x-2.9x the measured increase.
_TABLE_COPIES = 2        # posterior bucket tables (D x (2^k + 1) float64) alive at once per chain
_PIXEL_COPIES = 6        # pixel parameter arrays per chain
_ACT_COPIES = 4          # network activations per chain
_CONTEXT_COPIES = 1      # context-net im2col patches for half the pixels (a phase is a quarter)
_MODEL_BYTES_PER_PARAM = 24   # float32 weights + float64 integer copies (+ split copies for context nets)
_SETUP_LATENTS = 256     # exact path: calibration batch through the networks
_SETUP_CONTEXT = 64      # exact path: calibration images through the context net (full im2col)
_BASE_BYTES = 64 << 20   # allocator slack, torch's first-call workspaces


def _widest_activation(cfg) -> int:
    """Activation values per image of the widest hidden layer: an MLP's width, or for a conv
    model its width times the 9 im2col taps over the block grid."""
    if cfg.arch != "conv":
        return max(cfg.hidden, default=0)
    return 9 * max(cfg.hidden, default=0) * (cfg.n_latents // cfg.latent_dim)


def _round_bytes_per_chain(cfg, latent_bits: int) -> int:
    P, D = cfg.n_pixels, cfg.n_latents
    k = {"bernoulli": 1, "gaussian": 2, "logistic": 3 * cfg.mixtures}.get(cfg.likelihood, 3 * cfg.mixtures)
    levels = 256 if cfg.likelihood == "logistic" else 2
    per = 8 * _TABLE_COPIES * D * ((1 << latent_bits) + 1)
    per += 8 * _PIXEL_COPIES * P * max(levels, k)
    per += 8 * _ACT_COPIES * (_widest_activation(cfg) + P * k)
    if cfg.context_channels:
        per += 8 * _CONTEXT_COPIES * (P // 2 + 1) * 9 * max(cfg.context_channels, k + 2)
    return per


def decode_memory_bytes(cfg, n_chains: int, latent_bits: int, output_bytes: int, file_bytes: int,
                        exact: bool, n_parameters: int | None = None) -> int:
    """Upper estimate of the memory decode allocates beyond the interpreter and torch:

        64 MiB + 2 x file + 3 x output + 24 B x parameters
        + exact path: 256 x 4 x 8 B x (widest layer + P x k) + 1.5 x 64 x P x 9 x context channels x 8 B
        + chains x [8 B x (2 D (2^k + 1) + 6 P max(levels, k) + 4 (widest layer + P x k)
                    + (P / 2) x 9 x context channels)]
    (P pixels, D latent dimensions, k decoder outputs per pixel, levels 2 or 256)."""
    params = n_parameters if n_parameters is not None else model_parameter_count(cfg)
    P = cfg.n_pixels
    k = {"bernoulli": 1, "gaussian": 2}.get(cfg.likelihood, 3 * cfg.mixtures)
    setup = 0
    if exact:
        # calibration runs at the model's size; conv models calibrate once at 32 x 32 for all sizes
        cal = dataclasses.replace(cfg, image_shape=(32, 32)) if cfg.arch == "conv" else cfg
        P_cal = cal.n_pixels
        setup = _SETUP_LATENTS * _ACT_COPIES * 8 * (_widest_activation(cal) + P_cal * k)
        if cfg.context_channels:
            setup += 3 * _SETUP_CONTEXT * P_cal * 9 * max(cfg.context_channels, k + 2) * 8 // 2
    return (_BASE_BYTES + 2 * file_bytes + 3 * output_bytes + _MODEL_BYTES_PER_PARAM * params + setup
            + n_chains * _round_bytes_per_chain(cfg, latent_bits))


def check_decode_memory(need: int, max_memory: int | None) -> None:
    cap = default_max_memory() if max_memory is None else max_memory
    if need > cap:
        raise LimitError(f"decoding this file needs about {format_bytes(need)} of memory, more than the limit "
                         f"{format_bytes(cap)} (--max-memory{'' if max_memory else ', default: half the available RAM'})")


def check_chains(n_chains: int, cfg, latent_bits: int, what: str = "--chains") -> None:
    """The chain-count and table bounds, the same at encode and decode."""
    if not 1 <= n_chains <= MAX_CHAINS:
        raise LimitError(f"{what} must be in 1..{MAX_CHAINS}, not {n_chains}")
    lo, hi = LATENT_BITS
    if not lo <= latent_bits <= hi:
        raise LimitError(f"latent bits must be in {lo}..{hi}, not {latent_bits}")
    if table_entries(cfg, n_chains, latent_bits) > MAX_TABLE_ENTRIES:
        raise LimitError(f"{n_chains} chains x 2^{latent_bits} latent buckets need too much memory per round; "
                         "use fewer chains or latent bits")
