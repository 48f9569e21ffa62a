"""One fully convolutional model codes images of any size (#16 item 3): round trips, mixed sizes
in one file, the size error of fixed-size models, code length vs -ELBO.

The conv model in tests/data/conv-bin was trained here (README, "Any image size"):
`vaecompress train -d mnist-bin -m conv-bin -e 5 --threads 1 -o RUN` (60k binary MNIST digits,
250 s on one shared core; test -ELBO 0.1702 bpd).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bbans_vae as bv
from bbans_vae.container import unpack
from bbans_vae.errors import ContainerError, InputError
from bbans_vae.pipeline import compress, decompress, decompress_parsed
from click.testing import CliRunner
from vaecompress_cli.main import main as cli_main

from .conftest import random_model

CONV_BIN = Path(__file__).parent / "data" / "conv-bin"


@pytest.fixture(scope="module")
def codec():
    return bv.load(CONV_BIN)


@pytest.fixture(scope="module")
def digits(sample_images):
    return (sample_images >= 128).astype(np.uint8)                  # (1000, 28, 28) binary digits


def crops(digits: np.ndarray, n: int) -> np.ndarray:
    """n 13x37 crops of 2x2 mosaics of digits: strokes cut at every border."""
    m = np.block([[digits[0:n, None], digits[n:2 * n, None]], [digits[2 * n:3 * n, None], digits[3 * n:4 * n, None]]])
    return np.ascontiguousarray(m.reshape(n, 56, 56)[:, 20:33, 10:47])


def strips(digits: np.ndarray, n: int, height: int = 13, width: int = 1001) -> np.ndarray:
    """n strips of digits side by side, cropped to height x width (odd: partial 4x4 blocks)."""
    per = -(-width // 28)
    s = digits[:n * per].reshape(n, per, 28, 28).transpose(0, 2, 1, 3).reshape(n, 28, per * 28)
    return np.ascontiguousarray(s[:, 8:8 + height, :width])


def run(*args):
    return CliRunner().invoke(cli_main, [str(a) for a in args], catch_exceptions=True)


def one_error(res, *fragments):
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("vaecompress: error: "), res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], res.output
    return lines[0]


# ----------------------------------------------------------------------------- one model, any size


@pytest.mark.parametrize("coder_path", ["exact", "float32"])
def test_one_set_of_weights_codes_any_size_exactly(codec, digits, coder_path):
    groups = {"28x28": digits[:60], "13x37": crops(digits, 20), "13x1001 strip": strips(digits, 2),
              "1x1": digits[:3, 14:15, 14:15]}
    rates = {}
    for name, x in groups.items():
        data, rep = codec.compress(x, report=True, coder_path=coder_path, chains=2)
        y = codec.decompress(data)
        assert y.dtype == np.uint8 and y.shape == x.shape and np.array_equal(y, x), name
        h, _ = unpack(data)
        assert (h.height, h.width) == x.shape[1:] and h.shapes is None and h.coder_path == coder_path
        assert rep["n_dims"] == x.size                     # bpd per original pixel: padding is not coded
        rates[name] = (rep["actual_bits"] - rep["initial_bits"]) / rep["n_dims"]
    # a trained model, not noise: far below 1 bit per binary pixel on digits and on digit crops
    # (measured without the chain-start bits: 0.17-0.18 and 0.56-0.62 bpd)
    assert rates["28x28"] < 0.3 and rates["13x37"] < 0.8, rates


def test_exact_path_is_batch_and_size_invariant(codec, digits):
    """The exact conv networks give every lane the same numbers whatever the batch (decoding with
    sub-batches of 1 chain reproduces the file) and whatever the image size: a strip and the same
    strip inside a wider image get bit-identical posteriors for the blocks the border cannot reach
    (the encoder sees 3 blocks to each side)."""
    from bbans_vae.exact import ExactBackend
    x = strips(digits, 3, 16, 64)
    data = codec.compress(x, chains=3)
    y, _, _ = decompress(data, codec.model, codec.weights_sha256, batch_split=1)
    assert np.array_equal(y, x)
    wide = np.zeros((3, 16, 128), np.uint8)
    wide[:, :, :64] = x
    D = codec.model.cfg.latent_dim
    mu = ExactBackend(codec.model.at(16, 64), 8).posterior_params(x.reshape(3, -1))[0].reshape(3, 4, 16, D)
    mu_wide = ExactBackend(codec.model.at(16, 128), 8).posterior_params(wide.reshape(3, -1))[0].reshape(3, 4, 32, D)
    assert np.array_equal(mu[:, :, :12], mu_wide[:, :, :12])
    assert not np.array_equal(mu[:, :, 15], mu_wide[:, :, 15])      # the border is seen


def test_colour_conv_model_codes_any_size_on_both_paths():
    """RGB through the colour models' channel order (a channel-context net), exact and float32."""
    model = random_model("conv-8bit", image_shape=(8, 8), channels=3, context_channels=8, hidden=(16,))
    rng = np.random.default_rng(0)
    for coder_path in ("exact", "float32"):
        for shape in ((8, 8, 3), (5, 11, 3)):
            x = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
            data, _ = compress(model, "rgb", "00" * 32, x, coder_path=coder_path, n_chains=2)
            assert np.array_equal(decompress(data, model, "00" * 32)[0], x), (coder_path, shape)


