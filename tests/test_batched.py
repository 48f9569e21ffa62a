"""bbans_vae.batched: R stacked models compute what R separate models compute, and a lockstep
Adam step of the stack moves each model as its own Adam step would (the GPU study relies on it)."""
import copy

import torch

from bbans_vae.batched import (LockstepTrainer, Stacked, neg_elbo_bits_stacked, shared_pixel_out,
                               stacked_pixel_out)
from bbans_vae.models import ModelConfig, build_model
from bbans_vae.objectives import gaussian_kl_bits

R, B = 3, 5


def small_models(cfg: ModelConfig, r: int = R):
    out = []
    for seed in range(r):
        torch.manual_seed(seed)
        out.append(build_model(cfg))
    return out


def per_model_bits(m, xf, eps):
    mu, sigma = m.posterior(xf)
    return m.likelihood.nll_bits(m.flat_pixels(xf), m.pixel_out(mu + sigma * eps, m.flat_pixels(xf))) \
        + gaussian_kl_bits(mu, sigma)


def test_stacked_export_restores_each_mlp():
    models = small_models(ModelConfig(hidden=(16, 8), latent_dim=4))
    enc = Stacked([m.encoder for m in models])
    for r, m in enumerate(models):
        fresh = copy.deepcopy(m.encoder)
        for p in fresh.parameters():
            p.data.zero_()
        fresh.load_state_dict(enc.export(r))
        for a, b in zip(fresh.state_dict().values(), m.encoder.state_dict().values()):
            assert torch.equal(a, b)


def test_stacked_neg_elbo_equals_each_model():
    cfg = ModelConfig(hidden=(16, 8), latent_dim=4)
    models = small_models(cfg)
    g = torch.Generator().manual_seed(1)
    xf = (torch.rand(R, B, cfg.n_pixels, generator=g) < 0.3).float()
    eps = torch.randn(R, B, cfg.latent_dim, generator=g)
    got = neg_elbo_bits_stacked(models[0], Stacked([m.encoder for m in models]),
                                stacked_pixel_out(Stacked([m.decoder for m in models])), xf, eps)
    for r, m in enumerate(models):
        torch.testing.assert_close(got[r], per_model_bits(m, xf[r], eps[r]), rtol=1e-5, atol=1e-4)


def test_shared_context_decoder_equals_each_encoder():
    """RHA on a context model: R encoders, one frozen decoder + context net."""
    cfg = ModelConfig(arch="ctx", pixel_kind="8bit", likelihood="gaussian", hidden=(16,), latent_dim=4,
                      context_channels=4, image_shape=(6, 5))
    base = small_models(cfg, 1)[0]
    torch.nn.init.normal_(base.context[-1].weight, std=0.1)          # a context net that does something
    encoders = [copy.deepcopy(base.encoder) for _ in range(R)]
    for r, e in enumerate(encoders):
        for p in e.parameters():
            p.data.add_(0.01 * r)
    g = torch.Generator().manual_seed(2)
    xf = torch.randint(0, 256, (R, B, cfg.n_pixels), generator=g).float()
    eps = torch.randn(R, B, cfg.latent_dim, generator=g)
    got = neg_elbo_bits_stacked(base, Stacked(encoders), shared_pixel_out(base), xf, eps)
    for r in range(R):
        m = copy.deepcopy(base)
        m.encoder = encoders[r]
        torch.testing.assert_close(got[r], per_model_bits(m, xf[r], eps[r]), rtol=1e-5, atol=1e-3)


def test_lockstep_adam_moves_each_model_as_its_own_adam():
    cfg = ModelConfig(hidden=(16,), latent_dim=4)
    models = small_models(cfg)
    ref = [copy.deepcopy(m) for m in models]
    enc, dec = Stacked([m.encoder for m in models]), Stacked([m.decoder for m in models])
    g = torch.Generator().manual_seed(3)
    steps = [((torch.rand(R, B, cfg.n_pixels, generator=g) < 0.4).float(), torch.randn(R, B, cfg.latent_dim, generator=g))
             for _ in range(4)]
    inputs = {"x": torch.zeros(R, B, cfg.n_pixels), "eps": torch.zeros(R, B, cfg.latent_dim)}
    trainer = LockstepTrainer(list(enc.parameters()) + list(dec.parameters()),
                              lambda inp: neg_elbo_bits_stacked(models[0], enc, stacked_pixel_out(dec), inp["x"],
                                                                inp["eps"]).mean(-1),
                              inputs, lr=1e-2)
    assert trainer.graph is None                                     # CPU: eager
    trainer.loss_sum.zero_()
    for x, eps in steps:
        trainer.load({"x": x, "eps": eps})
        trainer.step()
    for r, m in enumerate(ref):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for x, eps in steps:
            opt.zero_grad()
            per_model_bits(m, x[r], eps[r]).mean().backward()
            opt.step()
        torch.testing.assert_close(enc.export(r)["0.weight"], m.encoder[0].weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dec.export(r)["2.bias"], m.decoder[2].bias.detach(), rtol=1e-4, atol=1e-5)
