"""Classical lossless codecs as baselines for BB-ANS, measured in memory (the protocols: docs/DESIGN.md).

One table, `REGISTRY`, lists every codec with its settings (always the strongest lossless
setting the library offers) and a probe that names the library and version used, so that a
results file can state exactly what was run. Two kinds of codec:

* stream codecs (gzip, bz2, xz, zstd, brotli) compress bytes. Protocols: ``stream`` (the
  whole set as one byte stream) and ``per_image`` (each image on its own, sizes summed).
  For binary data they get the bit-packed images (``input="bitpacked"``, `np.packbits`)
  and, in separate rows, the raw 0/1 bytes (``input="bytes"``).
* image codecs (PNG, WebP lossless, JPEG-XL lossless, JPEG-LS) compress 2-D images.
  Protocols: ``per_image`` and ``mosaic`` (the N images tiled row-major into a near-square
  grid, padded with all-zero images; the padding is recorded in the row and its cost is
  charged: bpd always divides by the N real images' pixels). For binary data they get the
  images scaled to 0/255 (``input="0/255"``); two extra binary-only rows use a true 1-bit
  representation: ``png-1bit`` (Pillow mode '1') and ``jpegxl-1bit`` (0/1 samples,
  bitspersample=1).

`measure` decodes every encoded result and compares it with the input; a mismatch raises
`LosslessError` (a codec that is not lossless here is a bug, never a table entry). A codec
whose library is missing yields one row with ``skipped`` set to the reason. Nothing here
prints or touches files.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import math
import time
import zlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "Codec",
    "LosslessError",
    "PROTOCOLS",
    "REGISTRY",
    "best",
    "codec_table",
    "default_jxl_effort",
    "measure",
    "tile_mosaic",
    "untile_mosaic",
]

PROTOCOLS = ("stream", "per_image", "mosaic")
WEBP_MAX_DIM = 16383


class LosslessError(RuntimeError):
    """A codec's decoded output differs from its input (a bug, never expected)."""


@dataclasses.dataclass(frozen=True)
class Codec:
    """One registry entry.

    kind: "stream" (bytes -> bytes) or "image" (2-D uint8 array -> bytes).
    params: human-readable settings; "{effort}" is replaced by the JPEG-XL effort used.
    probe(): returns "library version" text; raises if the library is unavailable.
    encode(data, effort=...) -> bytes; decode(bytes) -> bytes (stream) or array (image).
    binary_input: for image codecs, how binary {0,1} images are presented
      ("0/255", "1bit" or "0/1"); binary_only: the codec only applies to binary data.
    """

    name: str
    kind: str
    params: str
    probe: Callable[[], str]
    encode: Callable[..., bytes]
    decode: Callable[[bytes], Any]
    binary_input: str = "0/255"
    binary_only: bool = False


# ---------------------------------------------------------------- library probes


def _clib_version(module_name: str, symbol: str) -> str:
    """Version string of the C library behind a stdlib extension module, or "unknown"."""
    try:
        import ctypes
        import importlib

        path = importlib.import_module(module_name).__file__
        fn = getattr(ctypes.CDLL(path), symbol)
        fn.restype = ctypes.c_char_p
        return fn().decode().split(",")[0]
    except Exception:  # built-in module, stripped symbols, no ctypes: version unknown
        return "unknown"


def _probe_gzip() -> str:
    return f"python gzip / zlib {zlib.ZLIB_RUNTIME_VERSION}"


def _probe_bz2() -> str:
    return f"python bz2 / libbz2 {_clib_version('_bz2', 'BZ2_bzlibVersion')}"


def _probe_lzma() -> str:
    return f"python lzma / liblzma {_clib_version('_lzma', 'lzma_version_string')}"


_IC_LIB = {"ZSTD": "zstd", "BROTLI": "brotli", "PNG": "libpng", "WEBP": "libwebp",
           "JPEGXL": "libjxl", "JPEGLS": "charls"}


def _imagecodecs(codec: str):
    """imagecodecs module after checking that `codec` (e.g. "JPEGXL") is built in."""
    import imagecodecs

    if not getattr(getattr(imagecodecs, codec, None), "available", False):
        raise ImportError(f"imagecodecs {imagecodecs.__version__} lacks the {codec} codec")
    return imagecodecs


