"""Your own datasets end to end: PNG folders, .npy, .npz and IDX files, gray and RGB, odd sizes.

Each kind is built tiny in tmp_path, then `train -> encode -> decode (exact) -> eval -> gaps`
runs through the CLI. Unit tests cover reading, pixel detection, splits, the data record
(refusing changed data) and one-line errors for bad inputs.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bbans_vae import userdata
from bbans_vae.data import open_dataset, run_dataset
from bbans_vae.errors import DataError
from bbans_vae.models import build_model, coding_phases, checkerboard_phases, preset_config
from vaecompress_cli.main import main

H, W = 13, 37


def blobs(n: int, shape: tuple, seed: int = 0) -> np.ndarray:
    """n structured 8-bit images of `shape` ((H, W) or (H, W, 3)): a bright blob plus noise."""
    r = np.random.RandomState(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((n, *shape), np.uint8)
    for i in range(n):
        cy, cx, s = r.uniform(0, h), r.uniform(0, w), r.uniform(2, 5)
        base = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        if len(shape) == 3:
            base = base[..., None] * r.uniform(0.3, 1, shape[2])
        out[i] = np.clip(base + r.randint(0, 25, shape), 0, 255).astype(np.uint8)
    return out


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_png_folder(folder: Path, images: np.ndarray) -> list[Path]:
    """Images spread over nested folders; returns the files in the order a dataset reads them."""
    paths = []
    for i, a in enumerate(images):
        sub = folder / ("a/b" if i % 3 == 0 else "a" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"im{i:03d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return sorted(paths, key=lambda p: p.relative_to(folder).as_posix())


def make(kind: str, tmp_path: Path, images: np.ndarray) -> Path:
    if kind == "png":
        write_png_folder(tmp_path / "pngs", images)
        return tmp_path / "pngs"
    if kind == "npy":
        np.save(tmp_path / "x.npy", images)
        return tmp_path / "x.npy"
    if kind == "npz":
        np.savez_compressed(tmp_path / "x.npz", images=images)
        return tmp_path / "x.npz"
    if kind == "idx":
        (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        return tmp_path / "x-idx3-ubyte.gz"
    raise ValueError(kind)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def ok(res):
    assert res.exit_code == 0, res.output
    return res.output


def one_error(res, *fragments):
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("vaecompress: error: "), res.output
    for f in fragments:
        assert f in lines[0], res.output
    return lines[0]


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", ["png", "npy", "npz", "idx"])
@pytest.mark.parametrize("shape", [(H, W), (H, W, 3)], ids=["gray", "rgb"])
def test_every_kind_reads_the_same_images(tmp_path, kind, shape):
    x = blobs(7, shape)
    arr, got_kind = userdata.read_images(make(kind, tmp_path, x))
    assert got_kind == {"png": "png-folder"}.get(kind, kind)
    assert arr.dtype == np.uint8 and arr.flags.c_contiguous and arr.flags.writeable
    expect = x if len(shape) == 3 else x[..., None]
    # a folder is read recursively, sorted by relative path: a/b/im000, a/b/im003, ..., a/im001, ..., im002
    order = [int(p.stem[2:]) for p in write_png_folder(tmp_path / "again", x)] if kind == "png" else range(7)
    np.testing.assert_array_equal(arr, expect[list(order)])


def test_gray_palette_and_1bit_pngs_read_as_gray(tmp_path):
    x = blobs(2, (5, 6))
    im = Image.fromarray(x[0]).convert("P")
    im.putpalette([v for i in range(256) for v in (i,) * 3])
    im.save(tmp_path / "a.png")
    Image.fromarray(x[1] >= 128).save(tmp_path / "b.png")
    arr, _ = userdata.read_images(tmp_path)
    assert arr.shape == (2, 5, 6, 1)
    np.testing.assert_array_equal(arr[1, ..., 0], (x[1] >= 128) * 255)


def bad_inputs(tmp: Path) -> dict:
    """name -> (path, fragment of the one-line error)."""
    def png(p, a):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(p)
        return p

    z8 = np.zeros((5, 7), np.uint8)
    png(tmp / "mixed/a.png", z8)
    png(tmp / "mixed/b.png", np.zeros((5, 7, 3), np.uint8))
    png(tmp / "sizes/a.png", z8)
    png(tmp / "sizes/b.png", np.zeros((5, 8), np.uint8))
    png(tmp / "b16/a.png", np.zeros((5, 7), np.uint16))
    (tmp / "rgb16").mkdir()                      # Pillow would read this one as 8-bit RGB, silently
    (tmp / "rgb16/a.png").write_bytes(imagecodecs.png_encode(np.full((5, 7, 3), 1000, np.uint16)))
    png(tmp / "alpha/a.png", np.zeros((5, 7, 4), np.uint8))
    (tmp / "empty/sub").mkdir(parents=True)
    (tmp / "empty/notes.txt").write_text("no images here")
    png(tmp / "unreadable/a.png", z8)
    os.symlink(tmp / "nowhere.png", tmp / "unreadable/b.png")
    (tmp / "garbage").mkdir()
    (tmp / "garbage/a.png").write_bytes(b"not a png")
    np.savez(tmp / "two.npz", a=np.zeros((2, 3, 3), np.uint8), b=np.zeros((2, 3, 3), np.uint8))
    np.save(tmp / "float.npy", np.zeros((2, 3, 3), np.float32))
    np.save(tmp / "four.npy", np.zeros((2, 3, 3, 4), np.uint8))
    (tmp / "labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    return {
        "mixed channels": (tmp / "mixed", "b.png is 5x7x3 (HxWxC) but"),
        "mixed sizes": (tmp / "sizes", "b.png is 5x8x1 (HxWxC) but"),
        "16-bit png": (tmp / "b16", "16-bit images are not supported"),
        "16-bit rgb png": (tmp / "rgb16", "16-bit images are not supported"),
        "alpha": (tmp / "alpha", "has 4 channels (RGBA); the models code gray (1) or RGB (3)"),
        "empty folder": (tmp / "empty", "contains no .png files"),
        "unreadable file": (tmp / "unreadable", "cannot read"),
        "not a png": (tmp / "garbage", "not a PNG file"),
        "npz of two arrays": (tmp / "two.npz", "holds 2 arrays (a, b)"),
        "float npy": (tmp / "float.npy", "holds float32 values"),
        "four channels": (tmp / "four.npy", "shape (2, 3, 3, 4)"),
        "idx labels": (tmp / "labels-idx1-ubyte", "shape (5,)"),
        "missing path": (tmp / "nope", "unknown dataset"),
    }


def test_bad_inputs_give_one_clear_error(tmp_path):
    cases = bad_inputs(tmp_path)
    for name, (path, fragment) in cases.items():
        with pytest.raises(DataError) as ei:
            open_dataset(str(path), holdout=0.5)
        msg = str(ei.value)
        assert fragment in msg and "\n" not in msg, (name, msg)
        if name != "missing path":
            assert str(path) in msg, (name, msg)
    # and through the CLI: one line on stderr, exit code 1
    one_error(run("train", "-d", cases["mixed channels"][0], "-m", "mlp-8bit", "-e", "1", "-o", tmp_path / "r"),
              "all images of a dataset must share one size and channel count")


# ----------------------------------------------------------------------------- pixels, splits, records


def test_pixel_kind_detected_or_forced(tmp_path):
    x = blobs(10, (H, W))
    b = (x >= 128).astype(np.uint8)
    for arr, pixels, kind, rule in [(b, None, "binary", "none"), (b * 255, None, "binary", "scale255"),
                                    (x, None, "8bit", "none"), (x, "binary", "binary", "threshold128"),
                                    (b * 255, "8bit", "8bit", "none")]:
        np.save(tmp_path / "d.npy", arr)
        ds = open_dataset(str(tmp_path / "d.npy"), pixels=pixels)
        assert (ds.pixel_kind, ds.record["binarization"]) == (kind, rule)
        got = ds.images("all")
        np.testing.assert_array_equal(got, b if kind == "binary" else arr)
    with pytest.raises(DataError, match="built-in dataset"):
        open_dataset("mnist", holdout=0.1)


def test_holdout_and_test_path_splits(tmp_path):
    x = blobs(20, (H, W))
    np.save(tmp_path / "x.npy", x)
    a = open_dataset(str(tmp_path / "x.npy"), holdout=0.25, seed=3)
    b = open_dataset(str(tmp_path / "x.npy"), holdout=0.25, seed=3)
    c = open_dataset(str(tmp_path / "x.npy"), holdout=0.25, seed=4)
    assert len(a.images("test")) == 5 and len(a.images("train")) == 15
    np.testing.assert_array_equal(a.images("test"), b.images("test"))
    assert not np.array_equal(a.images("test"), c.images("test"))
    both = np.concatenate([a.images("train"), a.images("test")])
    assert sorted(map(bytes, both)) == sorted(map(bytes, x))          # a partition of the images
    np.save(tmp_path / "t.npy", x[:4])
    t = open_dataset(str(tmp_path / "x.npy"), test=str(tmp_path / "t.npy"))
    np.testing.assert_array_equal(t.images("test"), x[:4])
    np.testing.assert_array_equal(t.images("train"), x)
    np.save(tmp_path / "t2.npy", blobs(2, (H, W + 1)))
    with pytest.raises(DataError, match="both must share one size"):
        open_dataset(str(tmp_path / "x.npy"), test=str(tmp_path / "t2.npy"))
    with pytest.raises(DataError, match="leaves 0 test"):
        open_dataset(str(tmp_path / "x.npy"), holdout=0.01)
    assert open_dataset(str(tmp_path / "x.npy")).splits == ("all",)


def test_record_finds_the_same_images_and_refuses_changed_data(tmp_path):
    folder = tmp_path / "pngs"
    files = write_png_folder(folder, blobs(12, (H, W)))
    ds = open_dataset(str(folder), holdout=0.25, seed=1)
    rec = json.loads(json.dumps(ds.record))                            # survives JSON
    assert rec["path"] == str(folder) and rec["image_shape"] == [H, W, 1] and rec["n_images"] == 12
    again = run_dataset({"dataset": rec["path"], "data": rec})
    for split in ("train", "test"):
        np.testing.assert_array_equal(again.images(split), ds.images(split))
    # same pixels re-encoded (another PNG compression level) are the same data
    Image.open(files[0]).save(files[0], compress_level=1)
    run_dataset({"data": rec})
    Image.fromarray(np.zeros((H, W), np.uint8)).save(files[0])
    with pytest.raises(DataError, match="changed since the run recorded it"):
        run_dataset({"data": rec})
    files[0].unlink()
    with pytest.raises(DataError, match="changed since the run recorded it: now 11 images"):
        run_dataset({"data": rec})
    os.rename(folder, tmp_path / "moved")
    with pytest.raises(DataError, match="no longer exists"):
        run_dataset({"data": rec})


# ----------------------------------------------------------------------------- models sized by the data


def test_presets_take_their_shape_from_the_data():
    gray = preset_config("mlp-8bit", (H, W))
    assert gray.image_shape == (H, W) and gray.n_pixels == H * W and "channels" not in gray.to_dict()
    assert build_model(gray).encoder[0].in_features == H * W
    rgb = preset_config("mlp-8bit", (H, W, 3))
    assert rgb.n_pixels == 3 * H * W and rgb.to_dict()["channels"] == 3 and rgb.context_channels > 0
    m = build_model(rgb)
    assert m.n_phases == 3 and m.context[0].kernel_size == (1, 1)
    c = build_model(preset_config("ctx-8bit", (H, W, 3)))
    assert c.n_phases == 12 and c.context[0].kernel_size == (3, 3)
    # gray context models keep their checkerboard order (bundled bitstreams depend on it)
    assert torch.equal(coding_phases(H, W), checkerboard_phases(H, W))
    assert preset_config("ctx-8bit", (28, 28)) == preset_config("ctx-8bit")


@pytest.mark.parametrize("preset", ["mlp-8bit", "ctx-8bit", "mlp-bin"])
def test_colour_channels_are_coded_given_the_previous_ones_only(preset):
    """Parameters of phase p change with the values of phases < p and never with the others."""
    torch.manual_seed(0)
    import dataclasses
    cfg = dataclasses.replace(preset_config(preset, (5, 6, 3)), hidden=(16,), latent_dim=3)
    m = build_model(cfg).eval()
    torch.nn.init.normal_(m.context[-1].weight, std=0.5)              # a trained net is not zero
    hi = 2 if cfg.pixel_kind == "binary" else 256
    x = torch.randint(0, hi, (2, cfg.n_pixels)).float()
    out = m.decode(torch.randn(2, 3))
    for p in range(m.n_phases):
        own = m.phase == p
        base = m.phase_out(out, x, p).view(2, cfg.n_pixels, -1)[:, own]
        later = x.clone()
        later[:, m.phase >= p] = hi - 1 - later[:, m.phase >= p]
        assert torch.equal(m.phase_out(out, later, p).view(2, cfg.n_pixels, -1)[:, own], base)
        if p > 0:
            earlier = x.clone()
            earlier[:, m.phase < p] = hi - 1 - earlier[:, m.phase < p]
            assert not torch.equal(m.phase_out(out, earlier, p).view(2, cfg.n_pixels, -1)[:, own], base)
    # channel c of a pixel comes after channels < c of the same pixel
    ph = m.phase.view(5, 6, 3)
    assert bool((ph[..., 0] < ph[..., 1]).all() and (ph[..., 1] < ph[..., 2]).all())


# ----------------------------------------------------------------------------- end to end through the CLI


E2E = [  # kind, image shape, pixels stored, preset
    ("png", (H, W), "8bit", "mlp-8bit"),
    ("npy", (H, W), "binary", "ctx-bin"),
    ("npz", (H, W), "8bit", "ctx-8bit"),
    ("idx", (H, W), "binary", "mlp-bin"),
    ("png", (H, W, 3), "8bit", "mlp-8bit"),
    ("npy", (H, W, 3), "8bit", "ctx-8bit"),
]


@pytest.mark.parametrize("kind, shape, pixels, preset", E2E,
                         ids=[f"{k}-{'rgb' if len(s) == 3 else 'gray'}-{p}" for k, s, _, p in E2E])
def test_train_encode_decode_eval_gaps(tmp_path, kind, shape, pixels, preset):
    x = blobs(24, shape, seed=1)
    if pixels == "binary":
        x = (x >= 100).astype(np.uint8) * 255                          # detected: {0, 255}
    data = make(kind, tmp_path, x)
    run_dir = tmp_path / "run"
    ok(run("train", "-d", data, "-m", preset, "--hidden", "16", "--latent-dim", "3", "-e", "2",
           "--save-every", "1", "--holdout", "0.25", "--batch-size", "8", "-o", run_dir, "-q", "--device", "cpu"))
    rec = json.loads((run_dir / "run.json").read_text())["data"]
    assert rec["pixels"] == pixels and rec["image_shape"] == [H, W, shape[2] if len(shape) == 3 else 1]
    assert rec["split"] == {"method": "holdout", "fraction": 0.25, "seed": 0, "n_train": 18, "n_test": 6}

    # encode every image, decode, compare (exact coder path: the default)
    src = tmp_path / "all.npy"
    np.save(src, x)
    rep = json.loads(ok(run("encode", src, "-o", tmp_path / "x.vae", "-m", run_dir, "--json", "--chains", "2")))
    assert rep["coder_path"] == "exact" and rep["n_dims"] == x.size
    assert rep["actual_bpd"] == pytest.approx(8 * (tmp_path / "x.vae").stat().st_size / x.size)
    ok(run("decode", tmp_path / "x.vae", "-o", tmp_path / "out", "--format", "npy", "-m", run_dir))
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "images.npy"), x)

    # eval without --dataset: the recorded data and its test split, as in training
    res = json.loads(ok(run("eval", run_dir, "--json")))
    assert res["split"] == "test" and res["n_images"] == 6 and res["dataset"] == str(data)
    log = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert res["neg_elbo_bpd"] == pytest.approx(log[-1]["test_neg_elbo_bpd"], rel=1e-5)

    # gaps on the run: the same images, bpd over H*W*C
    ok(run("gaps", run_dir, "--refit-epochs", "1", "--iwae", "4", "--local-steps", "2", "--split-images", "3",
           "--chains", "2", "--samples", "2", "--json", tmp_path / "gaps.json", "-q"))
    g = json.loads((tmp_path / "gaps.json").read_text())
    assert g["test_n_images"] == 6 and g["train_eval_n_images"] == 18 and g["n_dims_per_image"] == x[0].size
    assert [c["epoch"] for c in g["checkpoints"]] == [1, 2]
    assert all(np.isfinite(c["test_actual_bpd"]) for c in g["checkpoints"])


def test_changed_data_and_wrong_sizes_are_refused(tmp_path):
    x = blobs(12, (H, W))
    np.save(tmp_path / "x.npy", x)
    run_dir = tmp_path / "run"
    ok(run("train", "-d", tmp_path / "x.npy", "-m", "mlp-8bit", "--hidden", "8", "--latent-dim", "2", "-e", "1",
           "-o", run_dir, "-q"))
    # the model codes 13x37: a 28x28 model, 28x28 images, a 13x37 model on them all say the sizes
    one_error(run("encode", tmp_path / "x.npy", "-o", tmp_path / "a.vae", "-m", "mnist"),
              "images are 13x37 but the model codes 28x28 images")
    np.save(tmp_path / "y.npy", blobs(3, (H + 1, W)))
    one_error(run("encode", tmp_path / "y.npy", "-o", tmp_path / "b.vae", "-m", run_dir),
              "images are 14x37 but the model codes 13x37 images")
    one_error(run("eval", run_dir, "-d", tmp_path / "y.npy"), "model codes 8bit 13x37 images", "14x37")
    ok(run("train", "-d", tmp_path / "x.npy", "-m", "mlp-8bit", "--hidden", "8", "--latent-dim", "2", "-e", "2",
           "-o", run_dir, "-q"))                                      # the same data: the run resumes
    assert len((run_dir / "train_log.jsonl").read_text().splitlines()) == 2
    np.save(tmp_path / "x.npy", x[::-1])
    one_error(run("eval", run_dir), "changed since the run recorded it")
    one_error(run("gaps", run_dir, "--no-bitstreams", "--split", "none", "--refit-epochs", "0"),
              "changed since the run recorded it")
    one_error(run("train", "-d", tmp_path / "x.npy", "-m", "mlp-8bit", "--hidden", "8", "--latent-dim", "2",
                  "-e", "3", "-o", run_dir, "-q"), "was started on other data")


def test_bench_on_a_folder_of_colour_pngs(tmp_path):
    x = blobs(9, (H, W, 3))
    folder = make("png", tmp_path, x)
    run_dir = tmp_path / "run"
    ok(run("train", "-d", folder, "-m", "mlp-8bit", "--hidden", "8", "--latent-dim", "2", "-e", "1",
           "-o", run_dir, "-q", "--holdout", "0.3"))
    ok(run("bench", "-d", folder, "-m", run_dir, "--chains", "1", "--single-images", "2", "--jxl-effort", "1",
           "--json", tmp_path / "b.json", "-q"))
    res = json.loads((tmp_path / "b.json").read_text())
    d = res["datasets"][str(folder)]
    assert d["n_images"] == 9 and d["split"] == "all" and res["all_verified"]
    ours = [r for r in d["rows"] if r.get("ours")]
    theirs = {r["codec"] for r in d["rows"] if not r.get("ours") and not r.get("skipped")}
    assert ours and {"png", "webp", "jpegxl"} <= theirs
    for r in d["rows"]:
        if r.get("bpd") is not None and r.get("protocol") != "single":
            assert r["bpd"] == pytest.approx(8 * r["total_bytes"] / x.size)


def test_a_colour_mlp_run_starts_a_colour_ctx_run(tmp_path):
    """--init from a colour mlp (1x1 channel-context net) to ctx (3x3 net): encoder and decoder
    weights carry over and the context net starts fresh (it has another shape)."""
    np.save(tmp_path / "x.npy", blobs(8, (5, 6, 3)))
    small = ("--hidden", "8", "--latent-dim", "2", "-e", "1", "-q", "--holdout", "0.25")
    ok(run("train", "-d", tmp_path / "x.npy", "-m", "mlp-8bit", *small, "-o", tmp_path / "mlp"))
    ok(run("train", "-d", tmp_path / "x.npy", "-m", "ctx-8bit", "--init", tmp_path / "mlp", *small,
           "-o", tmp_path / "ctx"))
    from bbans_vae.checkpoint import load_model
    mlp, ctx = load_model(str(tmp_path / "mlp"))[0], load_model(str(tmp_path / "ctx"))[0]
    assert ctx.cfg.arch == "ctx" and ctx.cfg.channels == 3 and ctx.context[0].kernel_size == (3, 3)
    assert mlp.context[0].kernel_size == (1, 1) and ctx.n_phases == 12
