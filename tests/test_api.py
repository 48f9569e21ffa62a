"""The public Python API, the one accounting, and the numbers `info` prints."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import constriction
import numpy as np
import pytest
from click.testing import CliRunner

import bbans_vae as bv
from bbans_vae.checkpoint import save_checkpoint
from bbans_vae.container import VERSION, pixels_digest, unpack
from bbans_vae.errors import ModelError
from tests.conftest import random_model
from vaecompress_cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TIMING = {"encode_seconds", "encode_images_per_second"}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-bin"
    save_checkpoint(path, random_model("mlp-bbans-bin", hidden=(32,), latent_dim=4), {"dataset": "mnist-bin"})
    return path


@pytest.fixture()
def binary(sample_images) -> np.ndarray:
    return (sample_images[:30] >= 128).astype(np.uint8)


def cli(*args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    assert res.exit_code == 0, res.output
    return res.output


def test_readme_python_api_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    assert re.fullmatch(r"\d\.\d{4} bpd, model -ELBO \d\.\d{4} bpd\n", capsys.readouterr().out)


def test_package_exports_exactly_what_the_readme_documents():
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    documented = set(re.search(r"`bbans_vae` exports exactly (.*?)\.\n", section, re.S).group(1).split("`")[1::2])
    names = {d.split("(")[0] for d in documented if not d.startswith(("compress", "decompress(data)"))}
    assert set(bv.__all__) == {"load", "Codec", "decompress", "file_sizes", "sample_images", "VaeCompressError"}
    assert set(bv.__all__) <= names
    for name in bv.__all__:
        assert getattr(bv, name) is not None
    with pytest.raises(AttributeError):
        bv.compress                                             # noqa: B018 -- not part of the API


def test_decompress_finds_the_model_by_hash_never_by_a_path_in_the_file(tiny_ckpt, binary, tmp_path, monkeypatch):
    monkeypatch.delenv("VAECOMPRESS_MODELS", raising=False)
    codec = bv.load(tiny_ckpt)
    data = codec.compress(binary, chains=3)
    assert unpack(data)[0].model_name == ""                     # version 2 names no model path, only its hash
    with pytest.raises(ModelError, match="VAECOMPRESS_MODELS"):
        bv.decompress(data)                                     # not bundled, no search path: refused
    assert np.array_equal(bv.decompress(data, search_path=[tiny_ckpt.parent]), binary)
    run = tmp_path / "run"                                      # a run directory on the env search path
    shutil.copytree(tiny_ckpt, run / "checkpoints" / "epoch_0001")
    monkeypatch.setenv("VAECOMPRESS_MODELS", f"{tmp_path / 'missing'}:{tmp_path}")
    assert np.array_equal(bv.decompress(data), binary)
    # same name and path, other weights: refused by hash
    other = tmp_path / "other"
    save_checkpoint(other, random_model("mlp-bbans-bin", seed=5, hidden=(32,), latent_dim=4), {})
    with pytest.raises(ModelError):
        bv.decompress(data, search_path=[other])


def test_bundled_model_round_trip_and_codec_decompress(binary):
    codec = bv.load("mnist-bin")
    data = codec.compress(binary[:10] * 255)
    assert np.array_equal(codec.decompress(data), binary[:10] * 255)
    assert np.array_equal(bv.decompress(data), binary[:10] * 255)


def test_plain_compress_skips_the_elbo_pass(tiny_ckpt, binary, monkeypatch):
    import bbans_vae.pipeline as pipeline

    def no_second_pass(*a, **k):
        raise AssertionError("the -ELBO pass ran")

    monkeypatch.setattr(pipeline, "dataset_neg_elbo_bits", no_second_pass)
    codec = bv.load(tiny_ckpt)
    assert isinstance(codec.compress(binary), bytes)
    with pytest.raises(AssertionError, match="the -ELBO pass ran"):
        codec.compress(binary, report=True)


def test_encode_info_and_api_agree_on_every_shared_key(tiny_ckpt, binary, tmp_path):
    np.save(tmp_path / "image.npy", binary)                    # names image_00000...: the API's default
    vae = tmp_path / "x.vae"
    enc = json.loads(cli("encode", tmp_path / "image.npy", "-o", vae, "--model", tiny_ckpt, "--chains", "3",
                         "--json", "--elbo", "-q"))
    info = json.loads(cli("info", vae, "--json"))
    data, api = bv.load(tiny_ckpt).compress(binary, chains=3, report=True)
    assert data == vae.read_bytes()
    sizes = bv.file_sizes(data)
    for a, b in [(enc, info), (enc, api), (info, api), (enc, sizes), (info, sizes), (api, sizes)]:
        shared = (set(a) & set(b)) - TIMING
        assert {k: a[k] for k in shared} == {k: b[k] for k in shared}, shared
    assert {"actual_bits", "payload_bits", "container_bits", "n_images", "chains"} <= set(enc) & set(info)
    assert {"initial_bits", "ideal_bits", "neg_elbo_bits"} <= set(enc) & set(api)


def test_every_number_info_prints(tiny_ckpt, binary, tmp_path):
    np.save(tmp_path / "x.npy", binary)
    vae = tmp_path / "x.vae"
    cli("encode", tmp_path / "x.npy", "-o", vae, "--model", tiny_ckpt, "--chains", "4", "--latent-bits", "6", "-q")
    data = vae.read_bytes()
    header, chains = unpack(data)
    printed = dict(line.split(None, 1) for line in cli("info", vae).splitlines())
    dims = 30 * 28 * 28
    payload = sum(int(constriction.stream.stack.AnsCoder(w).num_valid_bits()) for w in chains)
    weights_sha = json.loads((tiny_ckpt / "config.json").read_text())["weights_sha256"]
    expected = {   # version 2: no model path or torch version in the file (the model is not on the search path)
        "file": str(vae), "bytes": len(data), "format_version": VERSION, "header_bytes": header.header_bytes,
        "model_sha256_prefix": weights_sha[:16], "engine": header.engine,
        "coder_path": "exact", "pixel_kind": "binary", "binary_scale": 1, "height": 28, "width": 28,
        "channels": 1, "dtype": "uint8", "latent_bits": 6, "refine_steps": 0,
        "importance_samples": 1, "cheap_start": False, "n_images": 30, "n_dims": dims,
        "chains": 4, "plain_images": len(header.plain_images), "actual_bits": 8 * len(data),
        "payload_bits": payload, "container_bits": 8 * len(data) - payload,
        "actual_bpd": 8 * len(data) / dims, "payload_bpd": payload / dims,
        "container_bpd": (8 * len(data) - payload) / dims, "pixels_sha256_prefix": pixels_digest(binary).hex(),
    }
    assert set(printed) == set(expected)
    for key, value in expected.items():
        assert printed[key] == str(value), key
    assert 1 <= len(header.plain_images) <= 4 and 0 < payload <= 32 * sum(header.chain_words)


def test_cli_decode_finds_the_model_like_the_api(tiny_ckpt, binary, tmp_path, monkeypatch):
    monkeypatch.delenv("VAECOMPRESS_MODELS", raising=False)
    vae = tmp_path / "x.vae"
    vae.write_bytes(bv.load(tiny_ckpt).compress(binary, chains=2))
    res = CliRunner().invoke(main, ["decode", str(vae), "-o", str(tmp_path / "a"), "--format", "npy"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.startswith("vaecompress: error: ") and "VAECOMPRESS_MODELS" in res.output
    monkeypatch.setenv("VAECOMPRESS_MODELS", str(tiny_ckpt.parent))
    cli("decode", vae, "-o", tmp_path / "b", "--format", "npy", "-q")
    assert np.array_equal(np.load(tmp_path / "b" / "images.npy"), binary)
