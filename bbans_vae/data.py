"""Datasets: one table of what exists, checksummed loading from a local data root, IDX reading.

Purpose
-------
Every dataset the tool trains, evaluates or benchmarks on is listed once, in `DATASETS`.
`load_dataset` returns the images as a uint8 array (N, 28, 28), C-contiguous, with values
{0, 1} for binary datasets and 0..255 for 8-bit ones. Each file is checked against its
published checksum before use (the result is cached in-process, keyed by path, size and
mtime). `read_idx` is the strict IDX reader also used for user-supplied IDX inputs.
Nothing here prints; user-caused problems raise `DataError` with a one-line message.

Wherever a dataset name is accepted, a path works too: `open_dataset` returns a `Dataset` for
a built-in name or for the images under a path (a folder of PNGs, .npy/.npz, IDX; see
`userdata`), and `run_dataset` finds a run's data again from what the run recorded.

Data root: `--data-dir`, else `$VAECOMPRESS_DATA`, else `~/.cache/vaecompress/data`
(`resolve_data_root`). Files use torchvision's on-disk layout, so a root can be shared with
torchvision:

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <root>/binarized_mnist/binarized_mnist.npz

Already-extracted IDX files (same names without `.gz`) are accepted when the `.gz` is absent;
they have no published checksum here, so they are only parsed strictly (header, shape, size).

Datasets and sources
--------------------
* `mnist`, `mnist-bin`, `mnist-bin-stoch`: MNIST by Yann LeCun, Corinna Cortes and
  Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), commonly distributed under
  CC BY-SA 3.0. md5s are torchvision's. `mnist-bin` thresholds at 0.5 (pixel >= 128 -> 1), the
  setting of the generalization-gaps paper's code; `mnist-bin-stoch` is the BB-ANS/craystack
  stochastic binarization (`RandomState(0).random_sample(x.shape) < x / 255`, per split).
* `fashion-mnist`: Fashion-MNIST by Han Xiao, Kashif Rasul and Roland Vollgraf (Zalando
  Research), https://github.com/zalandoresearch/fashion-mnist, MIT licence (Copyright 2017
  Zalando SE); cite arXiv:1708.07747. md5s are torchvision's.
* `binarized-mnist`: the fixed binarization of Larochelle & Murray (AISTATS 2011),
  50k/10k/10k, derived from MNIST (CC BY-SA 3.0), no separate explicit licence. Stored as
  `binarized_mnist.npz` (arrays train/valid/test, bits packed along axis 1) whose arrays
  reproduce the original `.amat` files bit for bit; it has no labels, and its test rows are
  sorted by class (shuffle before minibatching). It cannot be downloaded in this form.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pathlib
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from bbans_vae.errors import DataError

__all__ = [
    "DATASETS",
    "DataFile",
    "Dataset",
    "DatasetSpec",
    "dataset_names",
    "dataset_spec",
    "download_dataset",
    "load_dataset",
    "load_labels",
    "open_dataset",
    "read_idx",
    "resolve_data_root",
    "run_dataset",
    "sample_images",
]

ENV_DATA_DIR = "VAECOMPRESS_DATA"
DEFAULT_DATA_ROOT = pathlib.Path("~/.cache/vaecompress/data")
# the first 1,000 MNIST test images, bundled (see its README): always available
SAMPLES = pathlib.Path(__file__).resolve().parent / "bundled" / "samples" / "mnist_test_1000.npz"

# Largest IDX payload `read_idx` accepts (bytes); larger headers are refused unread.
MAX_IDX_PAYLOAD_BYTES = 2**31

_IDX_UBYTE = 0x08
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, relative to the data root, with the checksum it must have."""

    relpath: str  # POSIX path relative to the data root
    algo: str  # "md5" or "sha256": what is verified
    digest: str  # expected hex digest of the file as stored (the .gz for IDX files)
    size: int  # expected size in bytes
    urls: tuple[str, ...] = ()  # download mirrors, tried in order; empty: place it by hand

    def path(self, root: pathlib.Path) -> pathlib.Path:
        return root.joinpath(*self.relpath.split("/"))


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name means: pixels, shape, splits, and the files they come from."""

    name: str
    description: str
    pixel_kind: str  # "binary" (values {0,1}) or "8bit" (values 0..255)
    binarization: str  # "none", "threshold", "stochastic" or "fixed"
    image_shape: tuple[int, int]
    splits: tuple[str, ...]
    split_sizes: tuple[int, ...]  # number of images per split, aligned with `splits`
    # Per split: (split, images file index, labels file index or -1, npz array key or "").
    layout: tuple[tuple[str, int, int, str], ...]
    files: tuple[DataFile, ...]
    source: str
    license: str

    @property
    def num_values(self) -> int:
        """Number of distinct pixel values (2 or 256)."""
        return 2 if self.pixel_kind == "binary" else 256

    @property
    def num_pixels(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    @property
    def has_labels(self) -> bool:
        return any(lab >= 0 for _, _, lab, _ in self.layout)

    def split_size(self, split: str) -> int:
        return self.split_sizes[self._split_index(split)]

    def images_file(self, split: str) -> DataFile:
        return self.files[self.layout[self._split_index(split)][1]]

    def labels_file(self, split: str) -> DataFile | None:
        idx = self.layout[self._split_index(split)][2]
        return None if idx < 0 else self.files[idx]

    def _split_index(self, split: str) -> int:
        if not isinstance(split, str) or split not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no split {split!r}; choose one of: "
                + ", ".join(self.splits)
            )
        return self.splits.index(split)


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


# torchvision's file names; order: train images, train labels, test images, test labels
# (the indices `_IDX_LAYOUT` uses)
_IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")


def _idx_files(folder: str, mirrors: tuple[str, ...], md5s: tuple[str, ...], sizes: tuple[int, ...]
               ) -> tuple[DataFile, ...]:
    return tuple(DataFile(f"{folder}/raw/{fname}", "md5", md5, size, tuple(m + fname for m in mirrors))
                 for fname, md5, size in zip(_IDX_NAMES, md5s, sizes))


_MNIST_FILES = _idx_files("MNIST", _MNIST_MIRRORS, (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432", "9fb629c4189551a2d022fa330f9573f3",
    "ec29112dd5afa0611ce80d1b7f02629c"), (9912422, 28881, 1648877, 4542))
_FASHION_FILES = _idx_files("FashionMNIST", _FASHION_MIRRORS, (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe", "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310"), (26421880, 29515, 4422102, 5148))
_BINARIZED_FILES = (
    DataFile(
        "binarized_mnist/binarized_mnist.npz",
        "sha256",
        "df14a884cb4aa7ac6692463fb31798a687c4e762c73c23a8ae3114fbec4e6093",
        2336176,
    ),
)
_IDX_LAYOUT = (("train", 0, 1, ""), ("test", 2, 3, ""))
_MNIST_SOURCE = "MNIST, Y. LeCun, C. Cortes, C.J.C. Burges, http://yann.lecun.com/exdb/mnist/"


def _idx_spec(name: str, description: str, pixel_kind: str, binarization: str,
              files: tuple[DataFile, ...] = _MNIST_FILES, source: str = _MNIST_SOURCE,
              license: str = "CC BY-SA 3.0 (as commonly stated for MNIST)") -> DatasetSpec:
    """A 28x28 dataset in torchvision's IDX layout, 60,000 train and 10,000 test images
    (MNIST's files, source and licence unless told otherwise)."""
    return DatasetSpec(name=name, description=description, pixel_kind=pixel_kind, binarization=binarization,
                       image_shape=(28, 28), splits=("train", "test"), split_sizes=(60000, 10000),
                       layout=_IDX_LAYOUT, files=files, source=source, license=license)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _idx_spec(
            "mnist-bin", "MNIST thresholded at 0.5 (pixel >= 128 -> 1)", "binary", "threshold"
        ),
        _idx_spec(
            "mnist-bin-stoch",
            "MNIST binarized stochastically, RandomState(0).random_sample < x/255 per split",
            "binary",
            "stochastic",
        ),
        DatasetSpec(
            name="binarized-mnist",
            description="fixed binarization of Larochelle & Murray (50k/10k/10k, no labels)",
            pixel_kind="binary",
            binarization="fixed",
            image_shape=(28, 28),
            splits=("train", "valid", "test"),
            split_sizes=(50000, 10000, 10000),
            layout=(("train", 0, -1, "train"), ("valid", 0, -1, "valid"), ("test", 0, -1, "test")),
            files=_BINARIZED_FILES,
            source="H. Larochelle & I. Murray, AISTATS 2011 (derived from MNIST)",
            license="derived from MNIST (CC BY-SA 3.0); no separate explicit licence",
        ),
        _idx_spec("mnist", "MNIST, 8-bit grayscale", "8bit", "none"),
        _idx_spec(
            "fashion-mnist", "Fashion-MNIST, 8-bit grayscale", "8bit", "none", files=_FASHION_FILES,
            source="Fashion-MNIST, H. Xiao, K. Rasul, R. Vollgraf (Zalando Research), arXiv:1708.07747",
            license="MIT (Copyright 2017 Zalando SE)",
        ),
    )
}


