"""The `.vae` container: a small versioned binary header, then the chains' ANS words.

Version 2 (written; integers are unsigned LEB128 varints unless a width is given):

    magic            4 bytes   b"VAEC"
    version          u8        2
    header_len       varint    bytes of the header that follows (<= 1 MiB)
    header:
      flags          varint    bit 0: coder path exact (else float32); bit 1: 8-bit pixels (else
                               binary); bit 2: a binary 1 was the value 255 in the input (else 1);
                               bit 3: refinement fields follow; bits 4-5: names mode (0: "image_<i:05d>",
                               1: "<stem>_<i:05d>", 2: explicit); other bits must be 0
      model_sha256   8 bytes   first 8 bytes of sha256(model.safetensors)
      engine         varint    index in ENGINES (the ANS engine and its precisions)
      machine        u32 LE    float32 path only: `machine_fingerprint()` of the encoder (torch
                               version and CPU kernels), to tell "another machine" from "corrupt"
      latent_bits    varint    2^k equal-mass latent buckets per dimension (limits.LATENT_BITS)
      refine_steps   varint    only with flag bit 3: 1..limits.MAX_REFINE_STEPS
      refine_lr      varint    only with flag bit 3: refinement Adam step size x 10^4
      shapes         varint R >= 1 runs, then R x (count, height, width, channels): images in
                               order; one run when all images share a shape. n_images = sum(count)
      n_chains       varint    then n_chains varints: 32-bit words per chain
      plain          varint count, then varint gaps: images coded without bits-back
      names          mode 1: str stem; mode 2: n_images strs (str = varint length + UTF-8;
                               every name is in the safe set of `check_name`)
      pixels_sha256  8 bytes   first 8 bytes of sha256 of all original pixels (image order, uint8)
      block_checks   2 bytes per block in decode order, only if there is more than one block
                               (`block_ranges`: the last R rounds, then blocks of 2R, 4R, ...
                               rounds): first 2 bytes of sha256 of each block's original pixels,
                               so decoding refuses random data after one small block of work
                               instead of at the end
      crc32          u32 LE    zlib.crc32 of every byte of the file before it, then the payload:
                               the header (names included) and the payload are all covered
    payload          sum(chain_words) little-endian u32 words, chain after chain; nothing after

Version 3 (written only when a file uses one of its features, so that every other file stays
byte-identical to version 2): the version 2 layout with two more flag bits and shorter digests,

      flags          bit 6: plain images use cheap starts (ans/chains.push_cheap_plain: each codes
                     its latent at its own precision, read from the payload); bit 7: an
                     `importance_samples` varint (2..limits.MAX_IMPORTANCE_SAMPLES) follows
                     latent_bits (ans/importance.py: the coupled K-sample bound)
      model_sha256   4 bytes   (enough to refuse a wrong model; found by this prefix)
      pixels_sha256  4 bytes   (with the block checks and the CRC-32)

One image in its own file: 38 header bytes in version 2, 30 in version 3.

Version 1 (read only; files written before 2026-12) differs: the model is named by a string and
16 bytes of its sha256; engine and torch version are strings; pixel kind, scale and coder path are
bytes; one (height, width) for all images; 16 bytes of pixel sha256; the CRC covers only the
payload (names are not covered). It is read with the same limits as version 2.

Everything read is bounds-checked before any allocation; any violation is a `ContainerError`.
Counts are bounded by the header length before lists are built, and chain lengths by the file size.
"""
from __future__ import annotations

import hashlib
import os
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import limits
from .errors import ContainerError

MAGIC = b"VAEC"
VERSION = 2                      # written unless a file uses a version-3 feature
READ_VERSIONS = (1, 2, 3)
V3_DIGEST_BYTES = 4
MAX_HEADER_BYTES = 1 << 20
MAX_IMAGES = 100_000_000
MAX_SIDE = 1 << 15
MAX_PIXELS_PER_IMAGE = 1 << 24
MAX_CHANNELS = 4
MAX_NAME_BYTES = 255
PIXEL_KINDS = ("binary", "8bit")
CODER_PATHS = ("float32", "exact")
ENGINES = ("constriction 0.5.0",)   # 24-bit probabilities, 32-bit words; append, never reorder
NAMES_DEFAULT, NAMES_STEM, NAMES_EXPLICIT = 0, 1, 2
DEFAULT_STEM = "image"
_KNOWN_FLAGS = 0x3F
_KNOWN_FLAGS_V3 = 0xFF
FLAG_CHEAP_START, FLAG_IMPORTANCE = 1 << 6, 1 << 7


