"""Reading images to code and writing decoded images, atomically.

Inputs (`read_inputs`): PNG files, folders of PNGs (non-recursive, sorted by name, dotfiles
skipped), `.npy` arrays of shape (N, H, W), (N, H, W, 3) or (H, W) and dtype uint8, and IDX
files (`*-ubyte`, `*-ubyte.gz`, `*.idx`, ...). Everything is read in two passes: the first reads
only headers (modes, shapes, dtypes) so that bad inputs and oversized batches are refused
before any pixel buffer is allocated; the second fills one (N, H, W) gray or (N, H, W, 3) RGB
uint8 array; gray and RGB inputs are not mixed. PNG metadata (gamma, text chunks, ...) is not
kept: only the 8-bit gray or RGB values are coded.

Outputs (`write_outputs`, `write_file_atomic`): everything is written to a temporary
sibling of the destination, flushed and fsynced, then renamed into place, so a reader never
sees a half-written result. An existing destination is only replaced with `force`, and then
only after the new one is complete, and only if it is a regular file (never a device, FIFO,
socket or symbolic link). `decode --force` into an existing folder replaces only the files it
writes there (each atomically) and leaves everything else in the folder alone.
`check_output_file` / `check_output_dir` do every check that can fail before the work starts.
Output names may come from a file header, so they are treated as hostile: only the safe set of
`bbans_vae.container.name_problem` is written.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bbans_vae.container import name_problem, printable, safe_name
from bbans_vae.errors import InputError, OutputError

__all__ = ["ImageSet", "read_inputs", "write_outputs", "write_file_atomic", "check_output_file",
           "check_output_dir", "output_files", "MAX_PIXELS"]

MAX_PIXELS = 2**31

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_IDX_SUFFIXES = ("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")


@dataclass
class ImageSet:
    """A batch of 8-bit images (gray or RGB) and their output names."""

    pixels: np.ndarray | list  # (N, H, W) gray or (N, H, W, 3) RGB, uint8, C-contiguous; or (mixed_sizes)
                               # a list of (H, W[, 3]) images when their sizes differ
    names: list[str]  # one per image, relative output stem (no extension), unique


@dataclass
class _Entry:
    """One input file after the header pass."""

    path: Path
    kind: str  # "png" | "npy" | "idx"
    n: int
    h: int
    w: int
    stem: str
    png_mode: str = ""
    c: int = 1  # channels: 1 (gray) or 3 (RGB)
    array: np.ndarray | None = None  # IDX array already loaded while diagnosing its header


# --------------------------------------------------------------------------- reading


def read_inputs(paths: Sequence[str | Path], max_pixels: int = MAX_PIXELS, mixed_sizes: bool = False) -> ImageSet:
    """Read PNG files, PNG folders, .npy and IDX files into one (N, H, W) uint8 batch.

    Raises InputError (one line, says what to do) for anything a user can get wrong:
    missing paths, empty folders, unsupported files or modes, corrupt files, images of
    different sizes, or more than `max_pixels` pixels in total. With `mixed_sizes`, images of
    different H x W (one channel count) are read into a list of (H, W[, C]) arrays instead.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = _expand(paths)
    if not files:
        raise InputError("no input images given; pass PNG files, folders of PNGs, .npy or IDX files")

    entries: list[_Entry] = []
    total = 0
    first: _Entry | None = None
    for path in files:
        entry = _scan(path)
        if entry.n > 0 and (entry.h == 0 or entry.w == 0):
            raise InputError(f"{path} holds empty images ({entry.h}x{entry.w}); give images of at least 1x1 pixels")
        if entry.n > 0:
            if first is None:
                first = entry
            elif (entry.h, entry.w, entry.c) != (first.h, first.w, first.c) and not (mixed_sizes and entry.c == first.c):
                raise InputError(
                    f"{path} has images of {entry.h}x{entry.w}x{entry.c} (HxWxC) but {first.path} has "
                    f"{first.h}x{first.w}x{first.c}; all inputs must share one size and channel count"
                )
        total += entry.n * entry.h * entry.w * entry.c
        if total > max_pixels:
            raise InputError(
                f"inputs hold more than {max_pixels} pixels (limit reached at {path}); "
                "code them in smaller batches"
            )
        entries.append(entry)

    n_total = sum(e.n for e in entries)
    if first is None or n_total == 0:
        raise InputError("the inputs contain no images; give at least one image")
    shape = (first.h, first.w) if first.c == 1 else (first.h, first.w, first.c)
    one_size = all((e.h, e.w) == (first.h, first.w) for e in entries if e.n)

    pixels = np.empty((n_total, *shape), dtype=np.uint8) if one_size else []
    names: list[str] = []
    offset = 0
    for entry in entries:
        if entry.n == 0:
            continue
        if one_size:
            target = pixels[offset : offset + entry.n]
        else:
            target = np.empty((entry.n, entry.h, entry.w) + ((entry.c,) if entry.c > 1 else ()), np.uint8)
            pixels.extend(target)
        if entry.kind == "png":
            target[0] = _load_png(entry)
            names.append(_sanitize(entry.stem))
        elif entry.kind == "npy":
            _load_npy(entry, target)
            names.extend(_sanitize(f"{entry.stem}_{i:05d}") for i in range(entry.n))
        else:
            target[...] = _load_idx(entry)
            names.extend(_sanitize(f"{entry.stem}_{i:05d}") for i in range(entry.n))
        offset += entry.n
    return ImageSet(pixels=pixels, names=_dedupe(names))


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path} does not exist; check the path")
        if path.is_dir():
            try:
                pngs = sorted(
                    (p for p in path.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()),
                    key=lambda p: p.name,
                )
            except OSError as exc:
                raise InputError(f"cannot list folder {path}: {exc.strerror or exc}") from exc
            if not pngs:
                raise InputError(f"folder {path} contains no .png files; give a folder of PNG images")
            files.extend(pngs)
        else:
            files.append(path)
    return files


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _kind(path: Path) -> str:
    name = path.name.lower()
    head = _head(path)
    if head.startswith(_PNG_SIGNATURE) or name.endswith(".png"):
        return "png"
    if head.startswith(_NPY_MAGIC) or name.endswith(".npy"):
        return "npy"
    if name.endswith(_IDX_SUFFIXES):
        return "idx"
    raise InputError(f"{path} is not a PNG, .npy or IDX file; give gray or RGB PNGs, .npy (N,H,W[,3]) uint8 arrays or IDX files")


