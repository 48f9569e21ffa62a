"""Classical-codec baselines: every row lossless, bpd consistent, binary rows, `best`."""
import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from bbans_vae import baselines as bl

N_REAL = 50
FAST = 7  # JPEG-XL effort for most tests; the default (max) effort is tested once


def _data_dir() -> Path:
    env = os.environ.get("VAECOMPRESS_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mnist50():
    path = _data_dir() / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        pytest.skip(f"MNIST test images not found at {path}")
    with gzip.open(path) as f:
        head = f.read(16 + N_REAL * 784)
    assert int.from_bytes(head[:4], "big") == 2051
    return np.frombuffer(head, np.uint8, offset=16).reshape(N_REAL, 28, 28).copy()


def _check_rows(rows, x, binary):
    n, h, w = x.shape
    live = [r for r in rows if r["skipped"] is None]
    assert live, "no codec ran"
    for r in live:
        assert r["lossless_verified"] is True
        assert r["n_images"] == n and r["image_shape"] == [h, w]
        assert r["total_bytes"] > 0 and r["bpd"] > 0
        assert r["bpd"] == pytest.approx(8 * r["total_bytes"] / (n * h * w))
        assert r["library"] and r["params"]
        if r["protocol"] == "mosaic":
            rows_, cols = r["grid"]
            assert rows_ * cols == n + r["padding_images"] and r["padding_images"] < cols
        else:
            assert r["grid"] is None and r["padding_images"] is None
    keys = {(r["codec"], r["protocol"], r["input"]) for r in live}
    assert len(keys) == len(live), "duplicate rows"
    b = bl.best(rows)
    assert b["bpd"] == min(r["bpd"] for r in live)
    for r in rows:
        if r["skipped"] is not None:
            assert r["lossless_verified"] is False and r["bpd"] is None
    return live


def _expected_keys(binary):
    keys = set()
    for c in bl.codec_table():
        if c["skipped"] or (c["binary_only"] and not binary):
            continue
        if c["kind"] == "stream":
            for inp in (("bitpacked", "bytes") if binary else ("bytes",)):
                keys |= {(c["codec"], "stream", inp), (c["codec"], "per_image", inp)}
        else:
            inp = bl.REGISTRY[c["codec"]].binary_input if binary else "uint8"
            keys |= {(c["codec"], "per_image", inp), (c["codec"], "mosaic", inp)}
    return keys


@pytest.mark.parametrize("binary", [False, True], ids=["8bit", "binary"])
def test_mnist50_all_codecs(mnist50, binary):
    x = (mnist50 >= 128).astype(np.uint8) if binary else mnist50
    rows = bl.measure(x, binary=binary, effort=FAST)
    live = _check_rows(rows, x, binary)
    assert {(r["codec"], r["protocol"], r["input"]) for r in live} == _expected_keys(binary)
    by = {(r["codec"], r["protocol"], r["input"]): r for r in live}
    if binary:
        assert ("png-1bit", "per_image", "1bit") in by
        assert ("gzip", "stream", "bitpacked") in by and ("gzip", "stream", "bytes") in by
        assert by[("jpegxl", "mosaic", "0/255")]["padding_images"] == 6  # 50 -> 7 x 8
        assert best_is_image_codec(rows)
    else:
        assert not any(r["codec"].endswith("-1bit") for r in rows)
        # sanity: real codecs compress MNIST well below 8 bpd
        assert all(r["bpd"] < 6 for r in live)


def best_is_image_codec(rows):
    return bl.REGISTRY[bl.best(rows)["codec"]].kind == "image"


def test_default_effort_is_max_and_recorded(mnist50):
    x = mnist50[:8]
    rows = bl.measure(x, binary=False, codecs=["jpegxl"])
    e = bl.default_jxl_effort()
    assert e in (9, 10)
    assert {r["params"] for r in rows} == {f"lossless, effort {e}"}
    assert {r["protocol"] for r in rows} == {"per_image", "mosaic"}


@pytest.mark.parametrize("shape", [(1, 5, 9), (3, 7, 9), (5, 13, 11)])
@pytest.mark.parametrize("binary", [False, True], ids=["8bit", "binary"])
def test_synthetic_random(shape, binary):
    rng = np.random.default_rng(sum(shape) + binary)
    x = rng.integers(0, 2 if binary else 256, size=shape, dtype=np.uint8)
    rows = bl.measure(x, binary=binary, effort=FAST)
    _check_rows(rows, x, binary)  # odd H*W: packbits pads each image; still verified


def test_synthetic_constant_and_bool_input():
    x = np.zeros((4, 6, 6), bool)
    x[1, 2, 3] = True
    rows = bl.measure(x, binary=True, effort=FAST)
    _check_rows(rows, x.astype(np.uint8), True)


def test_protocol_and_codec_selection():
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    rows = bl.measure(x, binary=False, protocols=("stream",), codecs=["gzip", "png"])
    assert [(r["codec"], r["protocol"]) for r in rows] == [("gzip", "stream")]
    rows = bl.measure(x, binary=False, protocols=("mosaic",), codecs=["png", "bz2"])
    assert [(r["codec"], r["protocol"]) for r in rows] == [("png", "mosaic")]
    with pytest.raises(ValueError):
        bl.measure(x, binary=False, codecs=["nope"])
    with pytest.raises(ValueError):
        bl.measure(x, binary=False, protocols=("chunks",))
    with pytest.raises(ValueError):
        bl.measure(x, binary=True)  # values > 1
    with pytest.raises(ValueError):
        bl.measure(x[0], binary=False)  # not (N, H, W)


def test_mosaic_roundtrip_and_padding():
    x = np.random.default_rng(0).integers(0, 256, (7, 3, 5), dtype=np.uint8)
    m, r, c, pad = bl.tile_mosaic(x)
    assert (r, c, pad) == (3, 3, 2) and m.shape == (9, 15)
    assert np.array_equal(m[:3, 5:10], x[1]) and not m[6:, 5:].any()
    assert np.array_equal(bl.untile_mosaic(m, 7, 3, 5), x)


def test_lossy_codec_raises(monkeypatch):
    codec = bl.REGISTRY["gzip"]
    monkeypatch.setitem(bl.REGISTRY, "gzip", dataclasses.replace(
        codec, decode=lambda b: codec.decode(b)[:-1] + b"\x07"))
    x = np.ones((2, 4, 4), np.uint8)
    with pytest.raises(bl.LosslessError):
        bl.measure(x, binary=False, codecs=["gzip"])
    png = bl.REGISTRY["png"]
    monkeypatch.setitem(bl.REGISTRY, "png", dataclasses.replace(
        png, decode=lambda b: png.decode(b) ^ 1))
    with pytest.raises(bl.LosslessError):
        bl.measure(x, binary=False, codecs=["png"], protocols=("mosaic",))


def test_missing_library_is_skipped(monkeypatch):
    def gone():
        raise ImportError("no module named 'imagecodecs'")

    monkeypatch.setitem(bl.REGISTRY, "zstd", dataclasses.replace(bl.REGISTRY["zstd"],
                                                                  probe=gone))
    x = np.ones((2, 4, 4), np.uint8)
    rows = bl.measure(x, binary=False, codecs=["zstd", "gzip"])
    skipped = [r for r in rows if r["skipped"]]
    assert len(skipped) == 1 and skipped[0]["codec"] == "zstd"
    assert "imagecodecs" in skipped[0]["skipped"] and not skipped[0]["lossless_verified"]
    assert bl.best(rows)["codec"] == "gzip"
    assert {c["codec"]: c["skipped"] for c in bl.codec_table()}["zstd"]


def test_best_picks_minimum_verified():
    rows = [
        {"codec": "a", "bpd": 1.0, "lossless_verified": True},
        {"codec": "b", "bpd": 0.5, "lossless_verified": True},
        {"codec": "c", "bpd": 0.1, "lossless_verified": False},
        {"codec": "d", "bpd": None, "lossless_verified": False, "skipped": "x"},
    ]
    assert bl.best(rows)["codec"] == "b"
    with pytest.raises(ValueError):
        bl.best(rows[2:])
