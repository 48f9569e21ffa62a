"""Bits-back ANS coding: exact round trips, chains back to empty, code length vs -ELBO."""
from __future__ import annotations

import numpy as np
import pytest

from bbans_vae.ans.chains import decode_images, encode_images
from bbans_vae.ans.codecs import AnsCoder, Bernoulli, Categorical, Uniform, LatentBuckets
from tests.conftest import random_model


def binary(images):
    return (images >= 128).astype(np.uint8)


def roundtrip(model, x, chains, latent_bits=8):
    enc = encode_images(model, x, chains, latent_bits)
    y = decode_images(model, enc.chain_words, len(x), x.shape[1:], enc.plain_images, latent_bits)
    return enc, y


def test_primitive_codecs_are_exact_inverses():
    rng = np.random.default_rng(0)
    msg = [AnsCoder(), AnsCoder()]
    probs = rng.random((2, 5, 7))
    p1 = rng.random((2, 9))
    a = rng.integers(0, 7, (2, 5))
    b = (rng.random((2, 9)) < 0.5).astype(np.int32)
    u = rng.integers(0, 16, (2, 3))
    Categorical(probs).push(msg, a)
    Bernoulli(p1).push(msg, b)
    Uniform(16, 3).push(msg, u)
    _, u2 = Uniform(16, 3).pop(msg)
    _, b2 = Bernoulli(p1).pop(msg)
    _, a2 = Categorical(probs).pop(msg)
    assert (u2 == u).all() and (b2 == b).all() and (a2 == a).all()
    assert all(m.is_empty() for m in msg)


def test_float32_tables_are_refused():
    with pytest.raises(TypeError):
        Categorical(np.ones((1, 2, 3), np.float32))


def test_latent_buckets_have_equal_prior_mass():
    lb = LatentBuckets(6)
    import torch
    probs = lb.posterior_probs(torch.zeros(1, 1), torch.ones(1, 1))
    assert np.allclose(probs, 1 / 64, atol=1e-12)
    narrow = lb.posterior_probs(torch.tensor([[0.3]]), torch.tensor([[1e-3]]))
    assert abs(narrow.sum() - 1) < 1e-9 and narrow.max() > 0.99


@pytest.mark.parametrize("chains", [1, 3, 16])
def test_binary_roundtrip_random_model(sample_images, chains):
    model = random_model("mlp-bbans-bin")
    x = binary(sample_images[:40])
    enc, y = roundtrip(model, x, chains)
    assert np.array_equal(x, y)
    assert len(enc.plain_images) >= min(chains, len(x))  # every chain starts plain


def test_8bit_roundtrip_random_model(sample_images):
    model = random_model("mlp-bbans-8bit", hidden=(64,), latent_dim=8)
    x = sample_images[:12]
    enc, y = roundtrip(model, x, 4)
    assert np.array_equal(x, y)


def test_single_image_is_cheap(sample_images):
    """One image must not cost thousands of bits: the chain start is plain, no seed words."""
    model = random_model("mlp-bbans-bin")
    x = binary(sample_images[:1])
    enc, y = roundtrip(model, x, 1)
    assert np.array_equal(x, y)
    assert enc.plain_images == [0]
    assert enc.payload_bits < enc.ideal_bits_total + enc.initial_bits + 64


def test_decode_rejects_leftover_and_missing_data(sample_images):
    from bbans_vae.errors import ContainerError
    model = random_model("mlp-bbans-bin")
    x = binary(sample_images[:6])
    enc = encode_images(model, x, 2, 8)
    with pytest.raises(ContainerError):  # one image fewer than coded: data left over
        decode_images(model, enc.chain_words, 5, (28, 28), enc.plain_images, 8)
    with pytest.raises(ContainerError):  # more images than coded: a chain runs dry
        decode_images(model, enc.chain_words, 9, (28, 28), enc.plain_images, 8)


