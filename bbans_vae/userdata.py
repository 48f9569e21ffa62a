"""Your own images as a dataset: PNG folders, .npy/.npz arrays and IDX files, with a test split.

Purpose
-------
`read_images(path)` reads every image under one path into one uint8 array, (N, H, W) for
gray and (N, H, W, 3) for colour:

* a folder: every `*.png` below it, recursively (names starting with `.` skipped), sorted by
  the path relative to the folder. 8-bit gray, 1-bit, palette and RGB PNGs; 16-bit PNGs,
  alpha channels and other modes are refused.
* `.npy`, or `.npz` holding one array: (N, H, W), (N, H, W, C) with C in {1, 3}, or one
  (H, W) image; dtype uint8.
* IDX (gzipped or not, recognised by content): unsigned bytes, the same shapes.

All images of a dataset share H x W x C; otherwise a DataError names the first mismatch.

`path_dataset` then fixes the pixel kind, detected (values {0,1} or {0,255} -> binary, stored
as {0,1}; else 8-bit) or forced (`binary` thresholds other values at 128, as `mnist-bin`
does), and the split: the images of a second path (`test`), a seeded holdout fraction
(`RandomState(seed).permutation(N)[:round(fraction N)]` is the test set), or none (all images,
split "all"). Its JSON `record` (path, sha256 of the image bytes as read, shape, pixel rule,
split) lets `dataset_from_record` find the same images again later, and refuse if they changed.
Nothing here prints; every user-caused problem is a one-line DataError.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

RECORD_FORMAT = "vaecompress-data/1"
PIXEL_CHOICES = ("auto", "binary", "8bit")
MAX_DATASET_BYTES = 1 << 33          # refuse image sets above 8 GiB before reading their pixels
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;32", "F")
_SHAPE_HELP = "expected uint8 images (N,H,W), (N,H,W,C) with C 1 or 3, or one (H,W) image"


# ----------------------------------------------------------------------------- reading


def _fmt_shape(shape) -> str:
    h, w, c = shape
    return f"{h}x{w}x{c} (HxWxC)"


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "png-folder"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head.startswith(_PNG_SIGNATURE):
        raise DataError(f"{path} is one PNG image; a dataset from PNGs is a folder of them")
    if head[:2] == b"\x1f\x8b" or (len(head) >= 4 and head[:2] == b"\0\0"):
        return "idx"
    raise DataError(f"{path} is not a folder of PNGs, a .npy/.npz array or an IDX file")


def _png_files(folder: Path) -> list[Path]:
    def fail(e: OSError):
        raise DataError(f"cannot list folder {e.filename or folder}: {e.strerror or e}")

    files = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames if f.lower().endswith(".png") and not f.startswith(".")]
    if not files:
        raise DataError(f"folder {folder} contains no .png files (searched recursively)")
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _open_png(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not head.startswith(_PNG_SIGNATURE):
        raise DataError(f"{path} is not a PNG file (no PNG signature)")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path} is a corrupt PNG file ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's IHDR chunk (Pillow reads 16-bit RGB as 8-bit "RGB"), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else None


def png_channels(path: Path, im) -> int:
    """Channels the pixels of an opened PNG give: 1 (gray, 1-bit, gray palette) or 3 (RGB,
    colour palette). DataError for animated, 16-bit, alpha and other modes. The one check of
    PNG modes, for datasets and for `encode`'s inputs (cli/io.py)."""
    mode = im.mode
    if getattr(im, "n_frames", 1) > 1:
        raise DataError(f"{path} is an animated PNG with {im.n_frames} frames; give single-frame images")
    if mode in _SIXTEEN_BIT_MODES or _png_bit_depth(path) == 16:
        raise DataError(f"{path}: 16-bit images are not supported (8-bit gray or RGB only); convert it to 8-bit")
    if mode in ("L", "1"):
        return 1
    if mode == "RGB":
        return 3
    if mode == "P":
        if "transparency" in im.info:
            raise DataError(f"{path} has an alpha channel (a palette with transparency); give gray or RGB images")
        return 1 if gray_palette(path, im) is not None else 3
    bands = len(im.getbands())
    if bands > 1:
        raise DataError(f"{path} has {bands} channels ({mode}); the models code gray (1) or RGB (3) images")
    raise DataError(f"{path} has unsupported image mode {mode}; convert it to an 8-bit gray or RGB PNG")