def _ic_lib_version(codec: str) -> str:
    ic = _imagecodecs(codec)
    lib = _IC_LIB[codec]
    for token in ic.version().split(", "):
        name, _, ver = token.rpartition("-")
        if name == lib:
            return ver
    return "unknown"


def _ic_probe(codec: str) -> Callable[[], str]:
    def probe() -> str:
        ic = _imagecodecs(codec)
        return f"imagecodecs {ic.__version__} / {_IC_LIB[codec]} {_ic_lib_version(codec)}"

    return probe


def _probe_pillow() -> str:
    import PIL
    from PIL import features

    return f"Pillow {PIL.__version__} / zlib {features.version('zlib')}"


def default_jxl_effort() -> int:
    """Highest lossless effort libjxl supports: 10 from libjxl 0.10 on, else 9."""
    try:
        ver = tuple(int(p) for p in _ic_lib_version("JPEGXL").split(".")[:2])
    except (ImportError, ValueError):
        return 9
    return 10 if ver >= (0, 10) else 9


# ---------------------------------------------------------------- stream codecs


def _xz_encode(data: bytes, **_: Any) -> bytes:
    # xz -9e, with the dictionary capped at the input size (as xz itself does for inputs
    # of known size): identical matches and size, but per-image calls do not allocate the
    # 64 MiB dictionary 10,000 times (30 ms -> 0.4 ms per MNIST image).
    dict_size = min(64 << 20, max(4096, len(data)))
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters)


def _zstd_encode(data: bytes, **_: Any) -> bytes:
    return _imagecodecs("ZSTD").zstd_encode(data, level=22)


def _zstd_decode(data: bytes) -> bytes:
    return bytes(_imagecodecs("ZSTD").zstd_decode(data))


def _brotli_encode(data: bytes, **_: Any) -> bytes:
    return _imagecodecs("BROTLI").brotli_encode(data, level=11, lgwin=24)


def _brotli_decode(data: bytes) -> bytes:
    return bytes(_imagecodecs("BROTLI").brotli_decode(data))


# ---------------------------------------------------------------- image codecs

# PNG: zlib level 9 and the smallest of every row filter x deflate strategy (optipng-style);
# any PNG decoder reads the result.
_PNG_FILTERS = ("NONE", "SUB", "UP", "AVG", "PAETH", "ALL")
_PNG_STRATEGIES = ("DEFAULT", "FILTERED", "RLE")


def _png_encode(img: np.ndarray, **_: Any) -> bytes:
    ic = _imagecodecs("PNG")
    out = None
    for f in _PNG_FILTERS:
        for s in _PNG_STRATEGIES:
            enc = ic.png_encode(img, level=9, filter=ic.PNG.FILTER[f],
                                strategy=ic.PNG.STRATEGY[s])
            if out is None or len(enc) < len(out):
                out = enc
    return bytes(out)


def _png_decode(data: bytes) -> np.ndarray:
    return _imagecodecs("PNG").png_decode(data)


def _png1_encode(img: np.ndarray, **_: Any) -> bytes:
    from PIL import Image

    bio = io.BytesIO()
    Image.fromarray(img.astype(bool)).save(bio, format="PNG", optimize=True)
    return bio.getvalue()


def _png1_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "1":
            raise LosslessError(f"png-1bit decoded as mode {im.mode!r}, not '1'")
        return np.asarray(im).astype(np.uint8)


def _webp_encode(img: np.ndarray, **_: Any) -> bytes:
    # libwebp has no grayscale input: a gray plane is replicated into R, G, B.
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    return _imagecodecs("WEBP").webp_encode(rgb, level=100, lossless=True, method=6)


def _webp_decode(data: bytes) -> np.ndarray:
    return np.asarray(_imagecodecs("WEBP").webp_decode(data))   # RGB; `_as_image` takes gray back


def _jxl_encode(img: np.ndarray, *, effort: int, **_: Any) -> bytes:
    return _imagecodecs("JPEGXL").jpegxl_encode(img, lossless=True, effort=effort)


def _jxl1_encode(img: np.ndarray, *, effort: int, **_: Any) -> bytes:
    return _imagecodecs("JPEGXL").jpegxl_encode(img, lossless=True, effort=effort,
                                                bitspersample=1)


