"""The exact coder path (docs/DESIGN.md, determinism): bitstreams that decode under other CPU kernels, thread
counts and batch compositions; tables that are what they claim; a golden bitstream."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bbans_vae.checkpoint import load_model, save_checkpoint
from bbans_vae.ans.backends import FloatBackend, pixel_params
from bbans_vae.ans.chains import decode_images, encode_images
from bbans_vae.pipeline import compress, decompress
from bbans_vae.errors import InputError
from bbans_vae.exact import (TABLE_SPECS, ExactBackend, ExactNetworks, load_table, table_value)
from bbans_vae.models import SIGMA_FLOOR, build_model, preset_config
from tests.conftest import random_model

REPO = Path(__file__).resolve().parents[1]


def binary(images):
    return (images >= 128).astype(np.uint8)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return h.hexdigest()


def random_ctx_model(preset: str, seed: int = 1, **kw):
    """A context model with a non-zero context net (its last layer is zero at init)."""
    model = random_model(preset, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed)
    last = model.context[-1]
    with torch.no_grad():
        last.weight.copy_(0.3 * torch.randn(last.weight.shape, generator=g))
        last.bias.copy_(0.1 * torch.randn(last.bias.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoints on disk (for subprocesses): binary at mlp-bin size, 8-bit Gaussian, logistic mix,
    and context models (binary, 8-bit Gaussian)."""
    root = tmp_path_factory.mktemp("exact_models")
    out = {}
    for name, make, preset, kw in [
            ("bin", random_model, "mlp-bin", {}),
            ("8bit", random_model, "mlp-bbans-8bit", {"hidden": (64,), "latent_dim": 8}),
            ("mix", random_model, "mlp-8bit-mix", {"hidden": (32,), "latent_dim": 4}),
            ("ctxbin", random_ctx_model, "ctx-bin", {"hidden": (64,), "latent_dim": 8, "context_channels": 16}),
            ("ctx8", random_ctx_model, "ctx-8bit", {"hidden": (64,), "latent_dim": 8, "context_channels": 16}),
            ("ctxw8", random_ctx_model, "ctxw-8bit", {"hidden": (64,), "latent_dim": 8, "context_channels": 16})]:
        save_checkpoint(root / name, make(preset, seed=1, **kw), {"dataset": name})
        model, config, _ = load_model(str(root / name))
        out[name] = (root / name, model, config["weights_sha256"])
    return out


def is_binary_model(name: str) -> bool:
    return name in ("bin", "ctxbin")