def gray_palette(path: Path, im) -> np.ndarray | None:
    """A palette image's pixels as gray values if every palette entry it uses is gray, else None."""
    try:
        im.load()
    except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, zlib.error, ...
        raise DataError(f"{path} is a corrupt or truncated PNG file ({exc}); re-export it") from None
    idx = np.asarray(im, dtype=np.uint8)
    pal = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(idx)
    if used.size and int(used[-1]) >= len(pal):
        raise DataError(f"{path} uses palette entries that do not exist; re-export it")
    sel = pal[used]
    if not (np.all(sel[:, 0] == sel[:, 1]) and np.all(sel[:, 0] == sel[:, 2])):
        return None
    lut = np.zeros(256, dtype=np.uint8)
    lut[: len(pal)] = pal[:, 0]
    return lut[idx]


def _load_png(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    im = _open_png(path)
    try:
        try:
            im.load()
        except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, zlib.error, ...
            raise DataError(f"{path} is a corrupt or truncated PNG file ({e})") from None
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    finally:
        im.close()
    return rgb[..., :1] if shape[2] == 1 else rgb


def _read_png_folder(folder: Path) -> np.ndarray:
    files = _png_files(folder)
    first = None
    for p in files:                                  # pass 1: headers only
        im = _open_png(p)
        try:
            shape = (im.size[1], im.size[0], png_channels(p, im))
        finally:
            im.close()
        if first is None:
            first = (p, shape)
        elif shape != first[1]:
            raise DataError(f"{p} is {_fmt_shape(shape)} but {first[0]} is {_fmt_shape(first[1])}; "
                            "all images of a dataset must share one size and channel count")
    shape = first[1]
    if len(files) * int(np.prod(shape)) > MAX_DATASET_BYTES:
        raise DataError(f"{folder} holds more than {MAX_DATASET_BYTES} bytes of pixels; use a smaller dataset")
    out = np.empty((len(files), *shape), np.uint8)
    for i, p in enumerate(files):                    # pass 2: pixels
        a = _load_png(p, shape)
        if a.shape != shape:
            raise DataError(f"{p} changed while it was being read; try again")
        out[i] = a
    return out


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # ValueError: bad header, truncated data, object arrays
        raise DataError(f"{path} is not a valid .npy file ({e})") from None


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if len(z.files) != 1:
                raise DataError(f"{path} holds {len(z.files)} arrays ({', '.join(z.files) or 'none'}); "
                                "give an .npz with exactly one array of images")
            return z[z.files[0]]
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path} is not a valid .npz file ({e})") from None


def read_images(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """All images under `path` as uint8 (N, H, W, C), C in {1, 3}, and the kind of source read
    ("png-folder", "npy", "npz" or "idx"). DataError for anything unreadable or inconsistent."""
    from .data import read_idx
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: not a dataset name nor a path")
    kind = _kind_of(path)
    if kind == "png-folder":
        return _read_png_folder(path), kind
    arr = {"npy": _read_npy, "npz": _read_npz, "idx": read_idx}[kind](path)
    if arr.dtype != np.uint8:
        raise DataError(f"{path} holds {arr.dtype} values; {_SHAPE_HELP} (convert with .astype(np.uint8))")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3):
        raise DataError(f"{path} holds an array of shape {tuple(arr.shape)}; {_SHAPE_HELP}")
    if 0 in arr.shape:
        raise DataError(f"{path} holds no images (shape {tuple(arr.shape)})")
    if arr.nbytes > MAX_DATASET_BYTES:
        raise DataError(f"{path} holds more than {MAX_DATASET_BYTES} bytes of pixels; use a smaller dataset")
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = np.array(arr, order="C")            # a private copy (also of a memory-mapped .npy)
    return arr, kind


def images_sha256(images: np.ndarray) -> str:
    """sha256 of the image bytes as read, (N, H, W, C) C order: same pixels, same digest."""
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


# ----------------------------------------------------------------------------- pixels and splits


def pixel_rule(images: list[np.ndarray], pixels: str | None) -> tuple[str, str]:
    """(pixel kind, binarization) for these images: detected, or forced by `pixels`.

    binarization: "none" (values kept), "scale255" ({0,255} -> {0,1}), "threshold128" (v >= 128).
    """
    pixels = pixels or "auto"
    if pixels not in PIXEL_CHOICES:
        raise DataError(f"--pixels must be one of {', '.join(PIXEL_CHOICES)}, not {pixels!r}")
    if pixels == "8bit":
        return "8bit", "none"
    counts = sum(np.bincount(a.reshape(-1), minlength=256) for a in images)
    used = set(np.flatnonzero(counts).tolist())
    if used <= {0, 1}:
        return "binary", "none"
    if used <= {0, 255}:
        return "binary", "scale255"
    return ("binary", "threshold128") if pixels == "binary" else ("8bit", "none")