@dataclass
class Header:
    model_name: str                # version 1 only ("" in version 2: models are found by hash)
    model_sha256: bytes            # 8 bytes (version 2) or 16 (version 1)
    engine: str
    torch_version: str             # version 1 only (informational)
    coder_path: str
    pixel_kind: str
    binary_scale: int
    height: int
    width: int
    n_images: int
    latent_bits: int
    refine_steps: int
    chain_words: list[int]
    plain_images: list[int]
    names_stem: str | None         # indexed names "<stem>_<i:05d>"; or
    names: list[str] | None        # explicit names
    pixels_sha256: bytes           # 8 bytes (version 2) or 16 (version 1)
    payload_crc32: int = 0
    refine_lr_e4: int = 0          # refinement step size x 10^4
    channels: int = 1
    shapes: list[tuple[int, int, int, int]] | None = None  # runs (count, H, W, C); None: all (H, W, C)
    machine: int | None = None     # float32 path: the encoder's machine_fingerprint() (version 2)
    block_checks: bytes = b""      # 2 bytes per block (version 2, more than one block)
    version: int = VERSION
    header_bytes: int = 0          # bytes before the payload (magic to crc), set when read
    importance_samples: int = 1    # K of the coupled K-sample bound (version 3)
    cheap_start: bool = False      # plain images code their latent at their own precision (version 3)

    @property
    def file_version(self) -> int:
        """The version `pack` writes for these fields: 3 only where a version-3 feature is used."""
        return 3 if self.importance_samples > 1 or self.cheap_start else 2

    @property
    def n_chains(self) -> int:
        return len(self.chain_words)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def shape_runs(self) -> list[tuple[int, int, int, int]]:
        return list(self.shapes) if self.shapes else [(self.n_images, self.height, self.width, self.channels)]

    @property
    def output_bytes(self) -> int:
        """Bytes of the decoded pixels (uint8)."""
        return sum(n * h * w * c for n, h, w, c in self.shape_runs)

    def image_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [f"{self.names_stem or DEFAULT_STEM}_{i:05d}" for i in range(self.n_images)]