def _jxl_decode(data: bytes) -> np.ndarray:
    return _imagecodecs("JPEGXL").jpegxl_decode(data)


def _jls_encode(img: np.ndarray, **_: Any) -> bytes:
    return _imagecodecs("JPEGLS").jpegls_encode(img)  # NEAR=0: lossless


def _jls_decode(data: bytes) -> np.ndarray:
    return _imagecodecs("JPEGLS").jpegls_decode(data)


REGISTRY: dict[str, Codec] = {c.name: c for c in (
    Codec("gzip", "stream", "level 9 (gzip -9), mtime=0", _probe_gzip,
          lambda d, **_: gzip.compress(d, compresslevel=9, mtime=0), gzip.decompress),
    Codec("bz2", "stream", "level 9 (bzip2 -9)", _probe_bz2,
          lambda d, **_: bz2.compress(d, compresslevel=9), bz2.decompress),
    Codec("xz", "stream", "xz container, preset 9|EXTREME (xz -9e), dict capped at input size",
          _probe_lzma, _xz_encode, lzma.decompress),
    Codec("zstd", "stream", "level 22 (zstd --ultra -22)", _ic_probe("ZSTD"),
          _zstd_encode, _zstd_decode),
    Codec("brotli", "stream", "quality 11, lgwin 24 (brotli -11)", _ic_probe("BROTLI"),
          _brotli_encode, _brotli_decode),
    Codec("png", "image", "8-bit gray, zlib level 9, best of 6 filters x 3 strategies",
          _ic_probe("PNG"), _png_encode, _png_decode),
    Codec("png-1bit", "image", "1-bit gray (Pillow mode '1'), optimize=True",
          _probe_pillow, _png1_encode, _png1_decode, binary_input="1bit", binary_only=True),
    Codec("webp", "image", "lossless, level 100, method 6 (gray as RGB)", _ic_probe("WEBP"),
          _webp_encode, _webp_decode),
    Codec("jpegxl", "image", "lossless, effort {effort}", _ic_probe("JPEGXL"),
          _jxl_encode, _jxl_decode),
    Codec("jpegxl-1bit", "image", "lossless, effort {effort}, bitspersample=1 (0/1 samples)",
          _ic_probe("JPEGXL"), _jxl1_encode, _jxl_decode, binary_input="0/1",
          binary_only=True),
    Codec("jpegls", "image", "lossless (NEAR=0)", _ic_probe("JPEGLS"), _jls_encode, _jls_decode),
)}


def codec_table(effort: int | None = None) -> list[dict]:
    """One dict per registry entry: name, kind, params, library (or None) and skip reason."""
    effort = default_jxl_effort() if effort is None else effort
    out = []
    for c in REGISTRY.values():
        try:
            lib, reason = c.probe(), None
        except Exception as e:  # missing library
            lib, reason = None, f"{type(e).__name__}: {e}"
        out.append({"codec": c.name, "kind": c.kind, "params": c.params.format(effort=effort),
                    "library": lib, "binary_only": c.binary_only, "skipped": reason})
    return out


# ---------------------------------------------------------------- mosaic


def tile_mosaic(images: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """Tile (N, H, W[, C]) row-major into a (rows*H, cols*W[, C]) image, cols = ceil(sqrt(N)).

    Returns (mosaic, rows, cols, n_padding); padding tiles are all zeros.
    """
    n, h, w, *c = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    pad = rows * cols - n
    full = np.concatenate([images, np.zeros((pad, h, w, *c), images.dtype)]) if pad else images
    mosaic = full.reshape(rows, cols, h, w, *c).swapaxes(1, 2).reshape(rows * h, cols * w, *c)
    return np.ascontiguousarray(mosaic), rows, cols, pad


def untile_mosaic(mosaic: np.ndarray, n: int, h: int, w: int, *c: int) -> np.ndarray:
    """Inverse of `tile_mosaic`: the first n (h, w[, c]) tiles, row-major."""
    rows, cols = mosaic.shape[0] // h, mosaic.shape[1] // w
    tiles = mosaic.reshape(rows, h, cols, w, *c).swapaxes(1, 2).reshape(rows * cols, h, w, *c)
    return tiles[:n]


# ---------------------------------------------------------------- measurement


def _check_images(images: Any, binary: bool) -> np.ndarray:
    x = np.asarray(images)
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] == 3)) or min(x.shape) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W) or (N, H, W, 3) array, got shape {x.shape}")
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    if binary and x.max() > 1:
        raise ValueError("binary=True but images hold values other than 0 and 1")
    return np.ascontiguousarray(x)