def _scan(path: Path) -> _Entry:
    kind = _kind(path)
    if kind == "png":
        return _scan_png(path)
    if kind == "npy":
        return _scan_npy(path)
    return _scan_idx(path)


def _array_stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem if name.lower().endswith((".npy", ".idx")) else name


# PNG ------------------------------------------------------------------------------


def _open_png(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels bounds memory
            im = Image.open(path)
    except UnidentifiedImageError as exc:
        if _head(path).startswith(_PNG_SIGNATURE):
            raise InputError(f"{path} is a corrupt PNG file; re-export it") from exc
        raise InputError(f"{path} is not a PNG, .npy or IDX file; give gray or RGB PNGs, .npy (N,H,W[,3]) uint8 arrays or IDX files") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path} is too large to read safely; split it into smaller images") from exc
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error, not Pillow's "truncated" OSError
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        raise InputError(f"{path} is a corrupt or truncated PNG file ({exc}); re-export it") from exc
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise InputError(f"{path} is a corrupt PNG file ({exc}); re-export it") from exc
    if im.format != "PNG":
        im.close()
        raise InputError(f"{path} is a {im.format} file, not a PNG; convert it to an 8-bit gray or RGB PNG")
    return im


def _input_error(fn, *args):
    """fn(*args) from the library, its DataError (a bad input file) raised as an InputError."""
    from bbans_vae.errors import DataError
    try:
        return fn(*args)
    except DataError as exc:
        raise InputError(str(exc)) from None


def _png_channels(path: Path, im) -> int:
    from bbans_vae.userdata import png_channels   # the one PNG mode check (datasets use it too)
    return _input_error(png_channels, path, im)


def _gray_palette(path: Path, im) -> np.ndarray | None:
    from bbans_vae.userdata import gray_palette
    return _input_error(gray_palette, path, im)


def _scan_png(path: Path) -> _Entry:
    im = _open_png(path)
    try:
        c = _png_channels(path, im)
        w, h = im.size
        return _Entry(path=path, kind="png", n=1, h=h, w=w, stem=path.stem, png_mode=im.mode, c=c)
    finally:
        im.close()


