"""Training objectives and evaluation, on real data: the encoder-only objectives move only the
encoder and lower its loss; `evaluate` reports the numbers the objectives give."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bbans_vae.checkpoint import load_checkpoint, save_checkpoint
from bbans_vae.data import load_dataset
from bbans_vae.evaluate import evaluate
from bbans_vae.models import build_model, preset_config
from bbans_vae.objectives import dataset_iwae_bits, dataset_neg_elbo_bits
from bbans_vae.train import TrainArgs, train, train_subset_indices
from vaecompress_cli.main import main

CFG = dataclasses.replace(preset_config("mlp-bbans-bin"), hidden=(64,), latent_dim=8)
TRAIN_SIZE = 400


@pytest.fixture(scope="module")
def fresh_encoder_ckpt(tmp_path_factory, real_data_root):
    """A decoder trained for 3 epochs, with its encoder reset to fresh random weights: an
    encoder-only objective has a lot to gain."""
    root = tmp_path_factory.mktemp("train")
    trained = train(root / "joint", TrainArgs(dataset="mnist-bin", model=CFG.to_dict(), epochs=3,
                                              train_size=TRAIN_SIZE, data_dir=str(real_data_root)))
    model, _ = load_checkpoint(trained)
    torch.manual_seed(123)
    model.encoder.load_state_dict(build_model(CFG).encoder.state_dict())
    save_checkpoint(root / "init", model, {"dataset": "mnist-bin"})
    return root / "init"


@pytest.fixture(scope="module")
def train_images(real_data_root):
    x = load_dataset("mnist-bin", "train", real_data_root)
    return x[train_subset_indices(len(x), TRAIN_SIZE, 0)]


@pytest.mark.parametrize("objective", ["encoder-elbo", "reverse-half-asleep", "reverse-half-asleep-recon"])
def test_encoder_objectives_move_only_the_encoder_and_lower_its_loss(objective, fresh_encoder_ckpt, train_images,
                                                                     real_data_root, tmp_path):
    init, _ = load_checkpoint(fresh_encoder_ckpt)
    out = train(tmp_path / objective, TrainArgs(dataset="mnist-bin", model=CFG.to_dict(), epochs=2,
                                                train_size=TRAIN_SIZE, data_dir=str(real_data_root),
                                                init=str(fresh_encoder_ckpt), objective=objective))
    after, config = load_checkpoint(out)
    assert config["objective"] == objective
    for name, p in init.decoder.state_dict().items():
        assert torch.equal(p, after.decoder.state_dict()[name]), f"decoder {name} changed"
    assert any(not torch.equal(p, after.encoder.state_dict()[n]) for n, p in init.encoder.state_dict().items())
    before_bpd = dataset_neg_elbo_bits(init, train_images).mean() / CFG.n_pixels
    after_bpd = dataset_neg_elbo_bits(after, train_images).mean() / CFG.n_pixels
    assert after_bpd < before_bpd - 0.01, (before_bpd, after_bpd)
    log = [json.loads(line) for line in (tmp_path / objective / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss_bpd"] < log[0]["train_loss_bpd"]


def test_encoder_objectives_need_an_init(real_data_root, tmp_path):
    from bbans_vae.errors import VaeCompressError
    with pytest.raises(VaeCompressError, match="--init"):
        train(tmp_path / "r", TrainArgs(dataset="mnist-bin", model=CFG.to_dict(), epochs=1, train_size=50,
                                        data_dir=str(real_data_root), objective="encoder-elbo"))


def test_evaluate_reports_the_objectives_numbers(fresh_encoder_ckpt, real_data_root):
    model, _ = load_checkpoint(fresh_encoder_ckpt)
    res = evaluate(model, "mnist-bin", "test", data_dir=real_data_root, limit=60, iwae_k=20, n_samples=2, seed=3)
    x = load_dataset("mnist-bin", "test", real_data_root)[:60]
    nelbo = dataset_neg_elbo_bits(model, x, seed=3, n_samples=2).astype(np.float64)
    iwae = dataset_iwae_bits(model, x, 20, seed=3).astype(np.float64)
    assert res["dataset"] == "mnist-bin" and res["split"] == "test" and res["n_images"] == 60
    assert res["neg_elbo_samples"] == 2 and res["iwae_k"] == 20
    assert res["neg_elbo_bits"] == pytest.approx(nelbo.sum(), rel=1e-6)
    assert res["neg_elbo_bpd"] == pytest.approx(nelbo.mean() / 784, rel=1e-6)
    assert res["iwae_bits"] == pytest.approx(iwae.sum(), rel=1e-6)
    assert res["iwae_bpd"] == pytest.approx(iwae.mean() / 784, rel=1e-6)
    assert res["iwae_bpd"] < res["neg_elbo_bpd"]               # k = 20 tightens the bound
    cli = CliRunner().invoke(main, ["eval", str(fresh_encoder_ckpt), "--limit", "60", "--iwae", "20", "--samples", "2",
                                    "--seed", "3", "--data-dir", str(real_data_root), "--json"])
    assert cli.exit_code == 0, cli.output
    assert {k: v for k, v in json.loads(cli.output).items() if k in res} == res


def test_evaluate_gives_the_same_numbers_for_every_worker_count(fresh_encoder_ckpt, real_data_root, monkeypatch):
    """Chunks (here of 40 images) seeded on their own, shared out among worker processes."""
    import bbans_vae.evaluate as E
    monkeypatch.setattr(E, "EVAL_CHUNK", 40)
    model, _ = load_checkpoint(fresh_encoder_ckpt)
    runs = [evaluate(model, "mnist-bin", "test", data_dir=real_data_root, limit=130, iwae_k=5, n_samples=2, seed=1,
                     workers=w) for w in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0]["n_images"] == 130
    x = load_dataset("mnist-bin", "test", real_data_root)[:40]          # chunk 0 is seeded by the seed itself
    first = evaluate(model, "mnist-bin", "test", data_dir=real_data_root, limit=40, n_samples=2, seed=1, workers=3)
    assert first["neg_elbo_bits"] == pytest.approx(float(dataset_neg_elbo_bits(model, x, seed=1, n_samples=2).sum()),
                                                   rel=1e-6)
    cli = [CliRunner().invoke(main, ["eval", str(fresh_encoder_ckpt), "--limit", "130", "--iwae", "5", "--seed", "1",
                                     "--samples", "2", "--data-dir", str(real_data_root), "--json", "--workers", w])
           for w in ("1", "3")]
    assert cli[0].exit_code == 0, cli[0].output
    assert cli[0].output == cli[1].output


def test_a_4_phase_context_model_starts_a_7_phase_one_with_all_its_weights(real_data_root, tmp_path):
    """--init with the same architecture but context_levels 2 (presets ctx7-*): every weight is
    taken over (the context net included); only the coding order and the masks change."""
    ctx4 = dataclasses.replace(preset_config("ctx-bin"), hidden=(64,), latent_dim=8, context_channels=8)
    ctx7 = dataclasses.replace(ctx4, context_levels=2)
    torch.manual_seed(0)
    m4 = build_model(ctx4)
    with torch.no_grad():
        for p in m4.context.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    save_checkpoint(tmp_path / "ctx4", m4, {"dataset": "mnist-bin"})
    out = train(tmp_path / "ctx7", TrainArgs(dataset="mnist-bin", model=ctx7.to_dict(), epochs=1, train_size=100,
                                             data_dir=str(real_data_root), init=str(tmp_path / "ctx4"), lr=1e-12))
    m7, config = load_checkpoint(out)
    assert m7.cfg.context_levels == 2 and m7.n_phases == 7 and config["model"]["context_levels"] == 2
    for name, p in m4.state_dict().items():      # lr 1e-12: the weights are the init's (to float32 rounding)
        assert torch.allclose(p, m7.state_dict()[name], atol=1e-9), name
    assert "context_levels" not in ctx4.to_dict()                  # 4-phase configs stay as they were


def test_a_context_model_starts_a_deeper_context_net_computing_the_same(real_data_root, tmp_path):
    """--init a 2-layer context model into a 4-layer one (presets ctxw-*): the inserted layers are
    identity convs, so before any step the deeper model gives bit-for-bit the same likelihood
    parameters; its receptive field is 9x9 once trained."""
    from bbans_vae.train import deepen_context
    for base in ("ctx-bin", "ctx-8bit"):
        small = dataclasses.replace(preset_config(base), hidden=(64,), latent_dim=8, context_channels=8)
        deep = dataclasses.replace(small, context_layers=4)
        torch.manual_seed(0)
        m2, m4 = build_model(small), build_model(deep)
        with torch.no_grad():
            for p in m2.context.parameters():
                p.copy_(torch.randn(p.shape) * 0.3)
        m4.load_state_dict(deepen_context(m2.state_dict(), m4.state_dict(), 2, 4))
        x = (torch.rand(6, 28 * 28) < 0.3).float() * (1 if small.pixel_kind == "binary" else 255)
        z = torch.randn(6, 8)
        with torch.no_grad():
            assert torch.equal(m2.pixel_out(z, x), m4.pixel_out(z, x)), base
            assert not torch.equal(m2.pixel_out(z, x), m2.decode(z))           # the context net is live
        assert deep.to_dict()["context_layers"] == 4 and "context_layers" not in small.to_dict()
    save_checkpoint(tmp_path / "ctx2", m2, {"dataset": "mnist"})
    out = train(tmp_path / "ctxw", TrainArgs(dataset="mnist", model=deep.to_dict(), epochs=1, train_size=100,
                                             data_dir=str(real_data_root), init=str(tmp_path / "ctx2"), lr=1e-12))
    m, config = load_checkpoint(out)
    assert m.cfg.context_layers == 4 and config["model"]["context_layers"] == 4
    with torch.no_grad():
        assert torch.allclose(m.pixel_out(z, x), m2.pixel_out(z, x), atol=1e-6)
