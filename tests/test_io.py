"""Tests for cli/io.py (vaecompress_cli.io): reading inputs, atomic writing of outputs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbans_vae.errors import InputError, OutputError
from vaecompress_cli import io as cli_io
from vaecompress_cli.io import ImageSet, read_inputs, write_file_atomic, write_outputs


def _rng_images(n=3, h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    im.save(path, format="PNG")
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ----------------------------------------------------------------------------- reading


def test_png_folder_round_trip(tmp_path):
    pixels = _rng_images()
    names = ["b", "a", "c"]
    out = tmp_path / "out"
    written = write_outputs(pixels, names, out, "png", force=False)
    assert written == [out / "b.png", out / "a.png", out / "c.png"]
    got = read_inputs([out])
    assert isinstance(got, ImageSet)
    assert got.names == ["a", "b", "c"]  # folder order: sorted by name
    order = [names.index(n) for n in got.names]
    np.testing.assert_array_equal(got.pixels, pixels[order])
    assert got.pixels.dtype == np.uint8 and got.pixels.flags.c_contiguous
    assert _leftovers(tmp_path) == []


def test_binary_values_written_as_is(tmp_path):
    pixels = (_rng_images(2) % 2).astype(np.uint8)
    write_outputs(pixels, ["x", "y"], tmp_path / "o", "png", force=False)
    np.testing.assert_array_equal(read_inputs([tmp_path / "o" / "x.png"]).pixels[0], pixels[0])


def test_npy_round_trip(tmp_path):
    pixels = _rng_images(4)
    out = tmp_path / "o"
    written = write_outputs(pixels, ["p", "q", "r", "s"], out, "npy", force=False)
    assert written == [out / "images.npy", out / "names.txt"]
    assert (out / "names.txt").read_text().splitlines() == ["p", "q", "r", "s"]
    got = read_inputs([out / "images.npy"])
    np.testing.assert_array_equal(got.pixels, pixels)
    assert got.names == [f"images_{i:05d}" for i in range(4)]


def test_npy_2d_and_fortran_order(tmp_path):
    a = _rng_images(1, 6, 4)[0]
    np.save(tmp_path / "one.npy", np.asfortranarray(a))
    got = read_inputs([tmp_path / "one.npy"])
    assert got.pixels.shape == (1, 6, 4) and got.names == ["one_00000"]
    np.testing.assert_array_equal(got.pixels[0], a)


@pytest.mark.parametrize(
    "arr, fragment",
    [
        (np.zeros((2, 3, 3), np.float32), "float32"),
        (np.zeros((2, 3, 3, 4), np.uint8), "(2, 3, 3, 4)"),
        (np.zeros((3,), np.uint8), "(3,)"),
        (np.array([{"a": 1}], dtype=object), "object"),
    ],
)
def test_npy_bad_arrays(tmp_path, arr, fragment):
    np.save(tmp_path / "bad.npy", arr, allow_pickle=True)
    with pytest.raises(InputError, match="uint8 array of shape") as e:
        read_inputs([tmp_path / "bad.npy"])
    assert fragment in str(e.value)


def test_npy_truncated(tmp_path):
    np.save(tmp_path / "t.npy", _rng_images(3))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-20])
    with pytest.raises(InputError, match="corrupt or truncated"):
        read_inputs([tmp_path / "t.npy"])


def test_png_mode_1_and_grayscale_palette(tmp_path):
    bits = (_rng_images(1)[0] > 127).astype(np.uint8) * 255
    _png(tmp_path / "bw.png", bits, mode="1")
    with Image.open(tmp_path / "bw.png") as im:
        assert im.mode == "1"
    gray = _rng_images(1, seed=1)[0]
    pal_im = Image.fromarray(gray // 32, mode=None).convert("L")  # indices 0..7
    pal_im = Image.fromarray(np.asarray(pal_im)).convert("P")
    pal_im.putpalette([v for i in range(256) for v in (i * 3 % 256,) * 3])
    pal_im.save(tmp_path / "pal.png")
    with Image.open(tmp_path / "pal.png") as im:
        assert im.mode == "P"
    got = read_inputs([tmp_path / "bw.png", tmp_path / "pal.png"])
    assert got.names == ["bw", "pal"]
    np.testing.assert_array_equal(got.pixels[0], bits)
    np.testing.assert_array_equal(got.pixels[1], ((gray // 32).astype(np.int64) * 3 % 256).astype(np.uint8))


def test_color_palette_reads_as_rgb(tmp_path):
    im = Image.fromarray(np.zeros((4, 4), np.uint8)).convert("P")
    im.putpalette([10, 20, 30] * 256)
    im.save(tmp_path / "c.png")
    got = read_inputs([tmp_path / "c.png"])
    assert got.pixels.shape == (1, 4, 4, 3)
    assert (got.pixels == np.array([10, 20, 30], np.uint8)).all()


def test_rgb_pngs_and_arrays_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    for i, a in enumerate(rgb[:2]):
        Image.fromarray(a).save(tmp_path / f"p{i}.png")
    np.save(tmp_path / "x.npy", rgb[2:])
    got = read_inputs([tmp_path / "p0.png", tmp_path / "p1.png", tmp_path / "x.npy"])
    np.testing.assert_array_equal(got.pixels, rgb)
    paths = write_outputs(got.pixels, got.names, tmp_path / "out", "png", force=False)
    for p, a in zip(paths, rgb):
        with Image.open(p) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), a)
    np.save(tmp_path / "g.npy", rgb[:1, ..., 0])
    with pytest.raises(InputError, match="5x7x1 .*share one size and channel count"):
        read_inputs([tmp_path / "p0.png", tmp_path / "g.npy"])


@pytest.mark.parametrize("mode, channels", [("RGBA", 4), ("LA", 2)])
def test_alpha_rejected(tmp_path, mode, channels):
    _png(tmp_path / "m.png", _rng_images(1)[0], mode=mode)
    with pytest.raises(InputError, match=f"has {channels} channels \\({mode}\\); the models code gray"):
        read_inputs([tmp_path / "m.png"])


def test_16bit_rejected(tmp_path):
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(InputError, match="16-bit images are not supported"):
        read_inputs([tmp_path / "d.png"])
    import imagecodecs                          # 16-bit RGB: Pillow reads it as 8-bit RGB, silently
    (tmp_path / "e.png").write_bytes(imagecodecs.png_encode(np.full((4, 4, 3), 1000, np.uint16)))
    with pytest.raises(InputError, match="16-bit images are not supported"):
        read_inputs([tmp_path / "e.png"])


def test_corrupt_and_truncated_png(tmp_path):
    _png(tmp_path / "ok.png", _rng_images(1, 64, 64)[0])
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.png.*corrupt or truncated"):
        read_inputs([tmp_path / "trunc.png"])
    idat = data.index(b"IDAT")
    bad = bytearray(data)
    bad[idat + 10 : idat + 40] = b"\x00" * 30
    (tmp_path / "bad.png").write_bytes(bytes(bad))
    with pytest.raises(InputError, match="bad.png.*corrupt"):
        read_inputs([tmp_path / "bad.png"])
    (tmp_path / "head.png").write_bytes(data[:20])  # signature and a broken IHDR
    with pytest.raises(InputError, match="head.png.*corrupt"):
        read_inputs([tmp_path / "head.png"])


def test_not_an_image(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="notes.txt is not a PNG, .npy or IDX file"):
        read_inputs([tmp_path / "notes.txt"])
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(InputError, match="fake.png is not a PNG, .npy or IDX file"):
        read_inputs([tmp_path / "fake.png"])
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "j.png", format="JPEG")
    with pytest.raises(InputError, match="not a PNG"):
        read_inputs([tmp_path / "j.png"])


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("no images")
    with pytest.raises(InputError, match="contains no .png files"):
        read_inputs([tmp_path / "empty"])
    with pytest.raises(InputError, match="does not exist"):
        read_inputs([tmp_path / "nope.png"])
    with pytest.raises(InputError, match="no input images"):
        read_inputs([])


def test_mismatched_sizes(tmp_path):
    _png(tmp_path / "a.png", _rng_images(1, 5, 7)[0])
    _png(tmp_path / "b.png", _rng_images(1, 7, 5)[0])
    with pytest.raises(InputError, match="b.png has images of 7x5"):
        read_inputs([tmp_path / "a.png", tmp_path / "b.png"])


def test_duplicate_stems_disambiguated(tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
    _png(tmp_path / "d1" / "x.png", _rng_images(1, seed=1)[0])
    _png(tmp_path / "d2" / "x.png", _rng_images(1, seed=2)[0])
    _png(tmp_path / "d2" / "X_1.png", _rng_images(1, seed=3)[0])
    np.save(tmp_path / "x.npy", _rng_images(1))
    got = read_inputs([tmp_path / "d1", tmp_path / "d2", tmp_path / "x.npy"])
    # d2 sorts "X_1.png" before "x.png"; the second "x" cannot take "x_1" (case-insensitive clash)
    assert got.names == ["x", "X_1", "x_2", "x_00000"]
    assert len({n.casefold() for n in got.names}) == 4


def test_max_pixels(tmp_path):
    np.save(tmp_path / "big.npy", _rng_images(4, 10, 10))
    with pytest.raises(InputError, match="smaller batches"):
        read_inputs([tmp_path / "big.npy"], max_pixels=399)
    assert read_inputs([tmp_path / "big.npy"], max_pixels=400).pixels.shape == (4, 10, 10)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    data = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


def _have_read_idx() -> bool:
    try:
        from bbans_vae.data import read_idx  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_read_idx(), reason="bbans_vae.data.read_idx not available yet")
def test_idx_files(tmp_path):
    arr = _rng_images(3, 4, 4)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", arr)
    _write_idx(tmp_path / "imgs-idx3-ubyte.gz", arr[::-1].copy())
    got = read_inputs([tmp_path / "t10k-images-idx3-ubyte", tmp_path / "imgs-idx3-ubyte.gz"])
    np.testing.assert_array_equal(got.pixels, np.concatenate([arr, arr[::-1]]))
    assert got.names[0] == "t10k-images-idx3-ubyte_00000" and got.names[3] == "imgs-idx3-ubyte_00000"
    _write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    with pytest.raises(InputError, match="label file"):
        read_inputs([tmp_path / "labels-idx1-ubyte"])
    (tmp_path / "junk-idx3-ubyte").write_bytes(b"\x01\x02")
    with pytest.raises(InputError, match="junk-idx3-ubyte"):  # read_idx's DataError, re-raised
        read_inputs([tmp_path / "junk-idx3-ubyte"])


# ----------------------------------------------------------------------------- writing


def test_existing_output_without_force_untouched(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(OutputError, match="exists; use --force to overwrite"):
        write_outputs(_rng_images(1), ["a"], out, "png", force=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _leftovers(tmp_path) == []


def test_existing_output_with_force_replaces_only_its_files(tmp_path):
    """decode --force writes into an existing folder: its own files are replaced, others kept (#15)."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    (out / "images.npy").write_bytes(b"stale")
    write_outputs(_rng_images(2), ["a", "b"], out, "npy", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["images.npy", "keep.txt", "names.txt"]
    assert (out / "keep.txt").read_text() == "old"
    assert np.load(out / "images.npy").shape == (2, 5, 7)
    assert _leftovers(tmp_path) == [] and [p for p in out.iterdir() if p.name.startswith(".")] == []


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    calls = {"n": 0}
    real = cli_io._write_fsynced

    def flaky(path, write):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(path, write)

    monkeypatch.setattr(cli_io, "_write_fsynced", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(_rng_images(3), ["a", "b", "c"], out, "png", force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(cli_io, "_write_fsynced", lambda p, w: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OutputError, match="No space left"):
        write_outputs(_rng_images(1), ["a"], tmp_path / "new", "npy", force=False)
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".", "", "a\\b", "x\ny", "nul\0"])
def test_hostile_names_rejected(tmp_path, bad):
    with pytest.raises(OutputError, match="refusing to write"):
        write_outputs(_rng_images(1), [bad], tmp_path / "o", "png", force=False)
    assert list(tmp_path.iterdir()) == []


def test_duplicate_output_names_rejected(tmp_path):
    with pytest.raises(OutputError, match="two outputs"):
        write_outputs(_rng_images(2), ["a", "A"], tmp_path / "o", "png", force=False)


def test_write_file_atomic(tmp_path, monkeypatch):
    f = tmp_path / "sub" / "x.vae"
    write_file_atomic(f, b"one", force=False)
    assert f.read_bytes() == b"one"
    with pytest.raises(OutputError, match="exists; use --force"):
        write_file_atomic(f, b"two", force=False)
    assert f.read_bytes() == b"one"
    write_file_atomic(f, b"two", force=True)
    assert f.read_bytes() == b"two"
    with pytest.raises(OutputError, match="is a folder"):
        write_file_atomic(tmp_path, b"x", force=True)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_io.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_file_atomic(f, b"three", force=True)
    assert f.read_bytes() == b"two"
    assert sorted(p.name for p in f.parent.iterdir()) == ["x.vae"]