def _as_image(decoded: Any, like: np.ndarray) -> np.ndarray:
    """A decoded image in the layout of `like`: a gray image decoded as 1 or 3 equal channels
    becomes 2-D again (any difference is left for the comparison to catch)."""
    a = np.asarray(decoded)
    if like.ndim == 2 and a.ndim == 3 and a.shape[-1] in (1, 3) and all(
            np.array_equal(a[..., 0], a[..., i]) for i in range(1, a.shape[-1])):
        a = a[..., 0]
    return a


def _row(codec: Codec, protocol: str | None, input_name: str | None, x: np.ndarray,
         library: str | None, effort: int, total: int | None, enc_s: float | None,
         dec_s: float | None, grid=None, pad=None, skipped=None) -> dict:
    n, *shape = x.shape
    return {
        "codec": codec.name, "protocol": protocol, "input": input_name,
        "total_bytes": total,
        "bpd": None if total is None else 8.0 * total / x.size,
        "n_images": n, "lossless_verified": skipped is None,
        "image_shape": shape, "grid": grid, "padding_images": pad,
        "library": library, "params": codec.params.format(effort=effort),
        "encode_s": enc_s, "decode_s": dec_s, "skipped": skipped,
    }


def _stream_inputs(x: np.ndarray, binary: bool):
    """(input name, whole-set bytes, per-image bytes list, inverse for whole set)."""
    shape = x.shape[1:]
    out = []
    if binary:
        out.append(("bitpacked",
                    lambda: np.packbits(x.reshape(-1)).tobytes(),
                    lambda: [np.packbits(im.reshape(-1)).tobytes() for im in x],
                    lambda b: np.unpackbits(np.frombuffer(b, np.uint8), count=x.size).reshape(x.shape),
                    lambda b: np.unpackbits(np.frombuffer(b, np.uint8), count=x[0].size).reshape(shape)))
    out.append(("bytes", x.tobytes, lambda: [im.tobytes() for im in x],
                lambda b: np.frombuffer(b, np.uint8).reshape(x.shape),
                lambda b: np.frombuffer(b, np.uint8).reshape(shape)))
    return out


def _measure_stream(codec, x, binary, protocols, library, effort) -> list[dict]:
    rows = []
    for name, whole, parts, inv_whole, inv_part in _stream_inputs(x, binary):
        if "stream" in protocols:
            data = whole()
            t0 = time.perf_counter()
            enc = codec.encode(data, effort=effort)
            t1 = time.perf_counter()
            dec = codec.decode(enc)
            t2 = time.perf_counter()
            if bytes(dec) != data or not np.array_equal(inv_whole(bytes(dec)), x):
                raise LosslessError(f"{codec.name} stream/{name}: decoded data differs")
            rows.append(_row(codec, "stream", name, x, library, effort, len(enc),
                             t1 - t0, t2 - t1))
        if "per_image" in protocols:
            datas = parts()
            t0 = time.perf_counter()
            encs = [codec.encode(d, effort=effort) for d in datas]
            t1 = time.perf_counter()
            decs = [bytes(codec.decode(e)) for e in encs]
            t2 = time.perf_counter()
            for i, (d, dd) in enumerate(zip(datas, decs)):
                if dd != d or not np.array_equal(inv_part(dd), x[i]):
                    raise LosslessError(f"{codec.name} per_image/{name}: image {i} differs")
            rows.append(_row(codec, "per_image", name, x, library, effort,
                             sum(len(e) for e in encs), t1 - t0, t2 - t1))
    return rows