def _load_png(entry: _Entry) -> np.ndarray:
    path = entry.path
    im = _open_png(path)
    try:
        if im.mode != entry.png_mode or im.size != (entry.w, entry.h):
            raise InputError(f"{path} changed while it was being read; try again")
        try:
            im.load()
        except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, zlib.error, ...
            raise InputError(f"{path} is a corrupt or truncated PNG file ({exc}); re-export it") from exc
        if im.mode == "1":
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
        elif im.mode == "P":
            gray = _gray_palette(path, im) if entry.c == 1 else None
            arr = gray if gray is not None else np.asarray(im.convert("RGB"), dtype=np.uint8)
        else:
            arr = np.asarray(im, dtype=np.uint8)
    finally:
        im.close()
    if arr.shape != ((entry.h, entry.w) if entry.c == 1 else (entry.h, entry.w, entry.c)):
        raise InputError(f"{path} changed while it was being read; try again")
    return arr


# NPY ------------------------------------------------------------------------------


def _scan_npy(path: Path) -> _Entry:
    expected = "expected a uint8 array of shape (N,H,W), (N,H,W,3) or (H,W)"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # v3 is only written for structured dtypes with unicode field names
                raise InputError(f"{path} holds a structured array; {expected}")
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # ValueError from a malformed header
        raise InputError(f"{path} is not a valid .npy file ({exc}); {expected}") from exc
    if dtype != np.uint8:
        raise InputError(f"{path} holds dtype {dtype}; {expected} (convert with .astype(np.uint8))")
    n, h, w, c = _images_shape(shape, path, "an array", expected)
    return _Entry(path=path, kind="npy", n=n, h=h, w=w, stem=_array_stem(path), c=c)


def _images_shape(dims, path: Path, what: str, expected: str, hint: str = "") -> tuple[int, int, int, int]:
    """(N, H, W, C) of an array shaped (N, H, W), (N, H, W, C) with C 1 or 3, or (H, W) for one
    image; InputError otherwise."""
    if len(dims) == 2:
        return 1, int(dims[0]), int(dims[1]), 1
    if len(dims) == 3:
        return int(dims[0]), int(dims[1]), int(dims[2]), 1
    if len(dims) == 4 and dims[3] in (1, 3):
        return int(dims[0]), int(dims[1]), int(dims[2]), int(dims[3])
    raise InputError(f"{path} holds {what} of shape {tuple(dims)}{hint}; {expected}")


def _load_npy(entry: _Entry, target: np.ndarray) -> None:
    """Copy the array of a scanned .npy file into `target` (memory-mapped: no second copy)."""
    path = entry.path
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # ValueError: truncated data ("mmap length is greater than file size")
        raise InputError(f"{path} is a corrupt or truncated .npy file ({exc}); re-export it") from exc
    mm = getattr(arr, "_mmap", None)
    try:
        if arr.dtype != np.uint8 or arr.size != target.size:
            raise InputError(f"{path} changed while it was being read; try again")
        target[...] = np.asarray(arr).reshape(target.shape)
    finally:
        del arr
        if mm is not None:
            try:
                mm.close()
            except (BufferError, ValueError):
                pass


# IDX ------------------------------------------------------------------------------


def _peek_idx(path: Path) -> tuple[int, tuple[int, ...]] | None:
    """(type code, dims) from an IDX header, or None where the header cannot be parsed."""
    try:  # gzip is recognised by its magic bytes, as bbans_vae.data.read_idx does
        opener = gzip.open if _head(path, 2) == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0:
                return None
            ndim = head[3]
            raw = f.read(4 * ndim)
            if len(raw) != 4 * ndim:
                return None
            return head[2], struct.unpack(f">{ndim}I", raw)
    except (OSError, EOFError, InputError):
        return None


def _read_idx(path: Path) -> np.ndarray:
    from bbans_vae.data import read_idx
    return _input_error(read_idx, path)