def test_exact_conv_nets_on_bands_of_rows_give_the_same_values(monkeypatch):
    """Large images run the exact conv nets (and a colour model's 1x1 channel-context net) on bands
    of rows to bound memory; every value equals the one-call value."""
    from bbans_vae.ans.chains import pixel_codec
    from bbans_vae.exact import ExactBackend
    from bbans_vae.exact import qnet
    model = random_model("conv-8bit", image_shape=(8, 8), channels=3, context_channels=8, hidden=(16, 16))
    x = np.random.default_rng(1).integers(0, 256, (2, 23 * 18 * 3), dtype=np.uint8)

    def values():
        b = ExactBackend(model.at(23, 18), 8)
        mu, sigma = b.posterior_params(x)
        z = b.posterior_probs(x).argmax(-1)
        return mu, sigma, pixel_codec(b, z, x).params

    whole = values()
    monkeypatch.setattr(qnet, "BAND_PATCH_VALUES", 1)          # one row per band
    monkeypatch.setattr(qnet, "CONTEXT_BAND_VALUES", 1)
    for a, b in zip(whole, values()):
        for u, v in (zip(a, b) if isinstance(a, tuple) else [(a, b)]):
            assert np.array_equal(u, v)


# ----------------------------------------------------------------------------- mixed sizes, one file


@pytest.mark.parametrize("coder_path", ["exact", "float32"])
def test_mixed_sizes_go_into_one_file_and_decode_exactly(codec, digits, coder_path):
    images = [*digits[:150], *crops(digits[150:], 40), *strips(digits[310:], 2), *digits[400:460],
              digits[470, :9, :17]]
    data, rep = codec.compress(images, report=True, coder_path=coder_path, chains=4)
    h, _ = unpack(data)
    assert h.shapes == [(150, 28, 28, 1), (40, 13, 37, 1), (2, 13, 1001, 1), (60, 28, 28, 1), (1, 9, 17, 1)]
    assert len(h.block_checks) > 2                     # several checked blocks across the runs
    assert rep["n_images"] == len(images) and rep["n_dims"] == sum(a.size for a in images)
    # bits back carry over from run to run: only each chain's first image and the two strips (4,016
    # latents each, more than a chain holds after ~50 digits) are coded without bits back
    assert set(h.plain_images) <= {0, 1, 2, 3, 190, 191} and {0, 1, 2, 3} <= set(h.plain_images)
    y = codec.decompress(data)
    assert len(y) == len(images) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(images, y))
    if coder_path == "exact":                           # parallel workers write and read the same file
        data2, _ = compress(codec.model, codec.name, codec.weights_sha256, images, n_chains=4, workers=2)
        assert data2 == data
        y2, _, _ = decompress(data, codec.model, codec.weights_sha256, workers=2)
        assert all(np.array_equal(a, b) for a, b in zip(images, y2))