def pixels_digest(pixels: np.ndarray, n: int = 8) -> bytes:
    """First n bytes of sha256 of the pixels' bytes (C order, uint8); no copy for contiguous input."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(memoryview(a).cast("B")).digest()[:n]


# ----------------------------------------------------------------------------- blocks


BLOCK_IMAGES = 128   # the first checked block: about this many images ...
BLOCK_ROUNDS = 32    # ... and at most this many rounds (both divided by 1 + refinement steps)


def block_rounds(n_chains: int, refine_steps: int) -> int:
    """Rounds of the first checked block: about BLOCK_IMAGES images and at most BLOCK_ROUNDS
    rounds, both divided by 1 + refine_steps, and >= 1 round. Decode work before the first check
    is then at most 32 one-chain rounds (~1 s for the bundled context models on one core) or one
    round of all chains."""
    scale = 1 + refine_steps
    return max(1, min(-(-max(1, BLOCK_IMAGES // scale) // n_chains), BLOCK_ROUNDS // scale))


def block_ranges(n_images: int, n_chains: int, refine_steps: int) -> list[tuple[int, int]]:
    """Image ranges [lo, hi) of the checked blocks in decode order. Rounds are decoded last-first;
    the first block is the last R rounds (`block_rounds`), each next block twice as many rounds
    as the one before, the final one what is left. So random data is refused after one small
    block, corrupt data after at most about twice the work of the valid part before it, and a
    file holds only ~log2(rounds / R) checksums."""
    C = max(1, min(n_chains, n_images))
    end, size, out = -(-n_images // C), block_rounds(C, refine_steps), []
    while end > 0:
        start = max(0, end - size)
        out.append((start * C, min(end * C, n_images)))
        end, size = start, 2 * size
    return out


def run_block_ranges(counts: list[int], n_chains: int, refine_steps: int) -> list[tuple[int, int]]:
    """`block_ranges` of a file of several shape runs, coded one after another on the same chains
    (`ans.chains.encode_runs`: run r on min(C, n_r) chains): the rounds of every run in decode
    order (last run first, each run's rounds last first), grouped R, 2R, 4R, ... rounds a block."""
    rounds, offset = [], 0
    for n in counts:
        C = max(1, min(n_chains, n))
        rounds.append([(offset + t * C, min(offset + (t + 1) * C, offset + n)) for t in range(-(-n // C))])
        offset += n
    order = [r for run in reversed(rounds) for r in reversed(run)]
    size, out, i = block_rounds(max(1, min(n_chains, offset)), refine_steps), [], 0
    while i < len(order):
        group = order[i:i + size]
        out.append((group[-1][0], group[0][1]))
        i, size = i + size, 2 * size
    return out


def file_block_ranges(n_images: int, n_chains: int, refine_steps: int,
                      counts: list[int] | None = None) -> list[tuple[int, int]]:
    """The checked blocks of a file: `block_ranges`, or `run_block_ranges` for several shape runs."""
    if counts is not None and len(counts) > 1:
        return run_block_ranges(counts, n_chains, refine_steps)
    return block_ranges(n_images, n_chains, refine_steps)


def block_count(n_images: int, n_chains: int, refine_steps: int, counts: list[int] | None = None) -> int:
    """Checksums stored: one per block when there is more than one block, else none."""
    n = len(file_block_ranges(n_images, n_chains, refine_steps, counts))
    return n if n > 1 else 0


def images_digest(images, n: int = 8) -> bytes:
    """`pixels_digest` of a list of images of any shapes: sha256 of their bytes one after another
    (for one array the same as pixels_digest of the array)."""
    h = hashlib.sha256()
    for a in images:
        h.update(memoryview(np.ascontiguousarray(a, dtype=np.uint8)).cast("B"))
    return h.digest()[:n]


def block_digests(pixels: np.ndarray, n_chains: int, refine_steps: int) -> bytes:
    if not block_count(len(pixels), n_chains, refine_steps):
        return b""
    return b"".join(pixels_digest(pixels[lo:hi], 2) for lo, hi in block_ranges(len(pixels), n_chains, refine_steps))


def run_block_digests(images: list[np.ndarray], counts: list[int], n_chains: int, refine_steps: int) -> bytes:
    """`block_digests` of a file of several shape runs; `images` one array per image."""
    if not block_count(len(images), n_chains, refine_steps, counts):
        return b""
    return b"".join(images_digest(images[lo:hi], 2) for lo, hi in run_block_ranges(counts, n_chains, refine_steps))


# ----------------------------------------------------------------------------- names and display


_NAME_PUNCT = set(" ._-+=,@()[]#~!&'")


def name_problem(name: str) -> str | None:
    """Why `name` is not a safe output name, or None. Safe: 1..255 UTF-8 bytes of letters and
    digits (any script) and the characters ` ._-+=,@()[]#~!&'`; not starting with '.', '-' or a
    space, not ending with a space or '.'. No control, format (bidi), separator or path
    characters, so a name can neither leave the output folder nor fool a terminal."""
    if not isinstance(name, str) or not name:
        return "empty name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    for c in name:
        if not (c in _NAME_PUNCT or (c.isalnum() and unicodedata.category(c)[0] in "LN")):
            return f"character {printable(c)} is not allowed"
    if name[0] in ".- " or name[-1] in " .":
        return "starts with '.', '-' or a space, or ends with a space or '.'"
    return None


def safe_name(name: str) -> str:
    """`name` with every disallowed character replaced by '_' (and a safe start/end)."""
    out = "".join(c if (c in _NAME_PUNCT or (c.isalnum() and unicodedata.category(c)[0] in "LN")) else "_"
                  for c in name)
    out = out.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    if not out or out[0] in ".- ":
        out = "_" + out[1:] if out else "_"
    if out[-1] in " .":
        out = out[:-1] + "_"
    return out


def check_name(name: str, what: str = "image name") -> str:
    problem = name_problem(name)
    if problem is not None:
        raise ContainerError(f"corrupt header: {what} '{printable(name)}' is not allowed ({problem})")
    return name


def printable(s: str, limit: int = 80) -> str:
    """A header string made safe for a terminal: control, format (bidi: U+202E ...), line and
    paragraph separators (U+0085, U+2028, U+2029), unusual spaces and unassigned characters
    are written as \\xNN / \\uNNNN escapes (and a backslash as two); cut at `limit` characters."""
    s = str(s)
    out = []
    for c in s[:limit]:
        o, cat = ord(c), unicodedata.category(c)
        if c == "\\":
            out.append("\\\\")
        elif c == " " or cat[0] not in "CZ":
            out.append(c)
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out) + ("..." if len(s) > limit else "")


# ----------------------------------------------------------------------------- writing


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > MAX_NAME_BYTES:
        raise ValueError(f"string longer than {MAX_NAME_BYTES} bytes: {s[:40]!r}...")
    return _varint(len(b)) + b


def machine_fingerprint() -> int:
    """u32 naming what the float32 path's numbers depend on here: torch version and its CPU kernels."""
    import torch
    cap = torch.backends.cpu.get_cpu_capability()
    return zlib.crc32(f"torch {torch.__version__}; cpu {cap}".encode())


def pack(h: Header, chain_words: list[np.ndarray]) -> bytes:
    """Container bytes (version `h.file_version`: 2, or 3 with its features) for header `h` and the chains' words."""
    payload = b"".join(np.asarray(w, dtype="<u4").tobytes() for w in chain_words)
    if [len(w) for w in chain_words] != list(h.chain_words):
        raise ValueError("header chain_words disagree with the chains")
    if h.engine not in ENGINES:
        raise ValueError(f"engine {h.engine!r} has no code in this container version")
    if h.names is not None:
        mode = NAMES_EXPLICIT
    elif (h.names_stem or DEFAULT_STEM) == DEFAULT_STEM:
        mode = NAMES_DEFAULT
    else:
        mode = NAMES_STEM
    exact = CODER_PATHS.index(h.coder_path)
    flags = (exact | PIXEL_KINDS.index(h.pixel_kind) << 1 | (h.binary_scale == 255) << 2
             | bool(h.refine_steps) << 3 | mode << 4)
    version = h.file_version
    digest = V3_DIGEST_BYTES if version == 3 else 8
    flags |= (FLAG_CHEAP_START if h.cheap_start else 0) | (FLAG_IMPORTANCE if h.importance_samples > 1 else 0)
    parts = [_varint(flags), h.model_sha256[:digest], _varint(ENGINES.index(h.engine))]
    if not exact:
        parts.append(struct.pack("<I", h.machine if h.machine is not None else machine_fingerprint()))
    parts.append(_varint(h.latent_bits))
    if h.importance_samples > 1:
        parts.append(_varint(h.importance_samples))
    if h.refine_steps:
        parts += [_varint(h.refine_steps), _varint(h.refine_lr_e4)]
    runs = h.shape_runs
    parts.append(_varint(len(runs)))
    for run in runs:
        parts += [_varint(v) for v in run]
    parts += [_varint(h.n_chains), *(_varint(n) for n in h.chain_words), _varint(len(h.plain_images))]
    prev = -1
    for i in h.plain_images:
        parts.append(_varint(i - prev - 1))
        prev = i
    if mode == NAMES_STEM:
        parts.append(_str(h.names_stem))
    elif mode == NAMES_EXPLICIT:
        parts += [_str(n) for n in h.names]
    parts += [h.pixels_sha256[:digest], h.block_checks]
    header_wo_crc = b"".join(parts)
    hlen = len(header_wo_crc) + 4
    prefix = MAGIC + bytes([version]) + _varint(hlen) + header_wo_crc
    crc = zlib.crc32(payload, zlib.crc32(prefix))
    return prefix + struct.pack("<I", crc) + payload


# ----------------------------------------------------------------------------- reading


def _truncated(missing: int, at_least: bool = False) -> ContainerError:
    return ContainerError(f"file is truncated: {'at least ' if at_least else ''}{missing} bytes missing")


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ContainerError(f"corrupt header: {self.what} ends inside a field")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int, field_name: str, low: int = 0) -> int:
        n, shift = 0, 0
        while True:
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ContainerError(f"corrupt header: {field_name} is not a valid number")
        if n > limit:
            raise ContainerError(f"corrupt header: {field_name}={n} exceeds the limit {limit}")
        if n < low:
            raise ContainerError(f"corrupt header: {field_name}={n} is below the minimum {low}")
        return n

    def count(self, limit: int, field_name: str, low: int = 0) -> int:
        """A list length: each element takes >= 1 header byte, so it is bounded by what is left."""
        n = self.varint(limit, field_name, low)
        if n > len(self.data) - self.pos:
            raise ContainerError(f"corrupt header: {field_name}={n} exceeds the header's remaining bytes")
        return n

    def string(self, field_name: str) -> str:
        n = self.varint(MAX_NAME_BYTES, f"{field_name} length")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ContainerError(f"corrupt header: {field_name} is not UTF-8") from None


def _prefix(data: bytes) -> tuple[int, int, int]:
    """(version, header_len, header start) from the first bytes; raises for foreign files."""
    if not data:
        raise ContainerError("empty file")
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise ContainerError("not a vaecompress file (bad magic bytes)")
    if len(data) < 6:
        raise ContainerError("file is truncated: it ends inside its first 6 bytes")
    version = data[4]
    if version not in READ_VERSIONS:
        raise ContainerError(f"unsupported format version {version}; this vaecompress reads versions "
                             f"{', '.join(map(str, READ_VERSIONS))} (written by a newer vaecompress?)")
    r = _Reader(data[5:5 + 10], "header length")
    try:
        hlen = r.varint(MAX_HEADER_BYTES, "header length", low=1)
    except ContainerError:
        if len(data) < 15 and all(b & 0x80 for b in data[5:]):
            raise ContainerError("file is truncated: it ends inside its header length") from None
        raise
    return version, hlen, 5 + r.pos


def _common_checks(kind: str, scale: int, latent_bits: int, refine_steps: int, refine_lr_e4: int) -> None:
    if (kind == "binary" and scale not in (1, 255)) or (kind == "8bit" and scale != 0):
        raise ContainerError(f"corrupt header: binary scale {scale} for {kind} pixels")
    lo, hi = limits.LATENT_BITS
    if not lo <= latent_bits <= hi:
        raise ContainerError(f"corrupt header: latent bits {latent_bits} outside {lo}..{hi}")
    if refine_steps > limits.MAX_REFINE_STEPS:
        raise ContainerError(f"corrupt header: {refine_steps} refinement steps exceed the limit "
                             f"{limits.MAX_REFINE_STEPS}")
    if refine_steps and not 1 <= refine_lr_e4 <= 100_000:
        raise ContainerError(f"corrupt header: refinement step size {refine_lr_e4} x 1e-4 outside 1..100000")


def _chains_and_plain(r: _Reader, n_images: int, max_words: int) -> tuple[list[int], list[int]]:
    n_chains = r.count(min(n_images, limits.MAX_CHAINS), "chain count", low=1)
    chain_words = [r.varint(max_words, "chain length") for _ in range(n_chains)]
    n_plain = r.count(n_images, "plain image count")
    plain, prev = [], -1
    for _ in range(n_plain):
        prev = prev + 1 + r.varint(n_images, "plain image gap")
        if prev >= n_images:
            raise ContainerError("corrupt header: plain image index out of range")
        plain.append(prev)
    return chain_words, plain


def _explicit_names(r: _Reader, n_images: int) -> list[str]:
    if 2 * n_images > len(r.data) - r.pos:
        raise ContainerError("corrupt header: more names than header bytes")
    names = [check_name(r.string("image name")) for _ in range(n_images)]
    if len({n.casefold() for n in names}) != len(names):
        raise ContainerError("corrupt header: two images have the same name")
    return names


def _parse_v2(r: _Reader, version: int = 2) -> Header:
    """Versions 2 and 3 (3: flag bits 6-7, 4-byte digests)."""
    flags = r.varint(_KNOWN_FLAGS_V3 if version == 3 else _KNOWN_FLAGS, "flags")
    cheap, importance = bool(flags & FLAG_CHEAP_START), bool(flags & FLAG_IMPORTANCE)
    flags &= _KNOWN_FLAGS
    digest = V3_DIGEST_BYTES if version == 3 else 8
    exact, kind_i, scale_255, refine, mode = flags & 1, flags >> 1 & 1, flags >> 2 & 1, flags >> 3 & 1, flags >> 4
    if mode > NAMES_EXPLICIT:
        raise ContainerError(f"corrupt header: names mode {mode}")
    kind = PIXEL_KINDS[kind_i]
    if kind == "8bit" and scale_255:
        raise ContainerError("corrupt header: a binary scale flag on 8-bit pixels")
    scale = 0 if kind == "8bit" else (255 if scale_255 else 1)
    model_sha = r.take(digest)
    engine_i = r.varint(1 << 16, "engine")
    if engine_i >= len(ENGINES):
        raise ContainerError(f"unknown ANS engine code {engine_i}; written by a newer vaecompress?")
    machine = None if exact else struct.unpack("<I", r.take(4))[0]
    latent_bits = r.varint(255, "latent bits")
    k = r.varint(limits.MAX_IMPORTANCE_SAMPLES, "importance samples", low=2) if importance else 1
    refine_steps = r.varint(limits.MAX_REFINE_STEPS, "refine steps", low=1) if refine else 0
    if version == 3 and not (cheap or importance):
        raise ContainerError("corrupt header: a version-3 file that uses no version-3 feature")
    if importance and refine:
        raise ContainerError("corrupt header: importance samples together with refinement")
    refine_lr_e4 = r.varint(100_000, "refine step size", low=1) if refine else 0
    _common_checks(kind, scale, latent_bits, refine_steps, refine_lr_e4)
    n_runs = r.count(MAX_IMAGES, "shape run count", low=1)
    runs, n_images = [], 0
    for _ in range(n_runs):
        count = r.varint(MAX_IMAGES, "images in a shape run", low=1)
        h, w = r.varint(MAX_SIDE, "height", low=1), r.varint(MAX_SIDE, "width", low=1)
        c = r.varint(MAX_CHANNELS, "channels", low=1)
        if h * w * c > MAX_PIXELS_PER_IMAGE:
            raise ContainerError(f"corrupt header: image size {h}x{w}x{c} exceeds {MAX_PIXELS_PER_IMAGE} values")
        n_images += count
        if n_images > MAX_IMAGES:
            raise ContainerError(f"corrupt header: more than {MAX_IMAGES} images")
        if runs and runs[-1][1:] == (h, w, c):
            raise ContainerError("corrupt header: two consecutive shape runs of the same shape")
        runs.append((count, h, w, c))
    chain_words, plain = _chains_and_plain(r, n_images, limits.MAX_FILE_BYTES // 4)
    names_stem, names = None, None
    if mode == NAMES_STEM:
        names_stem = check_name(r.string("name stem"), "name stem")
        if names_stem == DEFAULT_STEM:
            raise ContainerError("corrupt header: the default name stem stored explicitly")
    elif mode == NAMES_EXPLICIT:
        names = _explicit_names(r, n_images)
    pixels_sha = r.take(digest)
    checks = r.take(2 * block_count(n_images, len(chain_words), refine_steps, [run[0] for run in runs]))
    (crc,) = struct.unpack("<I", r.take(4))
    if r.pos != len(r.data):
        raise ContainerError("corrupt header: unexpected bytes at its end")
    _, h0, w0, c0 = runs[0]
    return Header("", model_sha, ENGINES[engine_i], "", CODER_PATHS[exact], kind, scale, h0, w0, n_images,
                  latent_bits, refine_steps, chain_words, plain, names_stem, names, pixels_sha, crc,
                  refine_lr_e4, channels=c0, shapes=runs if len(runs) > 1 else None, machine=machine,
                  block_checks=checks, version=version, importance_samples=k, cheap_start=cheap)


def _parse_v1(r: _Reader) -> Header:
    model_name = r.string("model name")
    model_sha = r.take(16)
    engine = r.string("engine")
    torch_version = r.string("torch version")
    path_i, kind_i, scale = r.u8(), r.u8(), r.u8()
    if path_i >= len(CODER_PATHS):
        raise ContainerError(f"unknown coder path {path_i}; written by a newer vaecompress?")
    if kind_i >= len(PIXEL_KINDS):
        raise ContainerError(f"corrupt header: pixel kind {kind_i}")
    kind = PIXEL_KINDS[kind_i]
    height = r.varint(MAX_SIDE, "height", low=1)
    width = r.varint(MAX_SIDE, "width", low=1)
    if height * width > MAX_PIXELS_PER_IMAGE:
        raise ContainerError(f"corrupt header: image size {height}x{width}")
    n_images = r.varint(MAX_IMAGES, "image count", low=1)
    latent_bits = r.u8()
    refine_steps = r.varint(limits.MAX_REFINE_STEPS, "refine steps")
    refine_lr_e4 = r.varint(100_000, "refine step size") if refine_steps else 0
    _common_checks(kind, scale, latent_bits, refine_steps, refine_lr_e4)
    chain_words, plain = _chains_and_plain(r, n_images, limits.MAX_FILE_BYTES // 4)
    mode = r.u8()
    names_stem, names = None, None
    if mode == 0:
        names_stem = check_name(r.string("name stem"), "name stem")
    elif mode == 1:
        names = _explicit_names(r, n_images)
    else:
        raise ContainerError(f"corrupt header: names mode {mode}")
    pixels_sha = r.take(16)
    (crc,) = struct.unpack("<I", r.take(4))
    if r.pos != len(r.data):
        raise ContainerError("corrupt header: unexpected bytes at its end")
    return Header(model_name, model_sha, engine, torch_version, CODER_PATHS[path_i], kind, scale, height, width,
                  n_images, latent_bits, refine_steps, chain_words, plain, names_stem, names, pixels_sha, crc,
                  refine_lr_e4, version=1)


def parse_header(prefix: bytes) -> Header:
    """The header from the file's first bytes (at least magic + header); payload not needed."""
    version, hlen, start = _prefix(prefix)
    if len(prefix) < start + hlen:
        raise _truncated(start + hlen - len(prefix), at_least=True)
    r = _Reader(prefix[start:start + hlen], "header")
    h = _parse_v1(r) if version == 1 else _parse_v2(r, version)
    h.header_bytes = start + hlen
    return h


def payload_bytes(h: Header) -> int:
    return 4 * sum(h.chain_words)


def _check_size(h: Header, size: int) -> None:
    want = h.header_bytes + payload_bytes(h)
    if size < want:
        raise _truncated(want - size)
    if size > want:
        raise ContainerError(f"corrupt file: {size - want} unexpected bytes after the payload")


def _check_crc(h: Header, crc: int) -> None:
    if crc != h.payload_crc32:
        what = "header or payload" if h.version >= 2 else "payload"
        raise ContainerError(f"{what} checksum mismatch: the file is corrupt")


def _split_chains(words: np.ndarray, h: Header) -> list[np.ndarray]:
    chains, start = [], 0
    for n in h.chain_words:
        chains.append(words[start:start + n])
        start += n
    return chains


def unpack(data: bytes) -> tuple[Header, list[np.ndarray]]:
    """Parse and validate a whole container in memory; returns the header and each chain's words."""
    h = parse_header(data)
    _check_size(h, len(data))
    payload = memoryview(data)[h.header_bytes:]
    crc = zlib.crc32(payload, zlib.crc32(memoryview(data)[:h.header_bytes - 4])) if h.version >= 2 \
        else zlib.crc32(payload)
    _check_crc(h, crc)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    return h, _split_chains(words, h)


_CHUNK = 1 << 20


def read_file(path: Path, max_bytes: int | None = None, payload: bool = True) -> tuple[Header, list[np.ndarray]]:
    """Read a container from disk without trusting its size: the header first (<= 1 MiB), then
    the file size is checked against what the header declares before the payload is read, in
    chunks, into one preallocated array (nothing else of its size is allocated). With
    payload=False the payload is only checksummed (memory stays O(header)) and no chains are
    returned. `max_bytes` refuses larger files before anything is read."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ContainerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ContainerError(f"{path} is a folder, not a .vae file") from None
    except OSError as e:
        raise ContainerError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        st = os.fstat(f.fileno())
        import stat as stat_mod
        if not stat_mod.S_ISREG(st.st_mode):
            raise ContainerError(f"{path} is not a regular file")
        size = st.st_size
        cap = limits.MAX_FILE_BYTES if max_bytes is None else min(max_bytes, limits.MAX_FILE_BYTES)
        if size > cap:
            raise ContainerError(f"{path} is {size} bytes: larger than the limit {cap} for a .vae file")
        head = f.read(15)
        version, hlen, start = _prefix(head)
        prefix = head + f.read(start + hlen - len(head))
        h = parse_header(prefix)
        _check_size(h, size)
        crc = zlib.crc32(memoryview(prefix)[:h.header_bytes - 4]) if h.version >= 2 else 0
        n_words = sum(h.chain_words)
        words = np.empty(n_words if payload else 0, dtype="<u4")
        view = memoryview(words).cast("B") if payload else None
        buf = bytearray(_CHUNK) if not payload else None
        done, total = 0, 4 * n_words
        while done < total:
            n = min(_CHUNK, total - done)
            if payload:
                got = f.readinto(view[done:done + n])
                chunk = view[done:done + got] if got else b""
            else:
                got = f.readinto(memoryview(buf)[:n])
                chunk = memoryview(buf)[:got]
            if not got:
                raise _truncated(total - done)
            crc = zlib.crc32(chunk, crc)
            done += got
    _check_crc(h, crc)
    if not payload:
        return h, []
    return h, _split_chains(words.astype(np.uint32, copy=False), h)
