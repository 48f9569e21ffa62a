"""Context models (arch "ctx"): checkerboard phases, teacher forcing = phase-by-phase decoding,
exact round trips on both coder paths (the exact path is the default, as for mlp models)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bbans_vae.ans.chains import decode_images, encode_images
from bbans_vae.pipeline import compress, decompress, default_coder_path
from bbans_vae.models import checkerboard_phases
from bbans_vae.objectives import neg_elbo_bits
from tests.conftest import random_model


def ctx_model(preset: str, seed: int = 0):
    """A context model whose context net is not zero (a fresh one starts as its mlp)."""
    m = random_model(preset, seed, context_channels=8)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in m.context.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return m


def images_for(model, sample_images, n):
    x = sample_images[:n]
    return (x >= 128).astype(np.uint8) if model.cfg.pixel_kind == "binary" else x


def test_checkerboard_phases_cover_each_2x2_block_once():
    ph = checkerboard_phases(28, 28).view(28, 28)
    assert ph[0, 0] == 0 and ph[1, 1] == 1 and ph[0, 1] == 2 and ph[1, 0] == 3
    for p in range(4):
        assert int((ph == p).sum()) == 196


def test_two_level_checkerboard_leaves_one_pixel_in_16_without_context():
    """ctx7 presets: phase 0 is the (0, 0) mod 4 grid; every other pixel has an already-coded
    pixel within distance 2 (inside the context net's 5 x 5 receptive field), and phases 4-6
    are the 1-level order's phases 1-3, so the finest level is the usual checkerboard."""
    ph = checkerboard_phases(28, 28, 2).view(28, 28)
    one = checkerboard_phases(28, 28).view(28, 28)
    assert [int((ph == p).sum()) for p in range(7)] == [49] * 4 + [196] * 3
    assert torch.equal(ph == 0, (torch.arange(28).view(-1, 1) % 4 == 0) & (torch.arange(28).view(1, -1) % 4 == 0))
    assert torch.equal(ph[one > 0] - 3, one[one > 0])
    padded = torch.nn.functional.pad(ph, (2, 2, 2, 2), value=99)
    for r in range(28):
        for c in range(28):
            if ph[r, c] > 0:
                assert int(padded[r:r + 5, c:c + 5].min()) < int(ph[r, c])


@pytest.mark.parametrize("preset", ["ctx-bin", "ctx-8bit", "ctx7-bin", "ctx7-8bit", "ctxw-bin", "ctxw-8bit"])
def test_teacher_forcing_matches_phase_by_phase(preset, sample_images):
    """The training likelihood (all phases at once) is what the coder uses (one phase at a time),
    and a pixel's parameters never depend on pixels of its own or a later phase."""
    m = ctx_model(preset)
    x = torch.from_numpy(images_for(m, sample_images, 8)).reshape(8, -1).float()
    z = torch.randn(8, m.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, forced = m.decode(z), m.pixel_out(z, x)
        k = m.likelihood.params_per_pixel
        for p in range(m.n_phases):
            sel = (m.phase == p).repeat_interleave(k)
            one = m.phase_out(out, x, p)
            assert torch.allclose(one[:, sel], forced[:, sel], atol=1e-5)
            scrambled = torch.where(m.phase >= p, 1 - x if m.cfg.pixel_kind == "binary" else 255 - x, x)
            assert torch.equal(m.phase_out(out, scrambled, p)[:, sel], one[:, sel])


@pytest.mark.parametrize("preset", ["ctx-bin", "ctx-8bit", "ctx7-bin", "ctx7-8bit", "ctxw-bin", "ctxw-8bit"])
@pytest.mark.parametrize("chains", [1, 5])
def test_context_roundtrip_is_exact(preset, chains, sample_images):
    m = ctx_model(preset)
    x = images_for(m, sample_images, 30)
    enc = encode_images(m, x, chains)
    y = decode_images(m, enc.chain_words, len(x), x.shape[1:], enc.plain_images)  # checks chains end empty
    assert np.array_equal(x, y)


def test_context_code_length_tracks_neg_elbo(sample_images):
    """Ideal bits (z actually coded) average within 2% of the 16-sample -ELBO on 100 images."""
    m = ctx_model("ctx-bin")
    x = images_for(m, sample_images, 100)
    enc = encode_images(m, x, 2)
    with torch.no_grad():
        nelbo = neg_elbo_bits(m, torch.from_numpy(x), n_samples=16, gen=torch.Generator().manual_seed(0))
    assert abs(enc.ideal_bits.mean() / float(nelbo.mean()) - 1) < 0.02


@pytest.mark.parametrize("preset", ["ctx-bin", "ctx-8bit", "ctx7-bin", "ctxw-8bit"])
def test_context_models_default_to_the_exact_path(preset, sample_images):
    m = ctx_model(preset)
    x = images_for(m, sample_images, 12)
    assert default_coder_path(m) == "exact" and default_coder_path(m, refine_steps=2) == "float32"
    sizes = {}
    for path in (None, "float32"):
        data, rep = compress(m, "ctx", "00" * 32, x, n_chains=2, with_neg_elbo=False, coder_path=path)
        assert rep["coder_path"] == (path or "exact")
        pixels, header, _ = decompress(data, m, "00" * 32)
        assert header.coder_path == rep["coder_path"] and np.array_equal(pixels, x)
        sizes[rep["coder_path"]] = len(data)
    assert abs(sizes["exact"] / sizes["float32"] - 1) < 0.05, sizes


def test_context_refinement_roundtrip(sample_images):
    m = ctx_model("ctx-8bit")
    x = images_for(m, sample_images, 6)
    data, _ = compress(m, "ctx", "00" * 32, x, n_chains=2, refine_steps=2, with_neg_elbo=False)
    assert np.array_equal(decompress(data, m, "00" * 32)[0], x)