def test_corrupt_mixed_file_is_refused(codec, digits):
    """A changed payload word (past the CRC) is caught by the block checks of a mixed-size file."""
    images = [*digits[:200], *crops(digits[200:], 100)]
    data = codec.compress(images, chains=2)
    header, chains = unpack(data)
    assert header.block_checks
    chains[1] = chains[1].copy()
    chains[1][len(chains[1]) // 2] ^= np.uint32(1 << 7)
    with pytest.raises(ContainerError, match="corrupt|checksum"):
        decompress_parsed(header, chains, codec.model, codec.weights_sha256)


def test_cli_encodes_a_folder_of_mixed_sizes_and_decodes_it(tmp_path, codec, digits):
    src = tmp_path / "pngs"
    src.mkdir()
    images = {"a": digits[0] * 255, "b": crops(digits, 1)[0] * 255, "c": strips(digits, 1, 13, 101)[0] * 255,
              "d": digits[5] * 255}
    for name, img in images.items():
        Image.fromarray(img).save(src / f"{name}.png")
    vae = tmp_path / "mixed.vae"
    res = run("encode", src, "-o", vae, "--model", CONV_BIN, "--json")
    assert res.exit_code == 0, res.output
    assert run("info", vae, "--json").exit_code == 0
    out = tmp_path / "out"
    res = run("decode", vae, "-o", out, "--model", CONV_BIN)
    assert res.exit_code == 0, res.output
    for name, img in images.items():
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), img), name
    one_error(run("decode", vae, "-o", tmp_path / "npy", "--model", CONV_BIN, "--format", "npy"),
              "several sizes", "--format png")


# ----------------------------------------------------------------------------- fixed-size models


def test_fixed_size_model_names_its_size(digits):
    mlp = bv.load("mnist-bin")
    with pytest.raises(InputError, match=r"images are 13x37 but the model codes 28x28 images"):
        mlp.compress(crops(digits, 3))
    with pytest.raises(InputError, match=r"images have 2 sizes \(28x28, 13x37\) but the model codes 28x28 images only"):
        mlp.compress([*digits[:2], *crops(digits, 2)])


def test_cli_size_error_is_one_line(tmp_path, digits):
    src = tmp_path / "pngs"
    src.mkdir()
    Image.fromarray(digits[0] * 255).save(src / "a.png")
    Image.fromarray(crops(digits, 1)[0] * 255).save(src / "b.png")
    one_error(run("encode", src, "-o", tmp_path / "x.vae"), "2 sizes", "28x28 images only", "conv")
    one_error(run("encode", src / "b.png", "-o", tmp_path / "y.vae", "--model", "mnist-bin"),
              "images are 13x37 but the model codes 28x28 images")


# ----------------------------------------------------------------------------- code length


def test_code_length_is_the_elbo_within_tolerance(codec, digits):
    """Real file size vs the model's -ELBO on 500 digits and 100 crops in one file (exact path):
    within 5% + the one-time chain-start bits and the header (measured: see README)."""
    images = [*digits[:500], *crops(digits[500:], 100)]
    data, rep = codec.compress(images, report=True, chains=2)
    extra = rep["initial_bits"] + rep["container_bits"]
    assert rep["neg_elbo_bits"] * 0.95 <= rep["actual_bits"] - extra <= rep["neg_elbo_bits"] * 1.05, rep
    assert abs(rep["ideal_bits"] - rep["payload_bits"]) < 0.01 * rep["payload_bits"] + extra, rep


