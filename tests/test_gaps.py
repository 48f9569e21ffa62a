"""`vaecompress gaps`: EGG = AIGG + GMGG per checkpoint, as -ELBO estimates and as real bitstreams.

Runs a shrunken version of the `--quick` setting (a 2x200 MLP on 500 mnist-bin images,
checkpoints at epochs 15 and 30, a seeded random 300 test images) so the module takes ~30 s on 2
busy cores. Not earlier checkpoints: in the first few dozen Adam steps the encoder emits q wider
than the prior (sigma up to ~2-5), where the bucketed latent code legitimately beats the
continuous -ELBO by up to ~0.04 bpd (each latent's cost is capped at latent_bits, z is clamped to
the outermost bucket), so bitstream and ELBO gaps need not agree there; the JSON reports it per
stream as `*_actual_minus_elbo_bpd`. (Heavily overfit decoders differ too, the other way round:
the 2^-24 pixel floor, reported as `*_floor_excess_bpd`.)
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch

from bbans_vae import gaps as G

TINY_TRAIN = G.QuickTrain(hidden=(200, 200), train_size=500, epochs=30, save_every=15)
TINY_GAPS = dataclasses.replace(G.QUICK_GAPS, refit_epochs=10, test_images=300, train_eval_size=500, chains=5,
                                split_images=100, iwae_k=50, local_steps=30)
TIMING_KEYS = ("_seconds", "from_store", "refit_resumed_from_epoch", "refit_epoch_seconds")


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, real_data_root, one_thread):
    run_dir = tmp_path_factory.mktemp("gaps") / "run"
    G.quick_train(run_dir, TINY_TRAIN, data_dir=real_data_root)
    return run_dir


@pytest.fixture(scope="module")
def result(tiny_run, real_data_root):
    stages = []
    res = G.run_gaps(tiny_run, TINY_GAPS, data_dir=real_data_root,
                     on_stage=lambda done, total, text: stages.append((done, total, text)))
    res["_stages"] = stages
    return res


def _numbers(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.endswith(TIMING_KEYS) and k not in TIMING_KEYS}


def test_checkpoints_and_images(result):
    assert [r["epoch"] for r in result["checkpoints"]] == [15, 30]
    assert result["train_subset_size"] == 500 and result["train_eval_n_images"] == 500
    assert result["test_n_images"] == 300 and "seeded random subset of 300" in result["test_selection"]
    assert result["container_header_bits_included"] is True
    assert result["_stages"][-1][0] == result["_stages"][-1][1]
    assert [d for d, _, _ in result["_stages"]] == sorted(d for d, _, _ in result["_stages"])


def test_egg_is_aigg_plus_gmgg(result):
    for r in result["checkpoints"]:
        for key in ("", "_floored", "_actual"):
            assert math.isclose(r[f"egg{key}_bpd"], r[f"aigg{key}_bpd"] + r[f"gmgg{key}_bpd"], rel_tol=0, abs_tol=1e-12)
        assert r["egg_bpd"] == pytest.approx(r["test_elbo_bpd"] - r["train_elbo_bpd"], abs=1e-15)
        assert r["egg_actual_excl_onetime_bpd"] == pytest.approx(
            r["egg_actual_bpd"] - r["egg_initial_bpd"] - r["egg_container_bpd"], abs=1e-12)


def test_egg_is_measured_on_the_runs_own_train_and_test_images(result, tiny_run, real_data_root):
    """Recomputes train and test -ELBO independently of gaps.py: the run's training subset
    (train.train_subset_indices, as training drew it) and the seeded random test subset (drawn
    here by hand), with the same seed and sample count. Catches a wrong image set, subset, seed
    or sign of the gap."""
    from bbans_vae.checkpoint import load_checkpoint
    from bbans_vae.data import load_dataset
    from bbans_vae.objectives import dataset_neg_elbo_bits
    from bbans_vae.train import train_subset_indices

    train_all = load_dataset(TINY_TRAIN.dataset, "train", real_data_root)
    train = train_all[train_subset_indices(len(train_all), TINY_TRAIN.train_size, TINY_TRAIN.seed)]
    test_all = load_dataset(TINY_TRAIN.dataset, "test", real_data_root)
    test = test_all[np.sort(np.random.RandomState([TINY_GAPS.seed, 2]).permutation(len(test_all))[:300])]
    for r in result["checkpoints"]:
        model, _ = load_checkpoint(tiny_run / "checkpoints" / f"epoch_{r['epoch']:04d}")
        bpd = {name: float(dataset_neg_elbo_bits(model, x, seed=TINY_GAPS.seed, n_samples=TINY_GAPS.elbo_samples)
                           .astype(np.float64).mean() / model.cfg.n_pixels) for name, x in (("train", train), ("test", test))}
        assert r["train_elbo_bpd"] == pytest.approx(bpd["train"], rel=1e-6)
        assert r["test_elbo_bpd"] == pytest.approx(bpd["test"], rel=1e-6)
        assert r["egg_bpd"] == pytest.approx(bpd["test"] - bpd["train"], abs=1e-5)


def test_standard_errors_present(result):
    """Every gap carries a standard error; paired ones (AIGG) are far below the independent ones."""
    for r in result["checkpoints"]:
        for g in G.GAP_KEYS:
            for key in ("", "_actual", "_floored"):
                assert r[f"{g}{key}_se_bpd"] > 0, (g, key)
        assert r["aigg_se_bpd"] < r["egg_se_bpd"] / 3
        assert r["egg_se_bpd"] == pytest.approx(math.hypot(r["test_elbo_se_bpd"], r["train_elbo_se_bpd"]))
        assert r["gmgg_se_bpd"] == pytest.approx(math.hypot(r["test_refit_elbo_se_bpd"], r["train_elbo_se_bpd"]))
        assert 0 < r["aigg_share_of_egg_se"] < 10


def test_aigg_se_against_hand_computation(result, tiny_run, real_data_root):
    """Recompute the per-image -ELBOs of the last checkpoint with the stored refit encoder and
    the paired SE by hand: they must match the record."""
    from bbans_vae.checkpoint import load_checkpoint
    rec = result["checkpoints"][-1]
    model, config = load_checkpoint(rec["checkpoint"])
    refit = G.load_refit(model, G.Path(result["store_dir"]) / "epoch_0030.refit")
    images = G.run_images(tiny_run, config, TINY_GAPS, real_data_root)
    a = G.elbo_bits(model, images.test, TINY_GAPS.elbo_samples, TINY_GAPS.seed)
    b = G.elbo_bits(refit, images.test, TINY_GAPS.elbo_samples, TINY_GAPS.seed)
    d = (a - b) / 784
    n = len(d)
    by_hand = math.sqrt(sum((x - sum(d) / n) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
    assert rec["aigg_bpd"] == pytest.approx(float(d.mean()), rel=1e-9)
    assert rec["aigg_se_bpd"] == pytest.approx(by_hand, rel=1e-9)


def test_refit_encoder_not_worse_on_test(result):
    # The refit starts at phi_N and trains on exactly these images; both numbers use the same MC
    # noise (common random numbers), so the only slack needed is Adam's first-step wobble and the
    # residual MC noise of a paired difference (aigg_se_bpd is ~1e-4 here).
    for r in result["checkpoints"]:
        assert r["test_refit_elbo_bpd"] <= r["test_elbo_bpd"] + 5e-4
        assert r["refit_loss_last_epoch_bpd"] < r["refit_loss_first_epoch_bpd"]
        assert len(r["refit_loss_history_bpd"]) == r["refit_epochs_run"] == 10
        assert r["refit_converged"] is None and r["refit_rel_change_last10pct"] is not None
        assert [e for e, _ in r["refit_eval_curve_bpd"]] == list(range(11))
        assert r["refit_rel_change_last10pct_se"] > 0


def test_real_bitstream_gaps_match_elbo_gaps(result):
    """Tolerance, derived:
    * MC noise: the coder codes one (discretised) z per image, the -ELBO averages 10 samples; the
      1-sigma noise of (actual gap - ELBO gap) is measured per checkpoint from the per-image
      differences (`*_actual_noise_bpd`, ~0.5e-3 bpd for 300 images); allow 5 sigma.
    * Coding overhead that is not in the ELBO: the container header, chain-start bits
      (`initial_bits`, ~60 bits per chain) and ANS flush/rounding, per file (actual - ideal); the
      gap sees their difference (the train and test files have different image counts), which we
      subtract exactly.
    * Latent discretisation (2^latent_bits equal-mass buckets): a small positive bias per stream that
      nearly cancels between streams; allow 1e-3 bpd.
    Altogether this is ~3e-3 bpd; the absolute bound 0.01 bpd (the issue's example) also holds.
    """
    for r in result["checkpoints"]:
        assert r["coder_path"] == "exact"
        over = {s: r[f"{s}_actual_bpd"] - r[f"{s}_ideal_bpd"] for s in G.STREAMS}
        for g, (a, b) in G.GAP_TERMS.items():
            diff = r[f"{g}_actual_bpd"] - r[f"{g}_bpd"]
            assert abs(diff) < 0.01, (g, r["epoch"], diff)
            assert abs(diff - (over[a] - over[b])) <= 5 * r[f"{g}_actual_noise_bpd"] + 1e-3, (g, r["epoch"], diff)
        for s in G.STREAMS:
            assert r[f"{s}_verified"] is True
            assert r[f"{s}_actual_bits"] == r[f"{s}_payload_bits"] + r[f"{s}_container_bits"]
            assert r[f"{s}_payload_bits"] >= r[f"{s}_ideal_bits"] + r[f"{s}_initial_bits"] - 64
            assert r[f"{s}_floor_excess_bpd"] >= 0
            assert r[f"{s}_floored_elbo_bpd"] == pytest.approx(r[f"{s}_elbo_bpd"] - r[f"{s}_floor_excess_bpd"])


def test_split_at_last_checkpoint(result):
    s = result["split"]
    last = result["checkpoints"][-1]
    assert s["epoch"] == last["epoch"] and s["split_n_images"] == 100
    assert "seeded random subset of 100 of the 300" in s["split_selection"]
    total = s["neg_log_px_bpd"] + s["approximation_gap_bpd"] + s["amortization_gap_bpd"]
    assert total == pytest.approx(s["split_test_elbo_bpd"], abs=1e-12)
    assert s["amortization_gap_bpd"] == pytest.approx(s["split_aigg_bpd"] + s["refit_amortization_gap_bpd"], abs=1e-12)
    for k in ("approximation_gap", "amortization_gap", "split_aigg", "refit_amortization_gap", "neg_log_px"):
        assert s[f"{k}_se_bpd"] > 0
    # per-image optimisation starts at the refit encoder's q and improves it; IWAE <= ELBO
    assert s["test_local_opt_bpd"] < s["split_test_refit_elbo_bpd"]
    assert s["test_iwae_bpd"] < s["test_local_opt_bpd"]
    assert len(last["local_opt_curve_bpd"]) == 30
    assert "test_iwae_bpd" not in result["checkpoints"][0]


def test_store_resume_skips_done_checkpoints_identically(result, tiny_run, real_data_root, monkeypatch):
    """A second run reads every record from the store without measuring; a record deleted from the
    store (its refit kept) is measured again and comes out identical."""
    sdir = G.Path(result["store_dir"])
    assert sdir == G.store_dir(tiny_run, TINY_GAPS, result) and sdir.parent == tiny_run / "gaps"
    assert sorted(p.name for p in sdir.glob("epoch_*.json")) == ["epoch_0015.json", "epoch_0030.json"]
    assert (sdir / "epoch_0030.refit" / G.REFIT_ENCODER).is_file()
    assert json.loads((sdir / "settings.json").read_text())["test_n_images"] == 300

    def fail(*a, **k):
        raise AssertionError("a stored checkpoint was measured again")

    with monkeypatch.context() as m:
        m.setattr(G, "checkpoint_gaps", fail)
        again = G.run_gaps(tiny_run, TINY_GAPS, data_dir=real_data_root)
    assert all(r["from_store"] for r in again["checkpoints"])
    for a, b in zip(result["checkpoints"], again["checkpoints"]):
        assert _numbers(a) == _numbers(b)
    (sdir / "epoch_0015.json").unlink()
    redo = G.run_gaps(tiny_run, dataclasses.replace(TINY_GAPS, epochs=(15,), split="none"), data_dir=real_data_root)
    rec = redo["checkpoints"][0]
    assert rec["from_store"] is False and rec["refit_resumed_from_epoch"] == 10
    assert _numbers(rec) == _numbers(result["checkpoints"][0])


def test_refit_interrupted_resumes_identically(tiny_run, real_data_root, one_thread, tmp_path):
    from bbans_vae.checkpoint import load_checkpoint
    from bbans_vae.data import load_dataset
    model, _ = load_checkpoint(G.list_checkpoints(tiny_run)[-1][1])
    x = load_dataset("mnist-bin", "test", real_data_root)[:200]
    whole = G.refit_encoder(model, x, 5, state_dir=tmp_path / "whole", save_every=2, eval_every=1)

    def kill(epoch, loss):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        G.refit_encoder(model, x, 5, state_dir=tmp_path / "cut", save_every=2, eval_every=1, on_epoch=kill)
    state = json.loads((tmp_path / "cut" / G.REFIT_STATE).read_text())
    assert state["epochs"] == 2 and state["complete"] is False
    resumed = G.refit_encoder(model, x, 5, state_dir=tmp_path / "cut", save_every=2, eval_every=1)
    assert resumed.resumed_from == 2 and resumed.epochs == 5
    assert resumed.history == whole.history and resumed.eval_curve == whole.eval_curve
    for p, q in zip(whole.model.encoder.state_dict().values(), resumed.model.encoder.state_dict().values()):
        assert torch.equal(p, q)
    loaded = G.refit_encoder(model, x, 5, state_dir=tmp_path / "cut")   # complete: loaded, not run
    assert loaded.resumed_from == 5 and not (tmp_path / "cut" / "adam.safetensors").exists()
    for p, q in zip(whole.model.encoder.state_dict().values(), loaded.model.encoder.state_dict().values()):
        assert torch.equal(p, q)


def test_refit_until_converged(tiny_run, real_data_root, one_thread):
    from bbans_vae.checkpoint import load_checkpoint
    from bbans_vae.data import load_dataset
    model, _ = load_checkpoint(G.list_checkpoints(tiny_run)[-1][1])
    x = load_dataset("mnist-bin", "test", real_data_root)[:100]
    loose = G.refit_encoder(model, x, until_converged=True, tol=0.5, max_epochs=50, min_epochs=4)
    assert loose.converged is True and loose.epochs == 4
    assert abs(loose.rel_change_last10) + 2 * loose.rel_change_last10_se < 0.5
    assert G.GapsConfig().refit_min_epochs == 100   # a short window early on can look flat (measured)
    tight = G.refit_encoder(model, x, until_converged=True, tol=1e-12, max_epochs=6, min_epochs=2)
    assert tight.converged is False and tight.epochs == 6 and len(tight.history) == 6


def test_relative_change_last10_by_hand():
    line = [(e, 2.0 - 0.001 * e) for e in range(0, 301)]
    # n = 300: the last 10% are 30 epochs; a straight line drops 0.001 * 30 there, with no scatter
    change, se = G.relative_change_last10(line, 300)
    assert change == pytest.approx(0.03 / 1.7) and se == pytest.approx(0.0, abs=1e-12)
    # n = 50: 10% is 5 epochs, less than MIN_WINDOW = 20
    assert G.relative_change_last10(line[:51], 50)[0] == pytest.approx(0.02 / 1.95)
    # scatter around a flat line: SE of the fitted slope by hand (x = -10..10, sum x^2 = 770)
    flat = [(e, 1.0 + (1e-3 if e % 2 else -1e-3)) for e in range(0, 201)]
    change, se = G.relative_change_last10(flat, 200)
    x = np.arange(-10, 11, dtype=float)
    y = np.array([1.0 + (1e-3 if e % 2 else -1e-3) for e in range(180, 201)])
    slope = (x * y).sum() / (x * x).sum()
    resid = y - y.mean() - slope * x
    by_hand = math.sqrt((resid ** 2).sum() / 19 / (x * x).sum()) * 20 / y[-1]
    assert change == pytest.approx(-slope * 20 / y[-1]) and se == pytest.approx(by_hand)
    assert not G.is_converged(change, se, 1e-4) and G.is_converged(change, se, 1.0)
    assert G.relative_change_last10([], 10) == (None, None) and not G.is_converged(None, None, 1.0)


def test_random_subset_is_seeded_and_not_the_first_n():
    a = G.random_subset(10_000, 300, 0, G.SALT_TEST)
    assert len(a) == 300 and len(set(a.tolist())) == 300 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, np.arange(300)) and a.max() > 5_000       # spread over the whole set
    assert np.array_equal(a, G.random_subset(10_000, 300, 0, G.SALT_TEST))
    assert not np.array_equal(a, G.random_subset(10_000, 300, 1, G.SALT_TEST))
    assert not np.array_equal(a, G.random_subset(10_000, 300, 0, G.SALT_SPLIT))
    assert np.array_equal(G.random_subset(50, None, 0, 1), np.arange(50))
    assert np.array_equal(G.random_subset(50, 80, 0, 1), np.arange(50))


def test_standard_errors_by_hand():
    assert G.stderr(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(math.sqrt(5 / 3) / 2)
    # differences 1, 2, 2: mean 5/3, sample variance 1/3, se = sqrt(1/3) / sqrt(3) = 1/3
    assert G.paired_gap(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.0])) == pytest.approx((5 / 3, 1 / 3))
    # means 2 and 5; se 1/sqrt(3) and 1: combined sqrt(1/3 + 1)
    assert G.independent_gap(np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0])) == pytest.approx((-3.0, math.sqrt(4 / 3)))
    assert math.isnan(G.stderr(np.array([1.0])))


def test_share_se_matches_bootstrap():
    rng = np.random.RandomState(0)
    n, m = 2000, 3000
    test = 120 + 30 * rng.randn(n)
    refit = test - 10 - 3 * rng.randn(n)
    train = 100 + 30 * rng.randn(m)
    r, se = G.share_se(test, refit, train)
    assert r == pytest.approx(np.mean(test - refit) / (np.mean(test) - np.mean(train)))
    boots = []
    for _ in range(400):
        i, j = rng.randint(0, n, n), rng.randint(0, m, m)
        boots.append(np.mean(test[i] - refit[i]) / (np.mean(test[i]) - np.mean(train[j])))
    assert se == pytest.approx(np.std(boots), rel=0.15)


def test_floor_excess(tiny_run, real_data_root, one_thread):
    """Cap at 0 bits: the excess is the whole reconstruction term E_q[-log2 p(x|z)] = -ELBO - KL;
    a cap far above any pixel's cost: nothing."""
    from bbans_vae.checkpoint import load_checkpoint
    from bbans_vae.data import load_dataset
    from bbans_vae.objectives import gaussian_kl_bits
    model, _ = load_checkpoint(G.list_checkpoints(tiny_run)[-1][1])
    x = load_dataset("mnist-bin", "test", real_data_root)[:50]
    zero, _ = G.pixel_floor_excess_bits(model, x, 4, floor_bits=1e6)
    assert np.all(zero == 0)
    rec, count = G.pixel_floor_excess_bits(model, x, 40, floor_bits=0.0)
    with torch.no_grad():
        kl = gaussian_kl_bits(*model.posterior(torch.from_numpy(x))).numpy()
    elbo = G.elbo_bits(model, x, 40)
    assert rec.mean() == pytest.approx((elbo - kl).mean(), rel=0.01)
    assert np.all(count > 0)


def test_settings_hash():
    info = {"dataset": "d", "train_subset_size": 1, "train_subset_seed": 0, "train_eval_n_images": 1,
            "test_n_images": 2, "test_indices_sha256": "x", "split_n_images": 1}
    h = G.settings_hash(TINY_GAPS, info)
    assert h == G.settings_hash(dataclasses.replace(TINY_GAPS, epochs=(15,), split="all"), info)
    assert h != G.settings_hash(dataclasses.replace(TINY_GAPS, refit_epochs=11), info)
    assert h != G.settings_hash(TINY_GAPS, {**info, "test_indices_sha256": "y"})
    conv = dataclasses.replace(TINY_GAPS, refit_until_converged=True)
    assert G.settings_hash(conv, info) == G.settings_hash(dataclasses.replace(conv, refit_epochs=3), info)
    assert G.settings_hash(conv, info) != G.settings_hash(dataclasses.replace(conv, refit_tol=1e-3), info)


def test_outputs_written(result, tmp_path):
    from vaecompress_cli import render_gaps as R
    R.write_json(result, tmp_path / "g.json")
    R.write_csv(result, tmp_path / "g.csv")
    R.plot(result, tmp_path / "g.png")
    back = json.loads((tmp_path / "g.json").read_text())
    assert back["format"] == G.FORMAT and len(back["checkpoints"]) == 2
    rows = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert [int(r["epoch"]) for r in rows] == [15, 30] and float(rows[1]["aigg_bpd"]) == pytest.approx(
        result["checkpoints"][1]["aigg_bpd"])
    assert float(rows[1]["aigg_se_bpd"]) == pytest.approx(result["checkpoints"][1]["aigg_se_bpd"])
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = R.markdown(result)
    assert "±" in md and "mnist-bin, 500 training images" in md and "refit 10 epochs" in md
    assert "seeded random 300 of the 10000 test images" in R.setting(result)


def test_markdown_never_prints_a_nonzero_se_as_zero():
    """An SE below the table's precision gets one significant digit (not "±0.0000" / "±0%"), and the
    value is printed to the same precision."""
    from vaecompress_cli import render_gaps as R
    assert R._pm({"x_bpd": 0.0015, "x_se_bpd": 0.00004}, "x") == "0.00150±0.00004"
    assert R._pm({"x_bpd": 0.1916, "x_se_bpd": 0.0008}, "x") == "0.1916±0.0008"
    assert R._pm({"x_bpd": 0.2, "x_se_bpd": 0.0}, "x") == "0.2000±0.0000"
    assert R._share({"aigg_share_of_egg": 0.347, "aigg_share_of_egg_se": 0.002}) == "34.7±0.2%"
    assert R._share({"aigg_share_of_egg": 0.413, "aigg_share_of_egg_se": 0.053}) == "41±5%"


def test_json_keys_snake_case_with_units(result):
    def keys(o):
        if isinstance(o, dict):
            for k, v in o.items():
                yield k
                yield from keys(v)
        elif isinstance(o, list):
            for v in o:
                yield from keys(v)
    for k in keys({k: v for k, v in result.items() if k != "_stages"}):
        assert k == k.lower() and " " not in k and "-" not in k, k
    numeric = [k for k, v in result["checkpoints"][-1].items() if isinstance(v, float)]
    unitless_ok = {"local_opt_improved_fraction", "aigg_share_of_egg", "aigg_share_of_egg_se",
                   "refit_rel_change_last10pct", "refit_rel_change_last10pct_se", "local_opt_rel_change_last10pct"}
    for k in numeric:
        assert k in unitless_ok or k.endswith(("_bpd", "_bits", "_seconds", "_pixels_per_image")), k


def test_cli_gaps(tiny_run, real_data_root, tmp_path):
    from click.testing import CliRunner
    from vaecompress_cli.main import main
    before = torch.get_num_threads()
    args = ["gaps", str(tiny_run), "--data-dir", str(real_data_root), "--epochs", "30", "--refit-epochs", "3",
            "--test-images", "200", "--train-eval-size", "200", "--split-images", "50", "--iwae", "20",
            "--local-steps", "10", "--samples", "2", "--chains", "4",
            "--json", str(tmp_path / "o.json"), "--csv", str(tmp_path / "o.csv"), "--plot", str(tmp_path / "o.png")]
    try:
        res = CliRunner().invoke(main, args)
        again = CliRunner().invoke(main, args)
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    assert "AIGG" in res.output and "amortization gap" in res.output and "±" in res.output
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["train_eval_n_images"] == 200 and "200 of the run's 500" in out["train_eval_selection"]
    assert out["settings"]["refit_epochs"] == 3 and out["test_n_images"] == 200
    assert (tmp_path / "o.csv").is_file() and (tmp_path / "o.png").is_file()
    sd = G.Path(out["store_dir"])
    assert all((sd / f).is_file() for f in ("epoch_0030.json", "gaps.json", "gaps.csv", "gaps.md", "gaps.png"))
    assert again.exit_code == 0 and "(1 read from" in again.output and "(stored)" in again.output


def test_cli_gaps_errors(tmp_path):
    from click.testing import CliRunner
    from vaecompress_cli.main import main
    res = CliRunner().invoke(main, ["gaps", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no such run directory" in res.output


def test_refit_zero_epochs_is_identity(tiny_run, real_data_root, one_thread):
    from bbans_vae.checkpoint import load_checkpoint
    from bbans_vae.data import load_dataset
    model, _ = load_checkpoint(G.list_checkpoints(tiny_run)[-1][1])
    x = load_dataset("mnist-bin", "test", real_data_root)[:50]
    fit = G.refit_encoder(model, x, 0)
    assert fit.history == [] and fit.epochs == 0
    a, b = G.elbo_bits(model, x, 3, seed=1), G.elbo_bits(fit.model, x, 3, seed=1)
    assert np.array_equal(a, b)
    refit2 = G.refit_encoder(model, x, 1).model
    # the decoder is frozen: identical weights; the encoder moved
    for p, q in zip(model.decoder.parameters(), refit2.decoder.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(model.encoder.parameters(), refit2.encoder.parameters()))


@pytest.mark.slow
def test_quick_within_two_minutes(tmp_path, real_data_root):
    """`vaecompress gaps --quick` (trains the quick setting, then measures it) in <= 2 minutes."""
    from click.testing import CliRunner
    from vaecompress_cli.main import main
    before = torch.get_num_threads()
    t0 = time.time()
    try:
        res = CliRunner().invoke(main, ["gaps", str(tmp_path / "quick"), "--quick", "--data-dir", str(real_data_root)])
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    assert time.time() - t0 <= 120


def test_train_threads(tmp_path, real_data_root, monkeypatch):
    """`train --threads N` sets torch's threads; on CPU the default is 1 (recorded in run.json)."""
    from click.testing import CliRunner
    from vaecompress_cli.main import main
    before = torch.get_num_threads()
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    base = ["train", "-d", "mnist-bin", "-m", "mlp-paper", "--hidden", "20", "--train-size", "100", "-e", "1",
            "--device", "cpu", "--data-dir", str(real_data_root), "-q"]
    try:
        res = CliRunner().invoke(main, base + ["-o", str(tmp_path / "a")])
        assert res.exit_code == 0, res.output
        assert calls == [1]
        assert "1 torch threads" in json.loads((tmp_path / "a" / "run.json").read_text())["hardware"]
        res = CliRunner().invoke(main, base + ["-o", str(tmp_path / "b"), "--threads", "2"])
        assert res.exit_code == 0, res.output
        assert calls == [1, 2]
        assert CliRunner().invoke(main, base + ["-o", str(tmp_path / "c"), "--threads", "0"]).exit_code == 2
    finally:
        real(before)


def _script_argv(name: str, *args: str) -> tuple[list[str], dict]:
    """The command line and environment that run benchmarks/NAME with ARGS on one thread."""
    import os
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    return [sys.executable, str(root / "benchmarks" / name), *args], {**os.environ, "OMP_NUM_THREADS": "1"}


def _script(name: str, *args: str) -> str:
    import subprocess
    argv, env = _script_argv(name, *args)
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_seed_study_driver_resumes(tiny_run, real_data_root):
    """benchmarks/seed_study.py measures the wanted checkpoints that exist, stops waiting for a
    missing one, and on a second run reads them back from the store."""
    args = ["--run", str(tiny_run), "--epochs", "30,45", "--test-images", "100", "--train-eval-size", "100",
            "--split-images", "50", "--iwae", "10", "--local-steps", "5", "--refit-max-epochs", "4",
            "--poll", "0.1", "--max-wait", "0.2", "--data-dir", str(real_data_root)]
    first = _script("seed_study.py", *args)
    assert "epoch 30: measured" in first and "epoch 45: no checkpoint yet" in first and "1 of 2" in first
    second = _script("seed_study.py", *args)
    assert "epoch 30: read from the store" in second
    stores = [p for p in (tiny_run / "gaps").iterdir() if (p / "gaps.md").is_file()
              and json.loads((p / "settings.json").read_text())["test_n_images"] == 100]
    assert len(stores) == 1 and (stores[0] / "gaps.png").is_file()
    res = json.loads((stores[0] / "gaps.json").read_text())
    assert [r["epoch"] for r in res["checkpoints"]] == [30] and "test_iwae_bpd" in res["checkpoints"][0]
    assert res["checkpoints"][0]["refit_epochs_run"] <= 4
    # a later invocation for another checkpoint: its summary covers every stored checkpoint, not
    # only the ones it measured itself
    args15 = [a if a != "30,45" else "15" for a in args]
    assert "epoch 15: measured" in _script("seed_study.py", *args15)
    assert [r["epoch"] for r in json.loads((stores[0] / "gaps.json").read_text())["checkpoints"]] == [15, 30]
    (stores[0] / "gaps.json").unlink()
    assert "(epochs [15, 30])" in _script("seed_study.py", *args15, "--summary")
    assert [r["epoch"] for r in json.loads((stores[0] / "gaps.json").read_text())["checkpoints"]] == [15, 30]


def test_seed_state_carries_a_run_across_sessions(tiny_run, real_data_root, tmp_path):
    """seed_state.py save keeps the resume state, the unmeasured wanted checkpoints and the
    records; restore into a fresh tree gives a run whose summary still covers the measured
    checkpoints (their weights are no longer there), and it refuses to go backwards."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("gaps"))
    args = ["--run", str(run), "--test-images", "100", "--train-eval-size", "100", "--split-images", "50",
            "--iwae", "10", "--local-steps", "5", "--refit-max-epochs", "4", "--poll", "0.1", "--max-wait", "0.2",
            "--data-dir", str(real_data_root)]
    assert "epoch 30: measured" in _script("seed_study.py", *args, "--epochs", "30")
    state, fresh = tmp_path / "state", tmp_path / "fresh"
    out = _script("seed_state.py", "save", "--run", str(run), "--to", str(state), "--epochs", "15,30")
    assert "checkpoints [15] not measured yet" in out
    assert not (state / "checkpoints" / "epoch_0030").exists() and (state / "resume" / "optimizer.safetensors").is_file()
    summary = next(run.glob("gaps/*/gaps.json"))
    _script("seed_state.py", "restore", "--from", str(state), "--run", str(fresh), "--records", str(summary))
    assert "(epochs [30])" in _script("seed_study.py", *args, "--run", str(fresh), "--summary")
    # a run that is further along is not overwritten by an older state
    cfg = json.loads((fresh / "resume" / "config.json").read_text())
    (fresh / "resume" / "config.json").write_text(json.dumps({**cfg, "epoch": cfg["epoch"] + 1}))
    import subprocess
    import sys
    from pathlib import Path
    bad = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "seed_state.py"),
                          "restore", "--from", str(state), "--run", str(fresh)], capture_output=True, text=True)
    assert bad.returncode != 0 and "newer than the saved" in bad.stderr


@pytest.mark.slow
def test_rha_study_tiny(tiny_run, real_data_root, tmp_path):
    out = _script("rha_study.py", "--tiny", "--models", str(tiny_run), "--data-dir", str(real_data_root),
                  "--out", str(tmp_path / "rha"))
    res = json.loads((tmp_path / "rha" / "results.json").read_text())
    assert {r["variant"] for r in res["rows"]} == {"baseline", "rha-prior", "rha-recon", "control"}
    assert all(r["verified_k0"] and r["verified_k2"] for r in res["rows"])
    # a second invocation resumes from the caches: the same rows, and no state, -ELBO or coded file
    # is written again (checked by modification time, not by wall-clock, which fails under load)
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "rha").rglob("*")
              if p.is_file() and (p.suffix in (".safetensors", ".npy") or p.parent.name == "coded")}
    assert any(p.suffix == ".safetensors" for p in cached) and any(p.parent.name == "coded" for p in cached)
    _script("rha_study.py", "--tiny", "--models", str(tiny_run), "--data-dir", str(real_data_root),
            "--out", str(tmp_path / "rha"))
    assert json.loads((tmp_path / "rha" / "results.json").read_text())["rows"] == res["rows"]
    assert "wrote" in out and {p: p.stat().st_mtime_ns for p in cached} == cached
    # another seed later, the first one's rows joined from its results file: one summary over both,
    # the AIGG reference read back, not refit
    (tmp_path / "rha" / "first.json").write_text((tmp_path / "rha" / "results.json").read_text())
    _script("rha_study.py", "--tiny", "--seeds", "1", "--with-rows", str(tmp_path / "rha" / "first.json"),
            "--models", str(tiny_run), "--data-dir", str(real_data_root), "--out", str(tmp_path / "rha"))
    both = json.loads((tmp_path / "rha" / "results.json").read_text())
    assert {(r["variant"], r["seed"]) for r in both["rows"]} >= {("rha-prior", 0), ("rha-prior", 1), ("control", 1)}
    assert all(s["n_seeds"] == 2 for s in both["summary"] if s["variant"] != "baseline")
    assert {r["refit_reference_epochs"] for r in both["rows"]} == {r["refit_reference_epochs"] for r in res["rows"]}


@pytest.mark.slow
def test_rha_study_waits_for_another_process_refit_reference(tiny_run, real_data_root, tmp_path):
    """Two processes on one --out: while one holds the refit reference's lock, the other waits
    (and says so) instead of refitting into the same state directory; it finishes after the lock
    is released."""
    import fcntl
    import subprocess
    out = tmp_path / "rha" / str(tiny_run).strip("/").replace("/", "_")
    out.mkdir(parents=True)
    argv, env = _script_argv("rha_study.py", "--tiny", "--models", str(tiny_run), "--data-dir", str(real_data_root),
                             "--out", str(tmp_path / "rha"))
    with open(out / "refit-reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "waiting for another process's refit reference" in line:
                break
        assert proc.poll() is None, "".join(seen)
        assert not (out / "refit-test").exists()
    rest = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, "".join(seen) + rest
    assert (out / "refit_reference.json").is_file() and (tmp_path / "rha" / "results.json").is_file()


def test_cli_gaps_same_numbers_for_every_worker_count(tiny_run, real_data_root, tmp_path):
    """--workers 2 measures the two checkpoints in two processes (into the store, read back): the
    same numbers as one process, the split at the last checkpoint included."""
    import shutil
    from click.testing import CliRunner
    from vaecompress_cli.main import main
    before = torch.get_num_threads()
    outs = {}
    try:
        for w in ("1", "2"):
            rd = tmp_path / f"run{w}"
            shutil.copytree(tiny_run, rd, ignore=shutil.ignore_patterns("gaps"))
            args = ["gaps", str(rd), "--data-dir", str(real_data_root), "--refit-epochs", "2", "--test-images", "60",
                    "--train-eval-size", "60", "--split-images", "20", "--iwae", "5", "--local-steps", "3",
                    "--samples", "1", "--chains", "2", "--workers", w, "--json", str(tmp_path / f"o{w}.json")]
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 0, res.output
            outs[w] = json.loads((tmp_path / f"o{w}.json").read_text())
    finally:
        torch.set_num_threads(before)
    one, two = outs["1"], outs["2"]
    assert len(one["checkpoints"]) == 2
    assert all(r["from_store"] for r in two["checkpoints"])               # measured by the workers
    # the same numbers; paths differ only by the run directory
    same = [json.dumps(_numbers(r), sort_keys=True).replace(str(tmp_path / "run1"), str(tmp_path / "run2"))
            for r in one["checkpoints"]]
    assert same == [json.dumps(_numbers(r), sort_keys=True) for r in two["checkpoints"]]
    assert one["split"] == two["split"] and "test_iwae_bpd" in two["checkpoints"][-1]
    assert "test_iwae_bpd" not in two["checkpoints"][0]