def dataset_names() -> list[str]:
    """Names of all known datasets, in table order."""
    return list(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; DataError for an unknown name."""
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; choose one of: " + ", ".join(DATASETS))
    return spec


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The data root: `data_dir` if given, else `$VAECOMPRESS_DATA`, else ~/.cache/vaecompress/data.

    Empty strings count as not given. The result is absolute (not required to exist).
    """
    chosen: str | os.PathLike | None = None
    if data_dir is not None and os.fspath(data_dir) != "":
        chosen = data_dir
    elif os.environ.get(ENV_DATA_DIR):
        chosen = os.environ[ENV_DATA_DIR]
    if chosen is None:
        chosen = DEFAULT_DATA_ROOT
    return pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(chosen))))


# ---------------------------------------------------------------------------------------------
# Checksums


_verified: dict[tuple[str, int, int, str, str], bool] = {}
_verified_lock = threading.Lock()


def _new_hash(algo: str):
    return hashlib.new(algo, usedforsecurity=False)


def _file_digest(path: pathlib.Path, algo: str) -> str:
    h = _new_hash(algo)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def _stat_key(path: pathlib.Path, df: DataFile) -> tuple[str, int, int, str, str]:
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return (str(path), st.st_size, st.st_mtime_ns, df.algo, df.digest)