def _measure_image(codec, x, binary, protocols, library, effort) -> list[dict]:
    rows = []
    if binary:
        name = codec.binary_input
        prepared = x * np.uint8(255) if name == "0/255" else x
    else:
        name, prepared = "uint8", x
    if "per_image" in protocols:
        t0 = time.perf_counter()
        encs = [codec.encode(im, effort=effort) for im in prepared]
        t1 = time.perf_counter()
        decs = [_as_image(codec.decode(e), im) for e, im in zip(encs, prepared)]
        t2 = time.perf_counter()
        for i, (im, d) in enumerate(zip(prepared, decs)):
            if d.shape != im.shape or not np.array_equal(d, im):
                raise LosslessError(f"{codec.name} per_image/{name}: image {i} differs")
        rows.append(_row(codec, "per_image", name, x, library, effort,
                         sum(len(e) for e in encs), t1 - t0, t2 - t1))
    if "mosaic" in protocols:
        mosaic, r, c, pad = tile_mosaic(prepared)
        if codec.name == "webp" and max(mosaic.shape) > WEBP_MAX_DIM:
            rows.append(_row(codec, "mosaic", name, x, library, effort, None, None, None,
                             [r, c], pad, skipped=f"mosaic {mosaic.shape} exceeds WebP's "
                             f"{WEBP_MAX_DIM} px limit"))
            return rows
        t0 = time.perf_counter()
        enc = codec.encode(mosaic, effort=effort)
        t1 = time.perf_counter()
        dec = _as_image(codec.decode(enc), mosaic)
        t2 = time.perf_counter()
        if dec.shape != mosaic.shape or not np.array_equal(dec, mosaic) or not np.array_equal(
                untile_mosaic(dec, *prepared.shape), prepared):
            raise LosslessError(f"{codec.name} mosaic/{name}: decoded mosaic differs")
        rows.append(_row(codec, "mosaic", name, x, library, effort, len(enc),
                         t1 - t0, t2 - t1, [r, c], pad))
    return rows


def measure(images: np.ndarray, binary: bool,
            protocols: Sequence[str] = PROTOCOLS,
            codecs: Iterable[str] | None = None,
            effort: int | None = None) -> list[dict]:
    """Compress `images` with every (selected) registry codec under each applicable protocol.

    images: (N, H, W) or (N, H, W, 3) uint8 (or bool); values in {0, 1} when `binary`.
    protocols: subset of ("stream", "per_image", "mosaic"); stream codecs use the first
      two, image codecs the last two.
    codecs: registry names to run (default: all; binary-only codecs are left out for
      8-bit data).
    effort: JPEG-XL effort (default `default_jxl_effort()`, the maximum: slowest, smallest).

    Returns one dict per (codec, protocol, input): codec, protocol, input, total_bytes,
    bpd (= 8*total_bytes/(N*H*W*C)), n_images, lossless_verified, image_shape, grid and
    padding_images (mosaic only, else None), library, params, encode_s, decode_s, skipped
    (None, or why the codec could not run; then total_bytes/bpd are None and
    lossless_verified is False). Raises LosslessError if any decode differs from its input.
    """
    x = _check_images(images, binary)
    protocols = tuple(protocols)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown protocol(s) {bad}; choose from {PROTOCOLS}")
    names = list(REGISTRY) if codecs is None else list(codecs)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown codec(s) {unknown}; choose from {list(REGISTRY)}")
    effort = default_jxl_effort() if effort is None else int(effort)

    rows: list[dict] = []
    for name in names:
        codec = REGISTRY[name]
        if codec.binary_only and (not binary or x.ndim == 4):   # 1-bit codecs: gray only
            continue
        if not set(protocols) & ({"stream", "per_image"} if codec.kind == "stream"
                                 else {"per_image", "mosaic"}):
            continue
        try:
            library = codec.probe()
        except Exception as e:  # library missing or built without this codec
            rows.append(_row(codec, None, None, x, None, effort, None, None, None,
                             skipped=f"{type(e).__name__}: {e}"))
            continue
        fn = _measure_stream if codec.kind == "stream" else _measure_image
        rows.extend(fn(codec, x, binary, protocols, library, effort))
    return rows


def best(rows: Iterable[dict]) -> dict:
    """The verified row with the lowest bpd (ValueError if there is none)."""
    ok = [r for r in rows if r.get("lossless_verified") and r.get("bpd") is not None]
    if not ok:
        raise ValueError("no lossless-verified rows to choose from")
    return min(ok, key=lambda r: r["bpd"])