@pytest.mark.parametrize("name", ["mnist-bin", "mnist-bin-paper", "mnist", "mnist-bin-ctx", "mnist-ctx"])
def test_bundled_models_roundtrip_and_rate(bundled, sample_images, name):
    """Real model, 1,000 real images (binary) / 300 (8-bit): exact, and length == ideal + start cost.

    Tolerances: payload - initial - ideal is the ANS overhead (24-bit quantisation, <= 64 bits
    of flushed state per chain): within 0.5% of ideal. The ideal length averages -ELBO up to the
    latent discretisation and Monte Carlo noise: within 2% of the model's -ELBO.
    """
    from bbans_vae.checkpoint import load_model
    from bbans_vae.objectives import dataset_neg_elbo_bits
    if name not in bundled:
        pytest.skip(f"{name} not bundled")
    model, _, _ = load_model(name)
    x = binary(sample_images) if model.cfg.pixel_kind == "binary" else sample_images[:300]
    enc, y = roundtrip(model, x, 4, latent_bits=10)
    assert np.array_equal(x, y)
    overhead = enc.payload_bits - enc.initial_bits - enc.ideal_bits_total
    assert abs(overhead) < 0.005 * enc.ideal_bits_total, overhead
    nelbo = dataset_neg_elbo_bits(model, x, n_samples=8).sum()
    assert abs(enc.ideal_bits_total - nelbo) < 0.02 * nelbo, (enc.ideal_bits_total, nelbo)


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_refinement_roundtrip(sample_images, steps):
    """Transmit-free refinement: the decoder repeats the encoder's K steps exactly."""
    from bbans_vae.ans.refine import RefineBackend
    model = random_model("mlp-bbans-bin", hidden=(64,), latent_dim=8)
    x = binary(sample_images[:24])
    backend = RefineBackend(model, 8, steps)
    enc = encode_images(model, x, 3, 8, backend=backend)
    y = decode_images(model, enc.chain_words, len(x), (28, 28), enc.plain_images, 8,
                      backend=RefineBackend(model, 8, steps))
    assert np.array_equal(x, y)


def test_refinement_lowers_the_elbo_it_optimises(sample_images):
    import torch
    from bbans_vae.objectives import neg_elbo_bits
    from bbans_vae.ans.refine import refine_posterior
    model = random_model("mlp-bbans-bin", hidden=(64,), latent_dim=8)
    x = torch.from_numpy(binary(sample_images[:50]))
    gen = lambda: torch.Generator().manual_seed(1)
    before = neg_elbo_bits(model, x, n_samples=16, gen=gen()).mean()
    after = neg_elbo_bits(model, x, n_samples=16, gen=gen(), posterior=refine_posterior(model, x, 10)).mean()
    assert after < before


@pytest.mark.parametrize("name", ["mnist-bin-ctx", "mnist-ctx", "fashion-mnist-ctx"])
def test_bundled_context_models_on_the_default_exact_path(bundled, sample_images, name):
    """The bundled context models through `compress`/`decompress` on their default (exact, portable)
    path, real images: pixel-exact, and the file within 2% + chain starts of the model's -ELBO."""
    from bbans_vae.checkpoint import load_model
    from bbans_vae.pipeline import compress, decompress
    from bbans_vae.objectives import dataset_neg_elbo_bits
    if name not in bundled:
        pytest.skip(f"{name} not bundled")
    model, config, _ = load_model(name)
    x = binary(sample_images[:200]) if model.cfg.pixel_kind == "binary" else sample_images[:100]
    data, rep = compress(model, name, config["weights_sha256"], x, n_chains=2, with_neg_elbo=False)
    assert rep["coder_path"] == "exact"
    pixels, header, _ = decompress(data, model, config["weights_sha256"])
    assert header.coder_path == "exact" and np.array_equal(pixels, x)
    nelbo = dataset_neg_elbo_bits(model, x, n_samples=8).sum()
    assert abs(rep["payload_bits"] - rep["initial_bits"] - nelbo) < 0.02 * nelbo, (rep, nelbo)