def _verify(path: pathlib.Path, df: DataFile) -> None:
    """Check `path` against `df`'s checksum (cached by path, size, mtime); DataError if wrong."""
    key = _stat_key(path, df)
    with _verified_lock:
        if _verified.get(key):
            return
    actual = _file_digest(path, df.algo)
    if actual != df.digest:
        raise DataError(
            f"{path} is corrupt or not the expected file: {df.algo} is {actual}, expected "
            f"{df.digest} ({key[1]} bytes, expected {df.size}); replace it with a good copy"
            + (f" (from {df.urls[0]})" if df.urls else "")
        )
    with _verified_lock:
        _verified[key] = True


def _missing_message(path: pathlib.Path, df: DataFile, name: str, root: pathlib.Path) -> str:
    where = "" if root.is_dir() else f" (data directory {root} does not exist)"
    how = (
        "put the file there, point --data-dir or $VAECOMPRESS_DATA at a directory that has it"
        + (f", or download it from {df.urls[0]}" if df.urls else " (it cannot be downloaded)")
    )
    return (
        f"dataset {name!r}: missing file {path} ({df.algo} {df.digest}){where}; {how}"
    )


# ---------------------------------------------------------------------------------------------
# IDX


def _read_exact(f, n: int, path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataError(f"{path}: truncated IDX file ({what}: got {len(data)} of {n} bytes)")
    return data


def _read_idx_stream(f, path, file_size: int | None) -> np.ndarray:
    head = _read_exact(f, 4, path, "magic number")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic bytes {head.hex()}, expected 0000XXYY)")
    if head[2] != _IDX_UBYTE:
        raise DataError(
            f"{path}: unsupported IDX element type 0x{head[2]:02x} (only unsigned bytes, 0x08)"
        )
    ndim = head[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    dims_raw = _read_exact(f, 4 * ndim, path, "dimensions")
    shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    payload = 1
    for d in shape:
        payload *= d
    if payload > MAX_IDX_PAYLOAD_BYTES:
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({payload} bytes), more than the "
            f"{MAX_IDX_PAYLOAD_BYTES} bytes accepted"
        )
    header_len = 4 + 4 * ndim
    if file_size is not None and file_size != header_len + payload:
        raise DataError(
            f"{path}: IDX size mismatch: header declares shape {shape} ({header_len + payload} "
            f"bytes with header), file has {file_size} bytes"
        )
    out = np.empty(payload, dtype=np.uint8)
    view = memoryview(out)
    got = 0
    while got < payload:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != payload:
        raise DataError(
            f"{path}: truncated IDX file (shape {shape} needs {payload} bytes of pixels, got {got})"
        )
    if f.read(1):
        raise DataError(f"{path}: IDX file has data after the declared shape {shape}")
    return out.reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (type 0x08, any number of dimensions), gzipped or not.

    Gzip is recognised by its magic bytes, not by the file name. The header must be exact:
    magic 0x0000 0x08 ndim, ndim > 0 big-endian uint32 dimensions, then exactly prod(dims)
    bytes. Headers declaring more than 2**31 bytes are refused before reading the payload.
    Returns a writable, C-contiguous uint8 array of the declared shape. DataError otherwise.
    """
    p = pathlib.Path(path)
    try:
        with open(p, "rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            if magic == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _read_idx_stream(gz, p, None)
            return _read_idx_stream(raw, p, os.fstat(raw.fileno()).st_size)
    except DataError:
        raise
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{p}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# Loading


def _locate(spec: DatasetSpec, df: DataFile, root: pathlib.Path) -> tuple[pathlib.Path, bool]:
    """(path to read, whether it is the checksummed original) or DataError if missing."""
    path = df.path(root)
    if path.is_file():
        return path, True
    if path.suffix == ".gz":
        extracted = path.with_suffix("")
        if extracted.is_file():
            return extracted, False
    raise DataError(_missing_message(path, df, spec.name, root))


def _load_idx_checked(
    spec: DatasetSpec, df: DataFile, root: pathlib.Path, expected_shape: tuple[int, ...]
) -> np.ndarray:
    path, original = _locate(spec, df, root)
    if original:
        _verify(path, df)
    arr = read_idx(path)
    if arr.shape != expected_shape:
        raise DataError(
            f"{path}: IDX shape {arr.shape}, expected {expected_shape} for dataset {spec.name!r}"
        )
    return arr


def _load_npz_split(spec: DatasetSpec, split: str, root: pathlib.Path) -> np.ndarray:
    df = spec.images_file(split)
    key = spec.layout[spec.splits.index(split)][3]
    path, _ = _locate(spec, df, root)
    _verify(path, df)
    n = spec.split_size(split)
    nbytes = (spec.num_pixels + 7) // 8
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise DataError(f"{path}: has no array {key!r} (arrays: {', '.join(z.files)})")
            packed = z[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read npz array {key!r}: {e}") from None
    if packed.dtype != np.uint8 or packed.shape != (n, nbytes):
        raise DataError(
            f"{path}: array {key!r} is {packed.dtype} {packed.shape}, expected uint8 {(n, nbytes)}"
        )
    bits = np.unpackbits(packed, axis=1)[:, : spec.num_pixels]
    return np.ascontiguousarray(bits.reshape((n, *spec.image_shape)))


def _stochastic_binarize(x: np.ndarray, seed: int = 0, chunk: int = 4096) -> np.ndarray:
    """`RandomState(seed).random_sample(x.shape) < x / 255.0` (x as float64), in row chunks.

    The generator draws doubles sequentially in C order, so chunking gives exactly the same
    result as the one-shot expression without its ~3 arrays of float64 at once.
    """
    rng = np.random.RandomState(seed)
    out = np.empty(x.shape, dtype=np.uint8)
    for i in range(0, x.shape[0], chunk):
        xs = x[i : i + chunk].astype(np.float64)
        out[i : i + chunk] = rng.random_sample(xs.shape) < xs / 255.0
    return out


def load_dataset(
    name: str, split: str = "test", data_root: str | os.PathLike | None = None
) -> np.ndarray:
    """Images of `split` of dataset `name` as uint8 (N, 28, 28), C-contiguous.

    Values are {0, 1} for binary datasets and 0..255 for 8-bit ones. Files are verified
    against their checksums (cached in-process). DataError for unknown names/splits and for
    missing or corrupt files.
    """
    spec = dataset_spec(name)
    n = spec.split_size(split)  # validates split
    root = resolve_data_root(data_root)
    if spec.binarization == "fixed":
        return _load_npz_split(spec, split, root)
    x = _load_idx_checked(spec, spec.images_file(split), root, (n, *spec.image_shape))
    if spec.binarization == "threshold":
        x = (x >= 128).astype(np.uint8)
    elif spec.binarization == "stochastic":
        x = _stochastic_binarize(x, seed=0)
    return np.ascontiguousarray(x)


def load_labels(
    name: str, split: str = "test", data_root: str | os.PathLike | None = None
) -> np.ndarray:
    """Class labels (int64, shape (N,), values 0..9) of `split` of dataset `name`."""
    spec = dataset_spec(name)
    n = spec.split_size(split)
    df = spec.labels_file(split)
    if df is None:
        raise DataError(f"dataset {name!r} has no labels")
    root = resolve_data_root(data_root)
    y = _load_idx_checked(spec, df, root, (n,))
    if y.size and int(y.max()) > 9:
        raise DataError(f"{df.path(root)}: label value {int(y.max())} out of range 0..9")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Download


def download_dataset(
    name: str, data_root: str | os.PathLike | None = None, *, timeout: float = 60.0
) -> None:
    """Fetch the files of dataset `name` into the data root, checking their checksums.

    Files already present with the right checksum are kept. Each file is written to a
    temporary file in its target folder, verified, then renamed into place. DataError when
    no mirror delivers a good copy (e.g. no network) or the folder cannot be written.
    binarized-mnist cannot be downloaded (only the .amat originals are online): DataError
    unless a good copy is already in place.
    """
    spec = dataset_spec(name)
    root = resolve_data_root(data_root)
    for df in spec.files:
        path = df.path(root)
        if path.is_file():
            try:
                _verify(path, df)
                continue
            except DataError:
                if not df.urls:
                    raise
        if not df.urls:
            raise DataError(
                f"dataset {name!r} cannot be downloaded: only the original .amat text files are "
                "online (http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/); "
                f"place {pathlib.PurePosixPath(df.relpath).name} ({df.algo} {df.digest}) at "
                f"{path} by hand"
            )
        _download_file(df, path, timeout)


def _download_file(df: DataFile, path: pathlib.Path, timeout: float) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {path.parent}: {e.strerror or e}") from None
    limit = 2 * df.size + _CHUNK
    errors: list[str] = []
    for url in df.urls:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        except OSError as e:
            raise DataError(f"cannot write into {path.parent}: {e.strerror or e}") from None
        tmp = pathlib.Path(tmp_name)
        try:
            h = _new_hash(df.algo)
            total = 0
            with os.fdopen(fd, "wb") as out:
                req = urllib.request.Request(url, headers={"User-Agent": "vaecompress"})
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    while chunk := resp.read(_CHUNK):
                        total += len(chunk)
                        if total > limit:
                            raise ValueError(f"more than {limit} bytes")
                        h.update(chunk)
                        out.write(chunk)
            actual = h.hexdigest()
            if actual != df.digest:
                errors.append(f"{url}: {df.algo} {actual}, expected {df.digest}")
                continue
            os.replace(tmp, path)
            with _verified_lock:
                _verified[_stat_key(path, df)] = True
            return
        except (OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    raise DataError(
        f"could not download {path.name} to {path} ({'; '.join(errors)}); without network, "
        "copy the file there by hand or set --data-dir/$VAECOMPRESS_DATA"
    )


def sample_images(limit: int | None = None) -> np.ndarray:
    """The bundled MNIST test images, uint8 (N, 28, 28) 0..255, the first `limit` of 1,000."""
    with np.load(SAMPLES, allow_pickle=False) as f:
        images = f["images"]
    return images[:limit] if limit else images


# ---------------------------------------------------------------------------------------------
# One entry point: a built-in name or a path


@dataclass
class Dataset:
    """A dataset resolved from a built-in name or a path: what `train`, `eval`, `gaps` and
    `bench` read. `images(split)` is (N, H, W) uint8 for gray, (N, H, W, 3) for colour,
    {0, 1} for binary pixels. `record` is None for built-in datasets (the name says it all) and
    the JSON record of `userdata.path_dataset` for paths (stored with a run)."""

    name: str
    description: str
    pixel_kind: str
    image_shape: tuple            # (H, W) gray, (H, W, C) colour
    splits: tuple[str, ...]
    record: dict | None = None
    arrays: dict | None = None    # path datasets: the images by split
    data_root: str | os.PathLike | None = None

    @property
    def eval_split(self) -> str:
        """The split `eval` and `bench` use by default: "test", else all images."""
        return "test" if "test" in self.splits else "all"

    def images(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise DataError(f"dataset {self.name!r} has no split {split!r}; choose one of: "
                            + ", ".join(self.splits))
        if self.arrays is None:
            return load_dataset(self.name, split, self.data_root)
        return self.arrays[split]


def _from_arrays(arrays: dict, record: dict) -> Dataset:
    shape = tuple(record["image_shape"])
    shape = shape[:2] if shape[2] == 1 else shape
    split = record["split"]["method"]
    text = {"none": "all images", "holdout": f"test: seeded holdout {record['split'].get('fraction')}",
            "test-path": f"test: {record['split'].get('test', {}).get('path')}"}[split]
    desc = (f"{record['n_images']} images {'x'.join(map(str, shape))} from {record['path']} "
            f"({record['kind']}), {record['pixels']} pixels, {text}")
    return Dataset(name=record["path"], description=desc, pixel_kind=record["pixels"], image_shape=shape,
                   splits=tuple(s for s in ("train", "test", "all") if s in arrays), record=record,
                   arrays=arrays)


def open_dataset(ref: str, *, test: str | None = None, holdout: float | None = None,
                 pixels: str | None = None, seed: int = 0,
                 data_root: str | os.PathLike | None = None) -> Dataset:
    """A built-in dataset by name, or the images under a path (see `userdata`): a folder of
    PNGs, a .npy/.npz array or an IDX file. `test`, `holdout` and `pixels` apply to paths only."""
    from . import userdata
    if isinstance(ref, str) and ref in DATASETS:
        if test is not None or holdout is not None or pixels not in (None, "auto"):
            raise DataError(f"--test, --holdout and --pixels apply to datasets from paths; {ref!r} is a "
                            "built-in dataset with fixed splits and pixels")
        spec = DATASETS[ref]
        return Dataset(ref, spec.description, spec.pixel_kind, spec.image_shape, spec.splits,
                       data_root=data_root)
    if not os.path.exists(ref):
        raise DataError(f"unknown dataset {ref!r}: not a path, nor one of: " + ", ".join(DATASETS))
    arrays, record = userdata.path_dataset(ref, test=test, holdout=holdout, pixels=pixels, seed=seed)
    return _from_arrays(arrays, record)


def run_dataset(config: dict, data_root: str | os.PathLike | None = None) -> Dataset:
    """The dataset a run or checkpoint `config` was trained on: its data record (the same images,
    checked by sha256) or its built-in dataset name."""
    from . import userdata
    if config.get("data"):
        record = config["data"]
        return _from_arrays(userdata.dataset_from_record(record), record)
    name = config.get("dataset")
    if not name:
        raise DataError("the model does not record its dataset; pass --dataset")
    return open_dataset(name, data_root=data_root)