def probe_params(eb, z_idx: np.ndarray, x: np.ndarray) -> tuple:
    """Every pixel parameter the coder would use for images x at latents z_idx, as arrays:
    pixel_params, or for a context model each phase's parameters on that phase's pixels."""
    if eb.n_phases == 1:
        p = pixel_params(eb, z_idx)
        return p if isinstance(p, tuple) else (p,)
    out, xf, res = eb.decoder_out(z_idx), x.reshape(len(x), -1), []
    for ph in range(eb.n_phases):
        p = eb.phase_params(out, np.where(eb.phase < ph, xf, 0).astype(np.uint8), ph)
        res += [np.ascontiguousarray(a[:, eb.phase == ph]) for a in (p if isinstance(p, tuple) else (p,))]
    return tuple(res)


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize("name", list(TABLE_SPECS))
def test_bundled_tables_are_correctly_rounded(name):
    """load_table checks the sha256; entries are mpmath values rounded to float64 (a sample)."""
    pytest.importorskip("mpmath")
    t = load_table(name)
    n = TABLE_SPECS[name][2]
    js = sorted({0, 1, n // 2, n - 1, n, *range(0, n + 1, max(1, n // 97))})
    for j in js:
        assert t[j] == table_value(name, j) or (np.isinf(t[j]) and t[j] == table_value(name, j)), (name, j)


def test_exact_outputs_are_close_to_float(models, sample_images):
    """The integer networks approximate the float ones to ~1e-4 (the rate cost is measured elsewhere)."""
    _, model, _ = models["bin"]
    x = binary(sample_images[:64])
    eb = ExactBackend(model, 8)
    mu, sigma = eb.posterior_params(x)
    with torch.inference_mode():
        fmu, fsig = model.posterior(torch.from_numpy(x))
    assert np.abs(mu - fmu.double().numpy()).max() < 1e-3
    assert (np.abs(sigma / fsig.double().numpy() - 1)).max() < 1e-3
    probs = eb.posterior_probs(x)
    assert np.all(probs >= 0) and np.allclose(probs.sum(-1), 1, atol=1e-6)
    z = probs.argmax(-1)
    p_exact = pixel_params(eb, z)
    p_float = pixel_params(FloatBackend(model, 8), z)
    assert np.abs(p_exact - p_float).max() < 1e-3


@pytest.mark.parametrize("name", ["ctxbin", "ctx8", "ctxw8"])
def test_exact_context_outputs_are_close_to_float(models, sample_images, name):
    """Context models: each phase's parameters on its own pixels match the float32 model's."""
    _, model, _ = models[name]
    x = binary(sample_images[:16]) if is_binary_model(name) else sample_images[:16]
    eb, fb = ExactBackend(model, 8), FloatBackend(model, 8)
    z = eb.posterior_probs(x).argmax(-1)
    oe, of = eb.decoder_out(z), fb.decoder_out(z)
    xf = x.reshape(len(x), -1)
    base = fb.phase_params(of, np.zeros_like(xf), 0)
    for ph in range(4):
        sel, xv = eb.phase == ph, np.where(eb.phase < ph, xf, 0).astype(np.uint8)
        pe, pf = eb.phase_params(oe, xv, ph), fb.phase_params(of, xv, ph)
        pe, pf, b0 = ((p if isinstance(p, tuple) else (p,)) for p in (pe, pf, base))
        for a, b, c in zip(pe, pf, b0):
            scale = 1.0 if is_binary_model(name) else 255.0     # Gaussian mean/std in pixel units
            assert np.abs(a[:, sel] - b[:, sel]).max() < 1e-3 * scale
            if ph:
                assert np.abs(b[:, sel] - c[:, sel]).max() > 1e-2   # the context does matter


def test_exact_networks_are_a_function_of_the_weights(models):
    _, model, _ = models["8bit"]
    a, b = ExactNetworks(model), ExactNetworks(model)
    for qa, qb in zip(a.encoder.layers + a.decoder.layers, b.encoder.layers + b.decoder.layers):
        assert np.array_equal(qa.w_t, qb.w_t) and np.array_equal(qa.b, qb.b) and np.array_equal(qa.acc_exp, qb.acc_exp)


# ----------------------------------------------------------------------------- batch composition


@pytest.mark.parametrize("name", ["bin", "8bit", "mix", "ctxbin", "ctx8", "ctxw8"])
def test_batch_composition_cannot_change_exact_outputs(models, sample_images, name):
    from bbans_vae.ans.chains import single_thread
    _, model, _ = models[name]
    n = 13 if name in ("mix", "ctx8", "ctxbin", "ctxw8") else 29
    x = binary(sample_images[:n]) if is_binary_model(name) else sample_images[:n]
    full = ExactBackend(model, 8)
    with single_thread():        # speed only: thread counts are covered by the subprocess tests
        _check_batch_composition(full, model, x)


def _check_batch_composition(full, model, x):
    probs = full.posterior_probs(x)
    z = probs.argmax(-1)
    params = probe_params(full, z, x)
    for k in (1, 5):
        split = ExactBackend(model, 8, batch_split=k)
        assert digest(split.posterior_probs(x)) == digest(probs)
        assert digest(*probe_params(split, z, x)) == digest(*params)
    if full.n_phases > 1:   # a phase's pixels alone (the coder's call) = computing every pixel
        out, xf = full.decoder_out(z), x.reshape(len(x), -1)
        for ph in range(full.n_phases):
            xv, sel = np.where(full.phase < ph, xf, 0).astype(np.uint8), full.phase == ph
            every = full.net.context(out, xv, full.phase < ph)
            only = full.net.context(out, xv, full.phase < ph, sel)
            k = model.likelihood.params_per_pixel
            assert digest(every.reshape(len(x), -1, k)[:, sel]) == digest(only.reshape(len(x), -1, k)[:, sel])
    # one image alone, reversed order
    assert digest(full.posterior_probs(x[::-1])[::-1]) == digest(probs)
    assert digest(full.posterior_probs(x[3:4])) == digest(probs[3:4])


def test_float_path_posteriors_are_the_right_buckets_in_any_batch(sample_images):
    """The float32 posterior tables, batched (as the coder runs them) and one image at a time:
    each lane's table is its own image's bucket masses (a float64 reference from the same
    weights), rows sum to 1, and batch composition changes nothing beyond float32 rounding.
    (The exact path removes even that rounding: see the bit-identity tests above.)"""
    import copy
    from bbans_vae.ans.chains import single_thread
    model = load_model("mnist-bin")[0]                  # trained: sharp posteriors, distinct per image
    x = binary(sample_images[:64])
    fb = FloatBackend(model, 8)
    with torch.inference_mode(), single_thread():
        batched = fb.posterior_probs(x)
        single = np.concatenate([fb.posterior_probs(x[i:i + 1]) for i in range(len(x))])
        h = copy.deepcopy(model.encoder).double()(torch.from_numpy(x).reshape(len(x), -1).double())
    mu, raw = h.chunk(2, dim=-1)
    sigma = torch.nn.functional.softplus(raw) + SIGMA_FLOOR
    edges = fb.buckets.edges                                            # (2^k + 1,) float64
    cdf = torch.special.ndtr((edges - mu.unsqueeze(-1)) / sigma.unsqueeze(-1))
    reference = (cdf[..., 1:] - cdf[..., :-1]).numpy()                  # (64, D, 2^k)
    for table in (batched, single):
        assert np.allclose(table.sum(-1), 1.0, atol=1e-9)
        assert np.abs(table - reference).max() < 1e-3
    assert np.abs(batched - single).max() < 1e-3
    # a lane mix-up would not pass: neighbouring images' tables are far apart
    assert np.abs(batched[1:] - reference[:-1]).max() > 0.5


# ----------------------------------------------------------------------------- other processes

_CHILD = r"""
import json, sys, hashlib, numpy as np, torch
args = json.loads(sys.argv[1])
from bbans_vae.checkpoint import load_model
from bbans_vae.pipeline import decompress
from bbans_vae.exact import ExactBackend
torch.set_num_threads(args["threads"])
model, config, _ = load_model(args["model"])
out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
if args.get("container"):
    data = open(args["container"], "rb").read()
    pixels, header, _ = decompress(data, model, config["weights_sha256"], batch_split=args["batch_split"])
    np.save(args["pixels_out"], pixels)
    out["decoded"] = True
x = np.load(args["probe"])
from tests.test_exact import probe_params
eb = ExactBackend(model, 8, batch_split=args["batch_split"])
probs = eb.posterior_probs(x)                     # outside single_thread(): threads in play
params = probe_params(eb, probs.argmax(-1), x)
h = hashlib.sha256(probs.tobytes())
for p in params:
    h.update(np.ascontiguousarray(p).tobytes())
out["probe_sha"] = h.hexdigest()
print(json.dumps(out))
"""


def _numpy_dispatch_features() -> str:
    try:
        from numpy._core import _multiarray_umath as m
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as m
    feats = [f for f in m.__cpu_dispatch__ if m.__cpu_features__.get(f)]
    return " ".join(feats)


ENVIRONMENTS = {
    # the baseline everywhere: torch's default kernels, MKL/numpy limited to old instruction sets
    "baseline-1thread-split1": ({"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                 "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "NPY_DISABLE_CPU_FEATURES": "<numpy>"}, 1, 1),
    "avx2-2threads-split3": ({"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, 2, 3),
}


def _run_child(env_over: dict, args: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES")}
    for k, v in env_over.items():
        env[k] = _numpy_dispatch_features() if v == "<numpy>" else v
    if not env.get("NPY_DISABLE_CPU_FEATURES"):
        env.pop("NPY_DISABLE_CPU_FEATURES", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                         env=env, cwd=str(REPO), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env_name", list(ENVIRONMENTS))
@pytest.mark.parametrize("name", ["bin", "8bit", "ctx8"])
def test_decode_in_another_process_and_environment(models, sample_images, tmp_path, name, env_name):
    """Encode here (the machine's best kernels, default threads, full batches); decode in a
    subprocess with other torch/MKL/numpy kernels, thread counts and sub-batches."""
    path, model, sha = models[name]
    x = binary(sample_images[:30]) if is_binary_model(name) else sample_images[:12]
    data, rep = compress(model, "m", sha, x, n_chains=4, with_neg_elbo=False, coder_path="exact")
    assert rep["coder_path"] == "exact"
    (tmp_path / "f.vae").write_bytes(data)
    probe = binary(sample_images[100:164]) if is_binary_model(name) else sample_images[100:164]
    np.save(tmp_path / "probe.npy", probe)
    env, threads, split = ENVIRONMENTS[env_name]
    out = _run_child(env, {"model": str(path), "container": str(tmp_path / "f.vae"), "batch_split": split,
                           "threads": threads, "pixels_out": str(tmp_path / "px.npy"),
                           "probe": str(tmp_path / "probe.npy")})
    if env.get("ATEN_CPU_CAPABILITY") == "default":
        assert out["capability"] == "DEFAULT"
    assert out["decoded"] and np.array_equal(np.load(tmp_path / "px.npy"), x)
    # the same distributions, bit for bit, for a 64-image probe batch evaluated with `threads` threads
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        eb = ExactBackend(model, 8)
        probs = eb.posterior_probs(probe)
        params = probe_params(eb, probs.argmax(-1), probe)
    finally:
        torch.set_num_threads(torch_threads)
    h = hashlib.sha256(probs.tobytes())
    for p in params:
        h.update(np.ascontiguousarray(p).tobytes())
    assert out["probe_sha"] == h.hexdigest()


def test_encode_in_baseline_process_decode_here_in_sub_batches(models, sample_images, tmp_path):
    path, model, sha = models["bin"]
    x = binary(sample_images[:24])
    np.save(tmp_path / "x.npy", x)
    env = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
           "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    env = {**{k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}, **env}
    exe = Path(sys.executable).parent / "vaecompress"
    res = subprocess.run([str(exe), "encode", str(tmp_path / "x.npy"), "-o",
                          str(tmp_path / "e.vae"), "--model", str(path), "--coder-path", "exact", "--chains", "6",
                          "--quiet", "--json"], capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["coder_path"] == "exact"
    data = (tmp_path / "e.vae").read_bytes()
    for split in (None, 1, 4):
        pixels, header, _ = decompress(data, model, sha, batch_split=split)
        assert header.coder_path == "exact" and np.array_equal(pixels, x)


# ----------------------------------------------------------------------------- coding


def test_logistic_mixture_and_saturating_inputs_roundtrip(models, sample_images):
    """Logistic tables go through the exact path too; inputs far from the calibration (noise,
    all-255) saturate activations but still decode exactly."""
    _, model, _ = models["mix"]
    rng = np.random.default_rng(0)
    x = np.concatenate([sample_images[:5], rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
                        np.full((1, 28, 28), 255, np.uint8)])
    be = ExactBackend(model, 6)
    enc = encode_images(model, x, 3, 6, backend=be)
    y = decode_images(model, enc.chain_words, len(x), (28, 28), enc.plain_images, 6,
                      backend=ExactBackend(model, 6, batch_split=1))
    assert np.array_equal(x, y)


@pytest.mark.parametrize("name", ["8bit", "ctx8"])
def test_exact_rate_is_close_to_float(models, sample_images, name):
    _, model, sha = models[name]
    x = sample_images[:60]
    sizes = {p: len(compress(model, "m", sha, x, n_chains=2, with_neg_elbo=False, coder_path=p)[0])
             for p in ("float32", "exact")}
    assert abs(sizes["exact"] / sizes["float32"] - 1) < 0.01, sizes


def test_exact_path_refuses_what_it_cannot_do(models, sample_images):
    _, model, sha = models["bin"]
    x = binary(sample_images[:3])
    with pytest.raises(InputError):
        compress(model, "m", sha, x, coder_path="exact", latent_bits=15, with_neg_elbo=False)
    with pytest.raises(InputError):
        compress(model, "m", sha, x, coder_path="exact", refine_steps=2, with_neg_elbo=False)
    with pytest.raises(InputError):
        compress(model, "m", sha, x, coder_path="float64", with_neg_elbo=False)


def test_files_record_their_coder_path(models, sample_images):
    _, model, sha = models["bin"]
    x = binary(sample_images[:5])
    for p in ("float32", "exact"):
        data, _ = compress(model, "m", sha, x, with_neg_elbo=False, coder_path=p)
        pixels, header, _ = decompress(data, model, sha)
        assert header.coder_path == p and np.array_equal(pixels, x)


# ----------------------------------------------------------------------------- golden bitstream


def _hashed_weights_model(preset: str, **kw):
    """A model whose float32 weights come from an integer hash (not torch's RNG): identical on
    every machine, so the exact path must produce the recorded bits everywhere."""
    import dataclasses
    model = build_model(dataclasses.replace(preset_config(preset), **kw)).eval()
    state = {}
    counter = 0
    for name, p in model.state_dict().items():
        n = p.numel()
        k = np.arange(counter, counter + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        counter += n
        with np.errstate(over="ignore"):
            k = (k ^ (k >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
            k ^= k >> np.uint64(29)
        u = (k >> np.uint64(40)).astype(np.float64) - 2.0 ** 23             # 24-bit signed integers
        fan_in = p.shape[-1] if p.ndim == 2 else 16
        scale = 2.0 ** -(23 + int(np.ceil(np.log2(np.sqrt(fan_in)))))   # power of two: exact
        state[name] = torch.from_numpy((u * scale).astype(np.float32).reshape(p.shape))
    model.load_state_dict(state)
    return model


GOLDEN = {
    "binary_words": "da92d8394e0d7d8943664dce7748927ebc729beddf4646a3bbfb2373b848a051",
    "gaussian_params": "1a76c2570175b88c38265a73a6acef144ef96425a910c602200a17e6a9336202",
}


def test_golden_bitstream(sample_images):
    """The exact path's arithmetic is a file format: these digests must be the same on every
    machine and install. A change means the coder path needs a new name (see bbans_vae/exact/)."""
    model = _hashed_weights_model("mlp-bbans-bin", hidden=(64,), latent_dim=8)
    x = binary(sample_images[:8])
    enc = encode_images(model, x, 2, 8, backend=ExactBackend(model, 8))
    words = hashlib.sha256(b"".join(np.asarray(w, "<u4").tobytes() for w in enc.chain_words)).hexdigest()
    g = _hashed_weights_model("mlp-bbans-8bit", hidden=(64,), latent_dim=8)
    eb = ExactBackend(g, 8)
    probs = eb.posterior_probs(sample_images[:8])
    mean, std = pixel_params(eb, probs.argmax(-1))
    params = digest(probs, mean, std)
    assert {"binary_words": words, "gaussian_params": params} == GOLDEN
