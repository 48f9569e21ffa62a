"""Whole-file compression: validate pixels, code them in chains, wrap them in a container, and back.

`compress` returns the container bytes and a report: the file's sizes from `accounting.sizes_of`
(real bits and the encoder's estimates, separated), the coding settings and the time taken.
The -ELBO (a second forward pass over every image) is computed only when asked for.
"""
from __future__ import annotations

import time
from typing import Callable

import constriction
import numpy as np
import torch

from .accounting import sizes_of
from .ans.backends import FloatBackend
from .ans.chains import DEFAULT_LATENT_BITS, decode_images, decode_runs, encode_images, encode_runs
from .ans.refine import DEFAULT_REFINE_LR, RefineBackend
from . import limits
from .container import (ENGINES, Header, block_digests, file_block_ranges, images_digest, machine_fingerprint,
                        name_problem, pack, pixels_digest, printable, run_block_digests, unpack)
from .errors import ContainerError, InputError
from .models import VAE, sized_model
from .objectives import dataset_neg_elbo_bits

ENGINE = f"constriction {constriction.__version__}" if hasattr(constriction, "__version__") else "constriction 0.5.0"
MAX_CHAINS = limits.MAX_CHAINS
MAX_TABLE_ENTRIES = limits.MAX_TABLE_ENTRIES
START_MODES = ("auto", "plain", "cheap")


def table_entries(model: VAE, n_chains: int, latent_bits: int) -> int:
    """Entries of the largest per-round table: posterior buckets or pixel tables, all lanes."""
    return limits.table_entries(model.cfg, n_chains, latent_bits)


# "exact" decodes on any machine; measured on 10k MNIST test images (mlp-bin, mlp-paper, mlp-8bit):
# rate within +-0.001% of float32 (paired samples), 72-79% of its speed. Refinement needs float32.
DEFAULT_CODER_PATH = "exact"
# bundled model `encode` and the demo use per pixel kind: the best-rate portable ones
DEFAULT_MODELS = {"binary": "mnist-bin-ctx", "8bit": "mnist-ctx"}


def default_coder_path(model: VAE, refine_steps: int = 0) -> str:
    """"exact" where the model's architecture has it and no refinement is asked (refinement
    runs float gradients); "float32" otherwise. The choice is stored in the container."""
    from .exact import EXACT_ARCHS
    return DEFAULT_CODER_PATH if model.cfg.arch in EXACT_ARCHS and not refine_steps else "float32"


def lr_e4(refine_lr: float) -> int:
    """The refinement step size as the container stores it: an integer in units of 1e-4."""
    return int(round(refine_lr * 1e4))


def make_coder_backend(coder_path: str, model: VAE, latent_bits: int, refine_steps: int = 0,
                       refine_lr_e4: int = 0, batch_split: int | None = None):
    """The backend for a header's coder_path: "float32" (this machine's kernels) or "exact"
    (integer networks, decodable on any machine; `batch_split` evaluates it in sub-batches)."""
    if coder_path == "exact":
        if refine_steps:
            raise InputError("posterior refinement is not available on the exact coder path")
        from .exact import ExactBackend
        return ExactBackend(model, latent_bits, batch_split)
    if coder_path != "float32":
        raise InputError(f"unknown coder path {coder_path!r}; choose exact or float32")
    if refine_steps:
        return RefineBackend(model, latent_bits, refine_steps, refine_lr_e4 / 1e4)
    return FloatBackend(model, latent_bits)