def apply_pixel_rule(images: np.ndarray, binarization: str) -> np.ndarray:
    if binarization == "none":
        return images
    if binarization == "scale255":
        return (images // 255).astype(np.uint8)
    if binarization == "threshold128":
        return (images >= 128).astype(np.uint8)
    raise DataError(f"unknown binarization {binarization!r} in a data record")


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), both sorted: the test set is the first round(fraction * n)
    of RandomState(seed).permutation(n)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--holdout must be a fraction between 0 and 1, not {fraction}")
    n_test = int(round(fraction * n))
    if n_test < 1 or n_test >= n:
        raise DataError(f"--holdout {fraction} of {n} images leaves {n_test} test and {n - n_test} training "
                        "images; each split needs at least one")
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _gray_or_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) -> (N, H, W) (the gray layout every model reads); RGB stays 4-D."""
    return np.ascontiguousarray(images[..., 0]) if images.shape[3] == 1 else images


def _source(path: Path, images: np.ndarray, kind: str) -> dict:
    return {"path": str(path), "kind": kind, "n_images": int(images.shape[0]),
            "image_shape": [int(s) for s in images.shape[1:]], "sha256": images_sha256(images)}


def path_dataset(path, *, test=None, holdout: float | None = None, pixels: str | None = None,
                 seed: int = 0) -> tuple[dict, dict]:
    """Read the images under `path` (and `test`) and split them: (arrays by split, record).

    Splits: "train" and "test" when `test` or `holdout` is given, always "all" (every image of
    `path`). Arrays are (N, H, W) for gray, (N, H, W, 3) for colour, {0,1} for binary pixels.
    """
    if test is not None and holdout is not None:
        raise DataError("give --test PATH or --holdout FRACTION, not both")
    path = Path(os.path.abspath(path))
    images, kind = read_images(path)
    split: dict = {"method": "none"}
    test_images = None
    if test is not None:
        test_path = Path(os.path.abspath(test))
        test_images, test_kind = read_images(test_path)
        if test_images.shape[1:] != images.shape[1:]:
            raise DataError(f"test images {test_path} are {_fmt_shape(test_images.shape[1:])} but {path} "
                            f"holds {_fmt_shape(images.shape[1:])}; both must share one size and channel count")
        split = {"method": "test-path", "test": _source(test_path, test_images, test_kind)}
    elif holdout is not None:
        tr, te = holdout_split(len(images), float(holdout), int(seed))
        split = {"method": "holdout", "fraction": float(holdout), "seed": int(seed),
                 "n_train": int(len(tr)), "n_test": int(len(te))}
    kind_px, binarization = pixel_rule([images] + ([test_images] if test_images is not None else []), pixels)
    record = {"format": RECORD_FORMAT, **_source(path, images, kind), "pixels": kind_px,
              "binarization": binarization, "split": split}
    return _split_arrays(images, test_images, record), record


def _split_arrays(images: np.ndarray, test_images: np.ndarray | None, record: dict) -> dict:
    rule = record["binarization"]
    x = _gray_or_rgb(apply_pixel_rule(images, rule))
    arrays = {"all": x}
    split = record["split"]
    if split["method"] == "test-path":
        arrays["train"] = x
        arrays["test"] = _gray_or_rgb(apply_pixel_rule(test_images, rule))
    elif split["method"] == "holdout":
        tr, te = holdout_split(len(x), split["fraction"], split["seed"])
        arrays["train"], arrays["test"] = x[tr], x[te]
    return arrays


def _reread(source: dict, what: str) -> np.ndarray:
    path = Path(source["path"])
    if not path.exists():
        raise DataError(f"the {what} {path} recorded by the run no longer exists; restore it there")
    images, _ = read_images(path)
    digest = images_sha256(images)
    if list(images.shape[1:]) != source["image_shape"] or len(images) != source["n_images"] \
            or digest != source["sha256"]:
        raise DataError(f"the {what} {path} changed since the run recorded it: now {len(images)} images "
                        f"{_fmt_shape(images.shape[1:])}, sha256 {digest[:16]}..., recorded "
                        f"{source['n_images']} images {_fmt_shape(source['image_shape'])}, sha256 "
                        f"{source['sha256'][:16]}...; restore the data or train a new run")
    return images


def dataset_from_record(record: dict) -> dict:
    """The arrays by split that `record` (from `path_dataset`) describes, after checking that the
    images are still the same (sha256 and shape); DataError if they changed or are gone."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise DataError(f"unknown data record (expected format {RECORD_FORMAT})")
    try:
        images = _reread(record, "data")
        split = record["split"]
        test_images = _reread(split["test"], "test data") if split["method"] == "test-path" else None
        return _split_arrays(images, test_images, record)
    except (KeyError, TypeError) as e:
        raise DataError(f"the run's data record is incomplete ({e!r})") from None
