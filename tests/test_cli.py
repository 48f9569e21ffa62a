"""CLI contract: round trips through files, clean one-line errors, atomic outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bbans_vae.checkpoint import save_checkpoint
from vaecompress_cli.main import main
from tests.conftest import random_model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, preset, kw in [("bin", "mlp-bbans-bin", {"hidden": (32,), "latent_dim": 4}),
                             ("8bit", "mlp-bbans-8bit", {"hidden": (32,), "latent_dim": 4})]:
        path = root / name
        save_checkpoint(path, random_model(preset, **kw), {"dataset": "mnist-bin" if name == "bin" else "mnist"})
        out[name] = path
    return out


@pytest.fixture()
def images(sample_images, tmp_path):
    b = (sample_images[:20] >= 128).astype(np.uint8)
    np.save(tmp_path / "bin.npy", b)
    np.save(tmp_path / "gray.npy", sample_images[:8])
    return tmp_path


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return res


def assert_clean_error(res, fragment=""):
    out = res.output
    assert res.exit_code != 0, out
    assert "Traceback" not in out, out
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("vaecompress: error: "), out
    assert fragment in lines[0], out


def test_encode_decode_npy_and_png(images, tiny_models, tmp_path):
    vae = tmp_path / "b.vae"
    res = run("encode", images / "bin.npy", "-o", vae, "--model", tiny_models["bin"], "--json", "--chains", "3")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["n_images"] == 20 and rep["actual_bits"] == vae.stat().st_size * 8
    res = run("decode", vae, "-o", tmp_path / "out", "--format", "npy", "--model", tiny_models["bin"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp_path / "out" / "images.npy"), np.load(images / "bin.npy"))
    # PNG folder in (0/255 binary), PNG out: names and pixels preserved
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, img in enumerate(np.load(images / "bin.npy")[:5]):
        Image.fromarray(img * 255).save(pngs / f"digit{i}.png")
    res = run("encode", pngs, "-o", tmp_path / "p.vae", "--model", tiny_models["bin"])
    assert res.exit_code == 0, res.output
    res = run("decode", tmp_path / "p.vae", "-o", tmp_path / "pout", "--model", tiny_models["bin"])
    assert res.exit_code == 0, res.output
    for i in range(5):
        a = np.asarray(Image.open(pngs / f"digit{i}.png"))
        b = np.asarray(Image.open(tmp_path / "pout" / f"digit{i}.png"))
        assert np.array_equal(a, b)
    info = json.loads(run("info", tmp_path / "p.vae", "--json").output)
    assert info["n_images"] == 5 and info["binary_scale"] == 255 and info["pixel_kind"] == "binary"


def test_8bit_roundtrip(images, tiny_models, tmp_path):
    res = run("encode", images / "gray.npy", "-o", tmp_path / "g.vae", "--model", tiny_models["8bit"])
    assert res.exit_code == 0, res.output
    res = run("decode", tmp_path / "g.vae", "-o", tmp_path / "g", "--format", "npy", "--model", tiny_models["8bit"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp_path / "g" / "images.npy"), np.load(images / "gray.npy"))


@pytest.fixture()
def encoded(images, tiny_models, tmp_path):
    vae = tmp_path / "b.vae"
    assert run("encode", images / "bin.npy", "-o", vae, "--model", tiny_models["bin"]).exit_code == 0
    return vae


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: b"", "empty"),
    (lambda d: d[:3], "truncated"),
    (lambda d: d[:-1], "file is truncated: 1 bytes missing"),
    (lambda d: d[: len(d) // 2], ""),
    (lambda d: d[:-1], ""),
    (lambda d: d + b"\x00", ""),
    (lambda d: d[:4] + bytes([9]) + d[5:], "version"),
    (lambda d: d[:-5] + bytes([d[-5] ^ 0x10]) + d[-4:], "corrupt"),
    (lambda d: b"GIF89a" + d, "magic"),
])
def test_corrupt_files_fail_cleanly(encoded, tiny_models, tmp_path, mutate, fragment):
    bad = tmp_path / "bad.vae"
    bad.write_bytes(mutate(encoded.read_bytes()))
    res = run("decode", bad, "-o", tmp_path / "never", "--model", tiny_models["bin"])
    assert_clean_error(res, fragment)
    assert not (tmp_path / "never").exists()


def test_every_single_bit_flip_in_header_is_caught(encoded, tiny_models, tmp_path):
    data = encoded.read_bytes()
    from bbans_vae.pipeline import decompress
    from bbans_vae.checkpoint import load_model
    from bbans_vae.errors import VaeCompressError
    model, config, _ = load_model(str(tiny_models["bin"]))
    truth = np.load(encoded.parent / "bin.npy")
    for pos in range(0, min(len(data), 120)):
        for bit in (0, 5):
            mutated = bytearray(data)
            mutated[pos] ^= 1 << bit
            try:
                pixels, _, _ = decompress(bytes(mutated), model, config["weights_sha256"])
            except VaeCompressError:
                continue
            assert np.array_equal(pixels, truth)  # only a flip that changes nothing may pass


def test_wrong_model_is_refused(encoded, tiny_models, tmp_path):
    res = run("decode", encoded, "-o", tmp_path / "x", "--model", tiny_models["8bit"])
    assert_clean_error(res, "encoded with model")


def test_bad_inputs(images, tiny_models, tmp_path, sample_images):
    assert_clean_error(run("encode", images / "gray.npy", "-o", tmp_path / "a.vae", "--model", tiny_models["bin"]),
                       "binary")
    np.save(tmp_path / "big.npy", np.zeros((2, 30, 28), np.uint8))
    assert_clean_error(run("encode", tmp_path / "big.npy", "-o", tmp_path / "a.vae", "--model", tiny_models["bin"]),
                       "30x28")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert_clean_error(run("encode", tmp_path / "rgb.png", "-o", tmp_path / "a.vae", "--model", tiny_models["bin"]),
                       "channels")
    assert_clean_error(run("encode", tmp_path / "missing.png", "-o", tmp_path / "a.vae"))
    assert_clean_error(run("encode", images / "bin.npy", "-o", tmp_path / "a.vae", "--model", "no-such-model"),
                       "unknown model")
    assert not (tmp_path / "a.vae").exists()


def test_existing_output_is_kept_without_force(images, tiny_models, tmp_path):
    out = tmp_path / "keep.vae"
    out.write_bytes(b"precious")
    assert_clean_error(run("encode", images / "bin.npy", "-o", out, "--model", tiny_models["bin"]), "--force")
    assert out.read_bytes() == b"precious"
    assert run("encode", images / "bin.npy", "-o", out, "--model", tiny_models["bin"], "--force").exit_code == 0
    assert out.read_bytes()[:4] == b"VAEC"
    d = tmp_path / "outdir"
    d.mkdir()
    assert_clean_error(run("decode", out, "-o", d, "--model", tiny_models["bin"]), "--force")


def test_unknown_dataset_and_model_errors(tmp_path):
    assert_clean_error(run("eval", "nope-model", "--dataset", "mnist"), "unknown model")
    assert_clean_error(run("train", "-d", "cifar", "-m", "mlp-paper", "-e", "1", "-o", tmp_path / "r"), "unknown dataset")
    assert_clean_error(run("train", "-d", "mnist", "-m", "mlp-nope", "-e", "1", "-o", tmp_path / "r"), "preset")


def test_missing_data_is_one_line(tmp_path, tiny_models):
    res = run("eval", tiny_models["bin"], "--dataset", "mnist-bin", "--data-dir", tmp_path / "nodata")
    assert_clean_error(res, "t10k-images-idx3-ubyte.gz")


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "vaecompress"
    res = subprocess.run([str(exe), "decode", str(tmp_path / "none.vae"), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert res.stderr.startswith("vaecompress: error:") and "Traceback" not in res.stderr
    help_text = subprocess.run([str(exe), "encode", "--help"], capture_output=True, text=True).stdout
    assert "Examples" in help_text and "metadata" in help_text


def test_train_from_init_pins_the_init_weights_and_resumes(tmp_path, tiny_models, real_data_root):
    """A run started with --init records the sha256 of the weights it started from (a bundled name
    may be updated later); resuming keeps it, and every checkpoint carries it."""
    init = tiny_models["bin"]
    sha = json.loads((Path(init) / "config.json").read_text())["weights_sha256"]
    args = ["train", "-d", "mnist-bin", "-m", "from-init", "--init", init, "--train-size", "200",
            "--data-dir", real_data_root, "-o", tmp_path / "r", "-q"]
    assert run(*args, "-e", "1").exit_code == 0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["init_weights_sha256"] == sha
    res = run(*args, "-e", "2")
    assert res.exit_code == 0, res.output
    conf = json.loads((tmp_path / "r" / "checkpoints" / "epoch_0002" / "config.json").read_text())
    assert conf["init_weights_sha256"] == sha and conf["epoch"] == 2


def test_demo_shows_the_strongest_rivals_on_the_same_images():
    res = CliRunner().invoke(main, ["demo", "--limit", "12", "--json", "-q"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["pixel_kind"] for r in rows] == ["binary", "8bit"]
    for r in rows:
        assert r["verified"] and r["n_images"] == 12 and r["actual_bits"] == 8 * r["bytes"]
        got = {(c["codec"], c["protocol"]) for c in r["rivals"] if c["bpd"] is not None}
        for codec in ("jpegxl", "webp"):
            assert {(codec, "per_image"), (codec, "mosaic")} <= got
        assert {("gzip", "stream"), ("bz2", "stream"), ("png", "per_image")} <= got
        assert all(c["n_images"] == 12 for c in r["rivals"] if c["bpd"] is not None)
    from vaecompress_cli.render import format_demo
    text = format_demo(rows)
    assert "jpegxl (mosaic" in text and "webp (per image" in text and "vaecompress mnist-ctx" in text