def _scan_idx(path: Path) -> _Entry:
    expected = "expected unsigned-byte images of shape (N,H,W), (N,H,W,3) or (H,W)"
    stem = _array_stem(path)
    header = _peek_idx(path)
    array = None
    if header is None:
        array = _read_idx(path)  # let the reader say what is wrong; it usually raises
        type_code, dims = (0x08 if array.dtype == np.uint8 else -1), array.shape
    else:
        type_code, dims = header
    if type_code != 0x08:
        raise InputError(f"{path} holds IDX data of type {type_code:#04x}; {expected} (type 0x08)")
    n, h, w, c = _images_shape(dims, path, "an IDX array", expected, " (is it a label file?)" if len(dims) == 1 else "")
    return _Entry(path=path, kind="idx", n=n, h=h, w=w, stem=stem, array=array, c=c)


def _load_idx(entry: _Entry) -> np.ndarray:
    arr = entry.array if entry.array is not None else _read_idx(entry.path)
    entry.array = None
    if arr.dtype != np.uint8 or arr.size != entry.n * entry.h * entry.w * entry.c:
        raise InputError(f"{entry.path} does not match its IDX header; re-download or re-export it")
    return np.asarray(arr).reshape((entry.n, entry.h, entry.w) if entry.c == 1 else (entry.n, entry.h, entry.w, entry.c))


# names ----------------------------------------------------------------------------


def _sanitize(name: str) -> str:
    """The safe output name closest to `name` (disallowed characters become '_')."""
    return safe_name(name)


def _dedupe(names: list[str]) -> list[str]:
    """Make names unique (case-insensitively): later duplicates get `_1`, `_2`, ..."""
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, k = name, 0
        while candidate.casefold() in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate.casefold())
        out.append(candidate)
    return out


def _check_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            raise OutputError(
                f"refusing to write an output named '{printable(name)}' ({problem}); "
                "the input file may be corrupt or hostile"
            )
        key = name.casefold()
        if key in seen:
            raise OutputError(f"two outputs are named {name!r}; the input file may be corrupt")
        seen.add(key)


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_fsynced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _ensure_parent(path: Path) -> Path:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {parent}: {exc.strerror or exc}") from exc
    return parent


def _publish(dest: Path, make: Callable[[Path], Path], fill_and_publish: Callable[[Path], None],
             parent: Path | None = None) -> None:
    """Make a temporary file or folder in `parent` (default: next to `dest`), fill it and move it
    into place (fill_and_publish(tmp)); an OSError becomes one OutputError line, and a temporary
    that was not published is removed."""
    parent = _ensure_parent(dest) if parent is None else parent
    tmp: Path | None = None
    try:
        try:
            tmp = make(parent)
            fill_and_publish(tmp)
            tmp = None
        except OSError as exc:
            raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            tmp.unlink(missing_ok=True)
    _fsync_dir(parent)


def output_files(names: list[str], fmt: str) -> list[str]:
    """The file names `write_outputs` creates inside the output folder."""
    if fmt not in ("png", "npy"):
        raise ValueError(f"unknown output format {fmt!r}")
    return [f"{n}.png" for n in names] if fmt == "png" else ["images.npy", "names.txt"]


