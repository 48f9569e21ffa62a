"""Tests for bbans_vae.data: the dataset table, checksummed loading and the strict IDX reader.

Tests marked by the `real_data` fixture use the verified copies in ../shared/data (or
$VAECOMPRESS_DATA) and skip when they are absent; the rest build tiny files in tmp_path.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np
import pytest

from bbans_vae import data
from bbans_vae.errors import DataError


def _shared_data_root() -> pathlib.Path:
    env = os.environ.get("VAECOMPRESS_DATA")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def real_root() -> pathlib.Path:
    root = _shared_data_root()
    if not root.is_dir():
        pytest.skip(f"no shared data at {root}")
    return root


def _need(root: pathlib.Path, name: str) -> None:
    for df in data.dataset_spec(name).files:
        if not df.path(root).is_file():
            pytest.skip(f"{df.path(root)} absent")


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    head = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------------
# Table and names


def test_table_lists_the_five_datasets():
    assert data.dataset_names() == [
        "mnist-bin",
        "mnist-bin-stoch",
        "binarized-mnist",
        "mnist",
        "fashion-mnist",
    ]
    for name in data.dataset_names():
        spec = data.dataset_spec(name)
        assert spec.name == name
        assert spec.image_shape == (28, 28)
        assert spec.pixel_kind in ("binary", "8bit")
        assert "test" in spec.splits and "train" in spec.splits
        assert len(spec.split_sizes) == len(spec.splits)
        for df in spec.files:
            assert df.algo in ("md5", "sha256")
            assert len(df.digest) == {"md5": 32, "sha256": 64}[df.algo]
    assert data.dataset_spec("binarized-mnist").splits == ("train", "valid", "test")
    assert data.dataset_spec("binarized-mnist").has_labels is False
    assert data.dataset_spec("mnist").num_values == 256
    assert data.dataset_spec("mnist-bin").num_values == 2
    # The md5 of the torchvision t10k labels (not the typo that circulated).
    assert data.dataset_spec("mnist").labels_file("test").digest == "ec29112dd5afa0611ce80d1b7f02629c"


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'; choose one of: mnist-bin"):
        data.load_dataset("nope", data_root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        data.dataset_spec(None)
    with pytest.raises(DataError, match="no split 'valid'; choose one of: train, test"):
        data.load_dataset("mnist", "valid", data_root=tmp_path)
    with pytest.raises(DataError, match="no labels"):
        data.load_labels("binarized-mnist", "test", data_root=tmp_path)


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VAECOMPRESS_DATA", str(tmp_path / "env"))
    assert data.resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("VAECOMPRESS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_data_root(None) == tmp_path / "home" / ".cache" / "vaecompress" / "data"
    monkeypatch.chdir(tmp_path)
    assert data.resolve_data_root("rel").is_absolute()


# --------------------------------------------------------------------------------------------
# read_idx on synthetic files


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 2, 3), (0, 28, 28)])
def test_read_idx_roundtrip(tmp_path, gz, shape):
    arr = np.arange(int(np.prod(shape)), dtype=np.int64).astype(np.uint8).reshape(shape)
    blob = _idx_bytes(arr)
    p = tmp_path / "x.idx"  # gzip is detected by content, not name
    p.write_bytes(gzip.compress(blob) if gz else blob)
    out = data.read_idx(p)
    assert out.dtype == np.uint8 and out.shape == shape and out.flags.c_contiguous
    assert out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def _bad_files():
    good = _idx_bytes(np.ones((2, 3, 3), np.uint8))
    return {
        "truncated": (good[:-1], "truncated"),
        "trailing": (good + b"\0", "size mismatch"),
        "wrong_magic": (b"\x01\x02" + good[2:], "not an IDX file"),
        "wrong_type": (good[:2] + b"\x0d" + good[3:], "element type 0x0d"),
        "zero_dims": (b"\0\0\x08\0", "0 dimensions"),
        "short_header": (b"\0\0\x08", "truncated"),
        "dims_cut": (b"\0\0\x08\x03\0\0\0\x02", "truncated"),
        "empty": (b"", "truncated"),
        "gz_truncated": (gzip.compress(good)[:-12], "gzip"),
        "gz_garbage": (b"\x1f\x8b" + b"garbage" * 10, "gzip"),
        "gz_payload_truncated": (gzip.compress(good[:-3]), "truncated"),
        "gz_trailing": (gzip.compress(good + b"xx"), "after the declared shape"),
        "gz_bad_crc": (gzip.compress(good)[:-8] + b"\0\0\0\0" + gzip.compress(good)[-4:], "gzip"),
        # 2**16 * 2**16 bytes declared: refused before reading (the file holds nothing more).
        "huge": (b"\0\0\x08\x02" + struct.pack(">2I", 2**16, 2**16), "more than"),
        "gz_huge": (gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 2**20, 2**10, 3)), "more than"),
    }


@pytest.mark.parametrize("case", sorted(_bad_files()))
def test_read_idx_rejects_bad_files(tmp_path, case):
    blob, msg = _bad_files()[case]
    p = tmp_path / f"{case}.gz"
    p.write_bytes(blob)
    with pytest.raises(DataError, match=msg) as ei:
        data.read_idx(p)
    assert str(p) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_read_idx_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(tmp_path)


# --------------------------------------------------------------------------------------------
# Data roots without the real data


def test_missing_root_names_path_md5_and_fix(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as ei:
        data.load_dataset("mnist", "test", data_root=root)
    msg = str(ei.value)
    expected = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    assert str(expected) in msg
    assert "9fb629c4189551a2d022fa330f9573f3" in msg
    assert "does not exist" in msg and "VAECOMPRESS_DATA" in msg
    assert data.dataset_spec("mnist").images_file("test").urls[0] in msg     # where to get it
    assert "--download" not in msg                                          # no command has that option
    with pytest.raises(DataError) as ei:
        data.load_dataset("binarized-mnist", "train", data_root=root)
    assert str(root / "binarized_mnist" / "binarized_mnist.npz") in str(ei.value)
    assert "df14a884cb4aa7ac6692463fb31798a687c4e762c73c23a8ae3114fbec4e6093" in str(ei.value)


def test_env_var_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("VAECOMPRESS_DATA", str(tmp_path / "envroot"))
    with pytest.raises(DataError, match="envroot"):
        data.load_labels("fashion-mnist", "train")


@pytest.mark.parametrize("name", ["mnist-bin", "fashion-mnist", "binarized-mnist"])
def test_corrupt_copy_names_expected_checksum(tmp_path, name):
    spec = data.dataset_spec(name)
    df = spec.images_file("test")
    p = df.path(tmp_path)
    p.parent.mkdir(parents=True)
    p.write_bytes(gzip.compress(_idx_bytes(np.zeros((10, 28, 28), np.uint8))))
    with pytest.raises(DataError) as ei:
        data.load_dataset(name, "test", data_root=tmp_path)
    msg = str(ei.value)
    assert str(p) in msg and df.digest in msg and "corrupt" in msg


def test_extracted_idx_accepted_and_shape_checked(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10000, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=10000, dtype=np.uint8)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(x))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(y))
    np.testing.assert_array_equal(data.load_dataset("mnist", "test", tmp_path), x)
    np.testing.assert_array_equal(data.load_dataset("mnist-bin", "test", tmp_path), x >= 128)
    labels = data.load_labels("mnist", "test", tmp_path)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, y)
    # Wrong number of images in an unchecksummed file is caught.
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(x[:5]))
    with pytest.raises(DataError, match=r"expected \(10000, 28, 28\)"):
        data.load_dataset("mnist", "test", tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(10000, 10, np.uint8)))
    with pytest.raises(DataError, match="out of range"):
        data.load_labels("mnist", "test", tmp_path)


def test_stochastic_binarize_matches_one_shot():
    x = np.random.default_rng(1).integers(0, 256, size=(300, 28, 28), dtype=np.uint8)
    ref = np.random.RandomState(0).random_sample(x.shape) < x.astype(np.float64) / 255.0
    for chunk in (1, 7, 300, 4096):
        np.testing.assert_array_equal(data._stochastic_binarize(x, chunk=chunk), ref)


def test_download_binarized_is_refused(tmp_path):
    with pytest.raises(DataError, match="cannot be downloaded.*by hand"):
        data.download_dataset("binarized-mnist", tmp_path)


def test_download_network_failure_is_clean(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", fail)
    with pytest.raises(DataError, match="could not download.*unreachable"):
        data.download_dataset("mnist", tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no partial files left


def test_download_writes_verified_file(tmp_path, monkeypatch):
    import hashlib
    import io

    payload = b"fake fashion labels"
    spec = data.dataset_spec("fashion-mnist")
    fake = data.DataFile("FashionMNIST/raw/x.gz", "md5", hashlib.md5(payload).hexdigest(), len(payload),
                         ("http://mirror-a/x.gz", "http://mirror-b/x.gz"))
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", data.DatasetSpec(
        **{**spec.__dict__, "files": (fake,), "layout": (("train", 0, -1, ""), ("test", 0, -1, ""))}))
    calls = []

    def urlopen(req, timeout):
        calls.append(req.full_url)
        body = b"wrong bytes" if "mirror-a" in req.full_url else payload
        return io.BytesIO(body)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    data.download_dataset("fashion-mnist", tmp_path)
    assert calls == ["http://mirror-a/x.gz", "http://mirror-b/x.gz"]
    assert (tmp_path / "FashionMNIST" / "raw" / "x.gz").read_bytes() == payload
    assert [p.name for p in (tmp_path / "FashionMNIST" / "raw").iterdir()] == ["x.gz"]
    data.download_dataset("fashion-mnist", tmp_path)  # present and valid: nothing fetched
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------
# Real data


def test_real_mnist_variants(real_root):
    _need(real_root, "mnist")
    x = data.load_dataset("mnist", "test", real_root)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert x.max() == 255 and x.min() == 0
    xb = data.load_dataset("mnist-bin", "test", real_root)
    assert xb.dtype == np.uint8 and xb.flags.c_contiguous
    np.testing.assert_array_equal(xb, (x >= 128).astype(np.uint8))
    xs = data.load_dataset("mnist-bin-stoch", "test", real_root)
    assert xs.dtype == np.uint8 and xs.shape == x.shape and set(np.unique(xs)) == {0, 1}
    ref = np.random.RandomState(0).random_sample(x.shape) < x.astype(np.float64) / 255.0
    np.testing.assert_array_equal(xs, ref)
    np.testing.assert_array_equal(xs, data.load_dataset("mnist-bin-stoch", "test", real_root))
    assert abs(xs.mean() - x.mean() / 255.0) < 2e-3
    y = data.load_labels("mnist-bin", "test", real_root)
    assert y.shape == (10000,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    ytr = data.load_labels("mnist", "train", real_root)
    assert ytr.shape == (60000,)


def test_real_mnist_train(real_root):
    _need(real_root, "mnist")
    x = data.load_dataset("mnist-bin", "train", real_root)
    assert x.shape == (60000, 28, 28) and set(np.unique(x)) == {0, 1}


def test_real_fashion(real_root):
    _need(real_root, "fashion-mnist")
    x = data.load_dataset("fashion-mnist", "test", real_root)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and x.max() == 255
    y = data.load_labels("fashion-mnist", "test", real_root)
    assert y.shape == (10000,) and np.bincount(y).tolist() == [1000] * 10


def test_real_binarized(real_root):
    _need(real_root, "binarized-mnist")
    sizes = {"train": 50000, "valid": 10000, "test": 10000}
    for split, n in sizes.items():
        x = data.load_dataset("binarized-mnist", split, real_root)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and x.flags.c_contiguous
        assert set(np.unique(x)) == {0, 1}
    assert 0.1 < x.mean() < 0.2


def test_real_verification_is_cached(real_root, monkeypatch):
    _need(real_root, "mnist")
    data.load_labels("mnist", "test", real_root)
    calls = []
    real_digest = data._file_digest
    monkeypatch.setattr(data, "_file_digest", lambda *a: calls.append(a) or real_digest(*a))
    data.load_labels("mnist", "test", real_root)
    assert calls == []