def test_a_photo_sized_image_codes_exactly_within_the_memory_estimate(codec, digits):
    """One 512x768 image (a mosaic of digits, 98,304 latents): exact round trip, and decode's
    memory estimate (conv models calibrate at 32x32, whatever the image size) stays below 2 GiB."""
    from bbans_vae.pipeline import check_decodable
    x = np.tile(digits[:18 * 27].reshape(18, 27, 28, 28).transpose(0, 2, 1, 3).reshape(504, 756), (2, 2))
    x = np.ascontiguousarray(x[:512, :768])[None]
    data, rep = codec.compress(x, report=True)
    assert np.array_equal(codec.decompress(data), x)
    header, _ = unpack(data)
    assert check_decodable(header, codec.model, codec.weights_sha256) < 2 << 30
    # one image alone has no bits to take back. Coded plainly, -log2 q of its 98,304 latents
    # (measured 1.82 bpd) is chain-start cost and the rest (measured 0.27 bpd) its -ELBO-like code
    # length; the default start (`start="auto"`: a lone image codes its latents at the precision
    # that makes it shortest) makes the whole file smaller
    plain, rep_plain = codec.compress(x, report=True, start="plain")
    assert np.array_equal(codec.decompress(plain), x)
    assert rep_plain["initial_bits"] / rep_plain["n_dims"] > 1.5
    assert (rep_plain["actual_bits"] - rep_plain["initial_bits"]) / rep_plain["n_dims"] < 0.35
    assert rep["cheap_start"] and len(data) < len(plain)


def test_eval_and_bench_take_a_dataset_of_another_size(tmp_path, codec, digits):
    """eval and bench use an any-size model on a dataset of other-sized images (here 13x37)."""
    import json
    x = crops(digits, 40)
    np.save(tmp_path / "crops.npy", x)
    res = run("eval", CONV_BIN, "-d", tmp_path / "crops.npy", "--json")
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)
    _, rep = codec.compress(x, report=True)
    assert ev["n_images"] == 40 and abs(ev["neg_elbo_bpd"] - rep["neg_elbo_bpd"]) < 0.02 * rep["neg_elbo_bpd"]
    res = run("bench", "-d", tmp_path / "crops.npy", "-m", CONV_BIN, "--no-classical", "--chains", "",
              "--json", tmp_path / "bench.json", "-o", tmp_path / "bench")
    assert res.exit_code == 0, res.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["all_verified"] and (tmp_path / "bench" / "bpd_crops.npy.png").is_file()
    one_error(run("eval", "mnist-bin", "-d", tmp_path / "crops.npy"), "28x28", "13x37")


def test_train_a_colour_conv_model_and_code_other_sizes_through_the_cli(tmp_path):
    """train -m conv-8bit on 12x12 RGB images, then encode a folder of 12x12, 7x19 and 30x5 RGB
    PNGs into one file (default exact path) and decode it exactly."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 1, 1, 3))
    train = np.clip(base + rng.integers(-20, 21, (24, 12, 12, 3)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "train.npy", train)
    run_dir = tmp_path / "run"
    res = run("train", "-d", tmp_path / "train.npy", "-m", "conv-8bit", "--hidden", "8", "--latent-dim", "2",
              "-e", "1", "-o", run_dir, "-q", "--holdout", "0.25")
    assert res.exit_code == 0, res.output
    src = tmp_path / "pngs"
    src.mkdir()
    images = {f"im{i}": np.clip(base[0] + rng.integers(-20, 21, (*hw, 3)), 0, 255).astype(np.uint8)
              for i, hw in enumerate([(12, 12), (7, 19), (30, 5), (7, 19)])}
    for name, img in images.items():
        Image.fromarray(img).save(src / f"{name}.png")
    res = run("encode", src, "-o", tmp_path / "rgb.vae", "--model", run_dir, "--json")
    assert res.exit_code == 0, res.output
    h, _ = unpack((tmp_path / "rgb.vae").read_bytes())
    assert h.coder_path == "exact" and h.shapes == [(1, 12, 12, 3), (1, 7, 19, 3), (1, 30, 5, 3), (1, 7, 19, 3)]
    res = run("decode", tmp_path / "rgb.vae", "-o", tmp_path / "out", "--model", run_dir)
    assert res.exit_code == 0, res.output
    for name, img in images.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{name}.png")), img), name
    gray = tmp_path / "gray.png"
    Image.fromarray(images["im1"][..., 0]).save(gray)
    one_error(run("encode", gray, "-o", tmp_path / "g.vae", "--model", run_dir),
              "images have 1 channel but the model codes 3-channel images (of any size)")