def _refuse_special(path: Path, what: str = "") -> None:
    """Raise unless `path` is absent or a regular file (lstat: a link is not followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot inspect {path}: {exc.strerror or exc}") from exc
    if stat.S_ISREG(st.st_mode):
        return
    kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if stat.S_ISLNK(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "special")
    raise OutputError(f"{path} exists and is {kind}, not a regular file; refusing to replace it{what}")


def _writable_dir(folder: Path, create: bool) -> None:
    """Prove `folder` (or the nearest existing parent, if it would be created) takes new files."""
    probe = folder
    while not os.path.lexists(probe) and create and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write into {folder}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".vaecompress-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(f"cannot write into {probe}: {exc.strerror or exc}") from exc


def check_output_file(path: Path, force: bool) -> None:
    """Everything that would stop `write_file_atomic(path, ..., force)`, checked before the work."""
    path = Path(path)
    if os.path.lexists(path):
        if not force:
            raise OutputError(f"{path} exists; use --force to overwrite")
        if path.is_dir() and not path.is_symlink():
            raise OutputError(f"{path} is a folder; give a file name")
        _refuse_special(path)
    _writable_dir(path.parent, create=True)


def check_output_dir(out_dir: Path, files: list[str], force: bool) -> None:
    """Everything that would stop `write_outputs` into `out_dir`, checked before decoding."""
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir):
        if not force:
            raise OutputError(f"{out_dir} exists; use --force to overwrite (only the files decode writes are replaced)")
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir} exists and is not a folder; refusing to replace it")
        for rel in files:
            _refuse_special(out_dir / rel, " (decode --force replaces only files it writes)")
        _writable_dir(out_dir, create=False)
    else:
        _writable_dir(out_dir.parent, create=True)
def write_outputs(pixels: np.ndarray, names: list[str], out_dir: Path, fmt: str, force: bool) -> list[Path]:
    """Write decoded images into `out_dir`, atomically; return the written file paths.

    fmt "png": one 8-bit gray or RGB PNG per image, `out_dir/<name>.png` (values written as-is).
    fmt "npy": `out_dir/images.npy` (N, H, W) or (N, H, W, 3) uint8 plus `out_dir/names.txt`, one name per line.
    A new `out_dir` appears complete (one rename); into an existing one (`force`), each file is
    replaced atomically and nothing else in the folder is touched.
    """
    out_dir = Path(out_dir)
    rel = output_files(list(names), fmt)
    if isinstance(pixels, list):                     # images of several sizes: PNG files only
        if fmt != "png" or len(names) != len(pixels) or any(a.dtype != np.uint8 or a.ndim not in (2, 3) for a in pixels):
            raise ValueError("images of several sizes are written as PNG files, one per name")
    else:
        pixels = np.asarray(pixels)
        colour = pixels.ndim == 4 and pixels.shape[3] == 3
        if not (pixels.ndim == 3 or colour) or pixels.dtype != np.uint8 or len(names) != pixels.shape[0]:
            raise ValueError(f"expected (N,H,W) or (N,H,W,3) uint8 pixels and N names, got {pixels.shape} "
                             f"{pixels.dtype}, {len(names)} names")
    _check_names(list(names))
    check_output_dir(out_dir, rel, force)
    merge = os.path.lexists(out_dir)

    def make(parent: Path) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
        return tmp

    def fill_and_publish(tmp: Path) -> None:
        if fmt == "png":
            from PIL import Image

            for name, img in zip(names, pixels):
                im = Image.fromarray(np.ascontiguousarray(img))
                _write_fsynced(tmp / f"{name}.png", lambda f, im=im: im.save(f, format="PNG"))
        else:
            arr = np.ascontiguousarray(pixels)
            _write_fsynced(tmp / "images.npy", lambda f: np.save(f, arr, allow_pickle=False))
            text = "".join(f"{n}\n" for n in names).encode("utf-8")
            _write_fsynced(tmp / "names.txt", lambda f: f.write(text))
        _fsync_dir(tmp)
        if merge:
            for r in rel:                      # checked again: the folder may have changed
                _refuse_special(out_dir / r, " (decode --force replaces only files it writes)")
            for r in rel:
                os.replace(tmp / r, out_dir / r)
            os.rmdir(tmp)
        else:
            _replace_into(tmp, out_dir)

    _publish(out_dir, make, fill_and_publish, parent=out_dir if merge else None)
    return [out_dir / r for r in rel]


def _replace_into(new: Path, dest: Path) -> None:
    """Rename the complete `new` onto an absent `dest` (a folder created meanwhile makes this
    fail instead of being replaced)."""
    if os.path.lexists(dest):
        raise OutputError(f"{dest} appeared while decoding; nothing was replaced")
    os.rename(new, dest)


def write_file_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write `data` to `path` via a fsynced temp file in the same folder and `os.replace`.
    With `force`, only a regular file is replaced (never a device, FIFO, socket or link)."""
    path = Path(path)
    check_output_file(path, force)

    def make(parent: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
        os.close(fd)
        return Path(name)

    def fill_and_publish(tmp: Path) -> None:
        _write_fsynced(tmp, lambda f: f.write(data))
        os.chmod(tmp, 0o666 & ~_umask())
        try:  # no-clobber first: fails if `path` exists
            os.link(tmp, path)
        except FileExistsError:
            if not force:
                raise OutputError(f"{path} exists; use --force to overwrite") from None
            _refuse_special(path)
            os.replace(tmp, path)
        except OSError:  # hard links unsupported on this file system
            if os.path.lexists(path):
                if not force:
                    raise OutputError(f"{path} exists; use --force to overwrite") from None
                _refuse_special(path)
            os.replace(tmp, path)
        else:
            tmp.unlink(missing_ok=True)

    _publish(path, make, fill_and_publish)