def default_chains(n_images: int) -> int:
    """Chains trade batch size (speed) against one-time start cost (rate): 1 per 1,000 images.

    Each chain's first image is coded without bits-back (~200 bits extra for the bundled z=32
    model). Measured on the 10k mnist-bin test set: 10 chains +0.25% over the -ELBO, 20 chains
    +0.59%, 50 chains +1.3% (and ~1.3x faster than 10).
    """
    return int(min(32, max(1, n_images // 1000)))


def pixel_values(pixels: np.ndarray) -> np.ndarray:
    """The distinct values of a uint8 array, read in chunks: no sorted copy of the whole array
    (np.unique on 60k MNIST images: +47 MB and 2.3 s)."""
    seen = np.zeros(256, bool)
    flat = pixels.reshape(-1)
    for i in range(0, flat.size, 1 << 20):
        seen[flat[i:i + (1 << 20)]] = True
    return np.flatnonzero(seen)


def binary_scale(pixels: np.ndarray) -> int | None:
    """1 if every value is 0 or 1, 255 if every value is 0 or 255 (binary images), else None."""
    values = pixel_values(pixels)
    if np.all(np.isin(values, (0, 1))):
        return 1
    if np.all(np.isin(values, (0, 255))):
        return 255
    return None


def default_model_name(pixels) -> str:
    """The bundled model `encode` and the API use for these pixels (an array or a list of images):
    binary or 8-bit."""
    seen = np.zeros(256, bool)
    for run in image_runs(pixels):
        seen[pixel_values(run)] = True
    return DEFAULT_MODELS["8bit" if binary_scale(np.flatnonzero(seen).astype(np.uint8)) is None else "binary"]


def _shape_text(shape) -> str:
    """"13x37" (H x W) for gray, "13x37x3" (H x W x C) for colour."""
    return "x".join(str(int(s)) for s in shape)


def image_runs(images) -> list[np.ndarray]:
    """Images as runs of one shape, in order: an (N, H, W[, C]) array is one run; a list of
    (H, W[, C]) uint8 images is cut where the shape changes (any-size models code such lists)."""
    if isinstance(images, np.ndarray):
        return [images]
    images = [np.asarray(a) for a in images]
    if not images:
        raise InputError("no images given")
    for a in images:
        if a.ndim not in (2, 3) or a.dtype != np.uint8:
            raise InputError(f"expected (H, W) or (H, W, C) uint8 images, got {a.dtype} {a.shape}")
    runs, start = [], 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            runs.append(np.stack(images[start:i]))
            start = i
    return runs


def _sizes_error(model: VAE, runs: list[np.ndarray]) -> InputError:
    sizes = list(dict.fromkeys(_shape_text(r.shape[1:]) for r in runs))
    shown = ", ".join(sizes[:4]) + (", ..." if len(sizes) > 4 else "")
    return InputError(f"images have {len(sizes)} sizes ({shown}) but the model codes "
                      f"{_shape_text(model.cfg.array_shape)} images only; use a conv model (presets conv-bin, "
                      "conv-8bit), which codes any size")


def runs_symbols(model: VAE, runs: list[np.ndarray]) -> tuple[list[VAE], list[np.ndarray], int]:
    """Check every run fits the (any-size) model; returns (the model at each run's size, symbols
    per run, binary_scale over all runs). Raises InputError."""
    if len(runs) > 1 and not model.cfg.any_size:
        raise _sizes_error(model, runs)
    models = [sized_model(model, r.shape[1:]) for r in runs]
    if len(runs) == 1:
        symbols, scale = model_symbols(models[0], runs[0])
        return models, [symbols], scale
    for m, r in zip(models, runs):
        model_symbols(m, r[:0])                                 # shape and channel checks only
    if model.cfg.pixel_kind == "8bit":
        return models, runs, 0
    seen = np.zeros(256, bool)
    for r in runs:
        seen[pixel_values(r)] = True
    values = np.flatnonzero(seen).astype(np.uint8)
    scale = binary_scale(values)
    if scale is None:
        raise _not_binary(values)
    return models, [r if scale == 1 else r // np.uint8(255) for r in runs], scale


def model_symbols(model: VAE, pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Check pixels fit the model; returns (symbols, binary_scale). Raises InputError."""
    if pixels.ndim not in (3, 4) or pixels.dtype != np.uint8:
        raise InputError(f"expected an (N, H, W) or (N, H, W, C) uint8 array, got {pixels.dtype} {pixels.shape}")
    if tuple(pixels.shape[1:]) != model.cfg.array_shape:
        c = pixels.shape[3] if pixels.ndim == 4 else 1
        if model.cfg.any_size:
            raise InputError(f"images have {c} channel{'s' if c > 1 else ''} but the model codes "
                             f"{model.cfg.channels}-channel images (of any size)")
        channels = f" ({c} channels, the model {model.cfg.channels})" if c != model.cfg.channels else ""
        raise InputError(f"images are {_shape_text(pixels.shape[1:])}{channels} but the model codes "
                         f"{_shape_text(model.cfg.array_shape)} images")
    if model.cfg.pixel_kind == "8bit":
        return pixels, 0
    scale = binary_scale(pixels)
    if scale == 1:
        return pixels, 1
    if scale == 255:
        return pixels // np.uint8(255), 255
    raise _not_binary(pixel_values(pixels))


def _not_binary(values: np.ndarray) -> InputError:
    bad = values[~np.isin(values, (0, 1, 255))]
    example = int(bad[0]) if len(bad) else 1
    return InputError(f"the model codes binary images (values 0/1 or 0/255) but the input has value {example}; "
                      "binarize it first or use an 8-bit model")


def compress(model: VAE, model_name: str, model_sha256_hex: str, pixels: np.ndarray,
             names: list[str] | None = None, names_stem: str = "image", n_chains: int | None = None,
             latent_bits: int = DEFAULT_LATENT_BITS, with_neg_elbo: bool = False,
             progress: Callable[[int], None] | None = None, refine_steps: int = 0,
             refine_lr: float = DEFAULT_REFINE_LR, coder_path: str | None = None,
             workers: int = 1, importance_samples: int = 1, start: str = "auto",
             team=None) -> tuple[bytes | None, dict | None]:
    """`workers` processes code groups of chains in parallel on the exact coder path (the file is
    the same for any number); the float32 path codes in this process. `importance_samples` K > 1
    codes with the coupled K-sample bound (ans/importance.py). `start`: how a chain's first images
    (coded without bits back) code their latent: "plain" (the posterior mode at full precision),
    "cheap" (at the precision that makes each image shortest, ans/chains.push_cheap_plain) or
    "auto" (cheap when every chain codes one image, plain otherwise: files of several images
    per chain stay byte-identical to earlier versions). With a torchrun `team` (`distributed.Team`)
    every rank calls this and codes its share of the chains; rank 0 gets the file, byte-identical
    to a one-process run, the other ranks (None, None).

    `pixels`: an (N, H, W[, C]) uint8 array, or for any-size (conv) models also a list of
    (H, W[, C]) images of several sizes (one file; the header holds the shape runs)."""
    runs = image_runs(pixels)
    models, run_symbols, scale = runs_symbols(model, runs)
    model = models[0]
    N = sum(len(r) for r in runs)
    if len(runs) > 1 and (importance_samples > 1 or team is not None):
        raise InputError("images of several sizes in one file are coded by one process with one sample per "
                         "latent: drop --importance-samples / torchrun, or encode each size on its own")
    C = default_chains(N) if n_chains is None else n_chains
    if not 1 <= C <= MAX_CHAINS:
        raise InputError(f"--chains must be in 1..{MAX_CHAINS}")
    C = min(C, N)
    try:
        for m, r in zip(models, runs):
            limits.check_chains(min(C, len(r)), m.cfg, latent_bits)
    except limits.LimitError as e:
        raise InputError(str(e)) from None
    if not 0 <= refine_steps <= limits.MAX_REFINE_STEPS:
        raise InputError(f"--refine-steps must be in 0..{limits.MAX_REFINE_STEPS}")
    if not 1 <= importance_samples <= limits.MAX_IMPORTANCE_SAMPLES:
        raise InputError(f"--importance-samples must be in 1..{limits.MAX_IMPORTANCE_SAMPLES}")
    if importance_samples > 1 and refine_steps:
        raise InputError("--importance-samples and --refine-steps cannot be combined")
    if importance_samples > 1 and limits.table_entries(model.cfg, C * importance_samples, latent_bits) \
            > limits.MAX_TABLE_ENTRIES:
        raise InputError(f"{C} chains x {importance_samples} importance samples exceed the per-round table "
                         "limit; use fewer chains or samples")
    if start not in START_MODES:
        raise InputError(f"unknown start mode {start!r}; choose {', '.join(START_MODES)}")
    cheap_start = start == "cheap" or (start == "auto" and N <= C)
    refine_lr_e4 = lr_e4(refine_lr)
    if refine_steps and not 1 <= refine_lr_e4 <= 100_000:
        raise InputError("the refinement step size must be in 0.0001..10")
    if ENGINE not in ENGINES:
        raise InputError(f"this install's ANS engine ({ENGINE}) has no code in the container format; "
                         f"install {ENGINES[-1]}")
    for n in ([names_stem] if names is None else names):
        problem = name_problem(n)
        if problem is not None:
            raise InputError(f"image name '{printable(n)}' is not allowed: {problem}")
    if names is not None and len({n.casefold() for n in names}) != len(names):
        raise InputError("two images have the same name")
    if coder_path is None:
        coder_path = default_coder_path(model, refine_steps)
    backends = [make_coder_backend(coder_path, m, latent_bits, refine_steps, refine_lr_e4) for m in models]
    t0 = time.perf_counter()
    if len(runs) == 1:
        enc = encode_images(model, run_symbols[0], C, latent_bits, progress, backend=backends[0], workers=workers,
                            importance_samples=importance_samples, cheap_start=cheap_start, team=team)
        if enc is None:                                     # a torchrun rank other than 0
            return None, None
    else:
        enc = encode_runs(list(zip(backends, run_symbols)), C, progress, workers)
    seconds = time.perf_counter() - t0
    counts = [len(r) for r in runs]
    if len(runs) == 1:
        digest, checks = pixels_digest(runs[0]), block_digests(runs[0], len(enc.chain_words), refine_steps)
    else:
        images = [a for r in runs for a in r]
        digest, checks = images_digest(images), run_block_digests(images, counts, len(enc.chain_words), refine_steps)
    header = Header(model_name=model_name, model_sha256=bytes.fromhex(model_sha256_hex)[:8], engine=ENGINE,
                    torch_version=torch.__version__, coder_path=coder_path, pixel_kind=model.cfg.pixel_kind,
                    binary_scale=scale, height=runs[0].shape[1], width=runs[0].shape[2], n_images=N,
                    latent_bits=latent_bits, refine_steps=refine_steps, refine_lr_e4=refine_lr_e4 if refine_steps else 0,
                    chain_words=[len(w) for w in enc.chain_words],
                    plain_images=enc.plain_images, names_stem=None if names is not None else names_stem,
                    names=names, pixels_sha256=digest,
                    machine=machine_fingerprint() if coder_path == "float32" else None,
                    block_checks=checks, channels=model.cfg.channels,
                    shapes=[(n, *m.cfg.image_shape, m.cfg.channels) for n, m in zip(counts, models)]
                    if len(runs) > 1 else None, importance_samples=importance_samples, cheap_start=cheap_start)
    data = pack(header, enc.chain_words)
    nelbo = (float(sum(dataset_neg_elbo_bits(m, x).sum() for m, x in zip(models, run_symbols)))
             if with_neg_elbo else None)
    report = sizes_of(header, enc.chain_words, 8 * len(data), initial_bits=enc.initial_bits,
                      ideal_bits=enc.ideal_bits_total, neg_elbo_bits=nelbo, channels=model.cfg.channels)
    report.update(refine_steps=refine_steps, latent_bits=latent_bits, coder_path=coder_path,
                  importance_samples=importance_samples, cheap_start=cheap_start,
                  encode_seconds=seconds, encode_images_per_second=N / seconds if seconds > 0 else None)
    return data, report


FLOAT32_ELSEWHERE = ("this file was encoded on the float32 path on another machine configuration: decode it "
                     "there, or re-encode with the default exact path")


def decompress(data: bytes, model: VAE, model_sha256_hex: str,
               progress: Callable[[int], None] | None = None,
               batch_split: int | None = None, workers: int = 1,
               max_memory: int | None = None) -> tuple[np.ndarray, Header, dict]:
    """Decode a container with `model`; verifies model hash and pixel checksums. Pixels as given:
    an (N, H, W[, C]) array, or a list of per-image arrays for a file of several shapes.

    `batch_split` (exact coder path only) runs the networks on sub-batches of that many chains;
    `workers` processes decode groups of chains in parallel (exact coder path).
    """
    header, chains = unpack(data)
    return decompress_parsed(header, chains, model, model_sha256_hex, progress, batch_split, max_memory,
                             workers=workers)


# Version-1 files hold no block checksums: a corrupt or crafted one is caught only after decoding
# everything it declares. Without `trust_v1`, decode bounds that work: images x (1 + refine steps).
V1_UNCHECKED_WORK = 1000


def check_decodable(header: Header, model: VAE, model_sha256_hex: str, max_memory: int | None = None,
                    max_output_bytes: int | None = None, trust_v1: bool = False) -> int:
    """Everything decode checks before allocating: model, engine, shapes, limits, memory (returns
    the memory estimate in bytes). Raises ContainerError / LimitError."""
    if header.version == 1 and not trust_v1 and header.n_images * (1 + header.refine_steps) > V1_UNCHECKED_WORK:
        raise ContainerError(f"version-1 file declaring {header.n_images} images (refine steps {header.refine_steps}): "
                             "it holds no block checksums, so a corrupt one is found only after decoding all of "
                             "them; if you trust it, decode with --trust-v1 (and re-encode it to version 2)")
    want = bytes.fromhex(model_sha256_hex)[:len(header.model_sha256)]
    if header.model_sha256 != want:
        named = f" {printable(header.model_name)!r}" if header.model_name else ""
        raise ContainerError(f"this file was encoded with model{named} (weights sha256 {header.model_sha256.hex()}...), "
                             f"not with the model given ({model_sha256_hex[:16]}...); pass --model with the "
                             "encoder's checkpoint")
    if header.engine != ENGINE:
        raise ContainerError(f"this file was written with {printable(header.engine)}; this install has {ENGINE}")
    if header.shapes and not model.cfg.any_size:
        raise ContainerError("this file holds images of several shapes; this model codes "
                             f"{model.cfg.image_shape[0]}x{model.cfg.image_shape[1]} images")
    # version 2 stores the channel count; version 1 holds H and W only (the model's hash pins C)
    if header.version >= 2 and any(c != model.cfg.channels for _, _, _, c in header.shape_runs):
        raise ContainerError(f"header says {header.channels}-channel images; the model codes {model.cfg.channels}")
    shape_ok = model.cfg.any_size or header.image_shape == tuple(model.cfg.image_shape)
    if header.pixel_kind != model.cfg.pixel_kind or not shape_ok:
        raise ContainerError(f"header says {header.pixel_kind} {header.height}x{header.width} images; "
                             "the model does not code those")
    models = [sized_model(model, (h, w)) for _, h, w, _ in header.shape_runs]
    try:
        for m, (n, *_) in zip(models, header.shape_runs):
            limits.check_chains(min(header.n_chains, n) if header.shapes else header.n_chains, m.cfg,
                                header.latent_bits, what="the file's chain count")
    except limits.LimitError as e:
        raise ContainerError(f"corrupt header: {e}") from None
    max_images = 32 * sum(header.chain_words) + header.n_chains
    if header.n_images > max_images:
        raise ContainerError(f"corrupt header: {header.n_images} images cannot fit in {sum(header.chain_words)} words")
    # H x W x C per image (v1 headers hold no C; any-size models are newer than version 2)
    output_bytes = header.output_bytes if model.cfg.any_size else header.n_images * model.cfg.n_pixels
    if max_output_bytes is not None and output_bytes > max_output_bytes:
        raise limits.LimitError(f"this file decodes to {output_bytes:,} bytes of pixels, more than "
                                f"--max-output-bytes {max_output_bytes:,}")
    n_parameters = sum(p.numel() for p in model.parameters())
    need = max(limits.decode_memory_bytes(m.cfg, header.n_chains * header.importance_samples,
                                          header.latent_bits, output_bytes,
                                          header.header_bytes + 4 * sum(header.chain_words),
                                          exact=header.coder_path == "exact", n_parameters=n_parameters)
               for m in models)
    limits.check_decode_memory(need, max_memory)
    return need


class _BlockChecks:
    """Called after every decoded round (rounds run last-first): checks each block's pixels
    against its stored 2-byte digest as soon as the block is complete (`container.block_ranges`)."""

    def __init__(self, header: Header):
        counts = [n for n, *_ in header.shape_runs]
        self.ranges = (file_block_ranges(header.n_images, header.n_chains, header.refine_steps, counts)
                       if header.block_checks else [])
        self.checks = header.block_checks
        self.scale = np.uint8(header.binary_scale) if header.pixel_kind == "binary" else None
        self.parts: list[tuple[int, np.ndarray]] = []
        self.block = 0

    def __call__(self, idx: np.ndarray, x: np.ndarray) -> None:
        if self.block >= len(self.ranges):
            return
        first = int(idx[0])
        self.parts.append((first, x if self.scale is None else x * self.scale))
        lo, _ = self.ranges[self.block]
        if first != lo:
            return
        digest = images_digest([p for _, p in sorted(self.parts, key=lambda t: t[0])], 2)   # shapes may differ
        self.parts = []
        j = self.block
        self.block += 1
        if digest != self.checks[2 * j:2 * j + 2]:
            raise ContainerError(f"corrupt payload: the decoded pixels of block {j + 1} of {len(self.ranges)} "
                                 "(in decoding order) do not match their checksum; nothing was written")


def decompress_parsed(header: Header, chains: list[np.ndarray], model: VAE, model_sha256_hex: str,
                      progress: Callable[[int], None] | None = None, batch_split: int | None = None,
                      max_memory: int | None = None, max_output_bytes: int | None = None, workers: int = 1,
                      trust_v1: bool = False, team=None) -> tuple[np.ndarray | None, Header, dict]:
    """`decompress` for a container already read (`container.read_file` / `unpack`). With a
    torchrun `team`, every rank decodes its share of the chains and rank 0 checks and returns the
    pixels; the other ranks return (None, header, {})."""
    check_decodable(header, model, model_sha256_hex, max_memory, max_output_bytes, trust_v1)
    t0 = time.perf_counter()
    models = [sized_model(model, (h, w)) for _, h, w, _ in header.shape_runs]
    try:
        backends = [make_coder_backend(header.coder_path, m, header.latent_bits, header.refine_steps,
                                       header.refine_lr_e4, batch_split) for m in models]
    except InputError as e:
        raise ContainerError(f"corrupt header: {e}") from None
    try:
        if header.shapes:
            runs = [(b, n, m.cfg.array_shape) for b, m, (n, *_) in zip(backends, models, header.shape_runs)]
            if team is not None or header.importance_samples > 1:
                raise ContainerError("a file of several image sizes with importance samples, or decoded under "
                                     "torchrun: not supported; decode it in one process")
            pixels = [a for r in decode_runs(runs, chains, header.plain_images, progress, workers,
                                             on_round=_BlockChecks(header)) for a in r]
        else:
            pixels = decode_images(models[0], chains, header.n_images, models[0].cfg.array_shape,
                                   header.plain_images, header.latent_bits, progress, backend=backends[0],
                                   workers=workers, on_round=_BlockChecks(header),
                                   importance_samples=header.importance_samples, cheap_start=header.cheap_start,
                                   team=team)
            if pixels is None:                              # a torchrun rank other than 0
                return None, header, {}
        for a in (pixels if header.shapes else [pixels]):
            if header.pixel_kind == "binary":
                a *= np.uint8(header.binary_scale)                   # in place: no second image array
        if images_digest(pixels if header.shapes else [pixels], len(header.pixels_sha256)) != header.pixels_sha256:
            raise ContainerError("decoded pixels do not match the stored checksum: the file is corrupt; "
                                 "nothing was written")
    except ContainerError as e:
        if header.coder_path == "float32":
            if header.version >= 2 and header.machine != machine_fingerprint():
                raise ContainerError(FLOAT32_ELSEWHERE) from None
            if header.version == 1:
                raise ContainerError(f"{FLOAT32_ELSEWHERE} (or it is corrupt: {e})") from None
        raise
    seconds = time.perf_counter() - t0
    return pixels, header, {"n_images": header.n_images, "decode_seconds": seconds,
                            "decode_images_per_second": header.n_images / seconds if seconds > 0 else None}
