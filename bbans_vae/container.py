"""The `.vae` container: a small versioned binary header, then the chains' ANS words.

Layout (version 1; integers are unsigned LEB128 varints unless a width is given):

    magic            4 bytes   b"VAEC"
    version          u8        1
    header_len       varint    bytes of the header that follows (<= 1 MiB)
    header:
      model_name     str       varint length + UTF-8 (<= 255 bytes)
      model_sha256   16 bytes  first 16 bytes of sha256(model.safetensors)
      engine         str       e.g. "constriction 0.5.0" (24-bit probabilities, 32-bit words)
      torch          str       torch version of the encoder (informational)
      coder_path     u8        0 = float32 network inference on this machine's kernels,
                               1 = exact (integer networks + bundled tables, bbans_vae/exact/)
      pixel_kind     u8        0 = binary, 1 = 8-bit
      binary_scale   u8        value that stood for a 1 in the input: 1 or 255 (0 for 8-bit)
      height, width  varint
      n_images       varint
      latent_bits    u8        2^k equal-mass latent buckets per dimension
      refine_steps   varint    posterior refinement steps (0 = none)
      refine_lr      varint    refinement Adam step size x 10^4 (only if refine_steps > 0)
      n_chains       varint
      chain_words    n_chains varints (32-bit words per chain)
      plain          varint count, then varint gaps: images coded without bits-back
      names          u8 mode: 0 = "<stem>_<index:05d>" (then str stem), 1 = explicit (n_images strs)
      pixels_sha256  16 bytes  first 16 bytes of sha256 of the original (N, H, W) uint8 pixels
      payload_crc32  u32 LE
    payload          sum(chain_words) little-endian u32 words, chain after chain; nothing after

Everything read is bounds-checked before any allocation; any violation is a `ContainerError`.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import ContainerError

MAGIC = b"VAEC"
VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_IMAGES = 100_000_000
MAX_SIDE = 1 << 15
MAX_PIXELS_PER_IMAGE = 1 << 20
MAX_NAME_BYTES = 255
PIXEL_KINDS = ("binary", "8bit")
CODER_PATHS = ("float32", "exact")


@dataclass
class Header:
    model_name: str
    model_sha256: bytes            # 16 bytes
    engine: str
    torch_version: str
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
    pixels_sha256: bytes           # 16 bytes
    payload_crc32: int = 0
    refine_lr_e4: int = 0          # refinement step size x 10^4

    @property
    def n_chains(self) -> int:
        return len(self.chain_words)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def image_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [f"{self.names_stem}_{i:05d}" for i in range(self.n_images)]


def pixels_digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).data).digest()[:16]  # no copy


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


def pack(h: Header, chain_words: list[np.ndarray]) -> bytes:
    payload = b"".join(np.asarray(w, dtype="<u4").tobytes() for w in chain_words)
    if [len(w) for w in chain_words] != list(h.chain_words):
        raise ValueError("header chain_words disagree with the chains")
    parts = [_str(h.model_name), h.model_sha256[:16], _str(h.engine), _str(h.torch_version),
             bytes([CODER_PATHS.index(h.coder_path), PIXEL_KINDS.index(h.pixel_kind), h.binary_scale]),
             _varint(h.height), _varint(h.width), _varint(h.n_images), bytes([h.latent_bits]),
             _varint(h.refine_steps), *([_varint(h.refine_lr_e4)] if h.refine_steps else []),
             _varint(h.n_chains), *(_varint(n) for n in h.chain_words),
             _varint(len(h.plain_images))]
    prev = -1
    for i in h.plain_images:
        parts.append(_varint(i - prev - 1))
        prev = i
    if h.names is None:
        parts += [b"\x00", _str(h.names_stem or "image")]
    else:
        parts += [b"\x01", *(_str(n) for n in h.names)]
    parts += [h.pixels_sha256[:16], struct.pack("<I", zlib.crc32(payload))]
    header = b"".join(parts)
    return MAGIC + bytes([VERSION]) + _varint(len(header)) + header + payload


# ----------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ContainerError(f"truncated file: {self.what} ends early (corrupt or cut off)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int, field_name: str) -> int:
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
        return n

    def string(self, field_name: str) -> str:
        n = self.varint(MAX_NAME_BYTES, f"{field_name} length")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ContainerError(f"corrupt header: {field_name} is not UTF-8") from None


def unpack(data: bytes) -> tuple[Header, list[np.ndarray]]:
    """Parse and validate a container; returns the header and each chain's words."""
    if len(data) < 5 or data[:4] != MAGIC:
        raise ContainerError("not a vaecompress file (bad magic bytes)" if data else "empty file")
    if data[4] != VERSION:
        raise ContainerError(f"unsupported format version {data[4]}; this vaecompress reads version {VERSION}")
    outer = _Reader(data, "header")
    outer.pos = 5
    hlen = outer.varint(MAX_HEADER_BYTES, "header length")
    r = _Reader(outer.take(hlen), "header")
    payload = data[outer.pos:]

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
    if (kind == "binary" and scale not in (1, 255)) or (kind == "8bit" and scale != 0):
        raise ContainerError(f"corrupt header: binary scale {scale} for {kind} pixels")
    height = r.varint(MAX_SIDE, "height")
    width = r.varint(MAX_SIDE, "width")
    if height < 1 or width < 1 or height * width > MAX_PIXELS_PER_IMAGE:
        raise ContainerError(f"corrupt header: image size {height}x{width}")
    n_images = r.varint(MAX_IMAGES, "image count")
    if n_images < 1:
        raise ContainerError("corrupt header: zero images")
    latent_bits = r.u8()
    if not 1 <= latent_bits <= 16:
        raise ContainerError(f"corrupt header: latent bits {latent_bits}")
    refine_steps = r.varint(10_000, "refine steps")
    refine_lr_e4 = r.varint(100_000, "refine step size") if refine_steps else 0
    if refine_steps and refine_lr_e4 == 0:
        raise ContainerError("corrupt header: refinement with a zero step size")
    n_chains = r.varint(n_images, "chain count")
    if n_chains < 1:
        raise ContainerError("corrupt header: zero chains")
    # each varint takes >= 1 byte, so counts are bounded by the header length before allocating
    if n_chains > hlen:
        raise ContainerError("corrupt header: more chains than header bytes")
    chain_words = [r.varint(len(payload) // 4, "chain length") for _ in range(n_chains)]
    n_plain = r.varint(n_images, "plain image count")
    if n_plain > hlen:
        raise ContainerError("corrupt header: more plain images than header bytes")
    plain, prev = [], -1
    for _ in range(n_plain):
        prev = prev + 1 + r.varint(n_images, "plain image gap")
        if prev >= n_images:
            raise ContainerError("corrupt header: plain image index out of range")
        plain.append(prev)
    mode = r.u8()
    names_stem, names = None, None
    if mode == 0:
        names_stem = r.string("name stem")
    elif mode == 1:
        if n_images > hlen:
            raise ContainerError("corrupt header: more names than header bytes")
        names = [r.string("image name") for _ in range(n_images)]
    else:
        raise ContainerError(f"corrupt header: names mode {mode}")
    pixels_sha = r.take(16)
    (crc,) = struct.unpack("<I", r.take(4))
    if r.pos != len(r.data):
        raise ContainerError("corrupt header: unexpected bytes at its end")
    if sum(chain_words) * 4 != len(payload):
        raise ContainerError(f"payload is {len(payload)} bytes but the header declares "
                             f"{sum(chain_words) * 4}: file truncated or corrupt")
    if zlib.crc32(payload) != crc:
        raise ContainerError("payload checksum mismatch: the file is corrupt")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    chains, start = [], 0
    for n in chain_words:
        chains.append(words[start:start + n])
        start += n
    header = Header(model_name, model_sha, engine, torch_version, CODER_PATHS[path_i], kind, scale, height, width,
                    n_images, latent_bits, refine_steps, chain_words, plain, names_stem, names, pixels_sha, crc,
                    refine_lr_e4)
    return header, chains
