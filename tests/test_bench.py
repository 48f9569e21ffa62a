"""`vaecompress bench` on a few test images with tiny random-weight checkpoints (fast)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bbans_vae.bench import BBANS_PROTOCOLS, run_bench
from vaecompress_cli.render import format_headline, write_results
from bbans_vae.checkpoint import save_checkpoint
from vaecompress_cli.main import main
from tests.conftest import random_model

N = 120          # two chunks100 files (100 + 20)
P = 28 * 28


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_models")
    out = {}
    for name, preset, ds in [("bin", "mlp-bbans-bin", "mnist-bin"), ("8bit", "mlp-bbans-8bit", "mnist")]:
        save_checkpoint(root / name, random_model(preset, hidden=(32,), latent_dim=4), {"dataset": ds})
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def result(tiny, real_data_root):
    steps = []
    res = run_bench(["mnist-bin", "mnist"], [tiny["bin"], tiny["8bit"]], limit=N, chains_list=(1, 4),
                    codecs=["gzip", "png", "jpegls", "png-1bit"], single_images=10, data_dir=real_data_root,
                    progress=lambda done, total, text: steps.append((done, total, text)))
    res["_steps"] = steps
    return res


def test_rows_for_every_protocol(result, tiny):
    for ds, model in (("mnist-bin", tiny["bin"]), ("mnist", tiny["8bit"])):
        rd = result["datasets"][ds]
        assert rd["n_images"] == N and rd["models"] == [model]
        classical = [r for r in rd["rows"] if not r["ours"]]
        assert {r["protocol"] for r in classical} == {"stream", "per_image", "mosaic"}
        ours = {r["protocol"]: r for r in rd["rows"] if r["ours"]}
        assert set(ours) == set(BBANS_PROTOCOLS)
        assert ours["chunks100"]["files"] == 2 and ours["chunks100"]["chains"] == 1
        assert ours["single"]["n_images"] == 10 and ours["single"]["files"] == 10
        assert ours["single"]["subset"] == "seeded random 10 images"
        for r in ours.values():
            assert r["lossless_verified"] and r["error"] is None
            n = r["n_images"]
            assert r["actual_bits"] == 8 * r["total_bytes"]
            assert r["bpd"] == pytest.approx(r["actual_bits"] / (n * P))
            assert r["actual_bpd"] == r["bpd"]
            assert r["actual_bits"] == r["payload_bits"] + r["container_bits"]
            for k in ("neg_elbo_bpd", "ideal_bpd", "encode_images_per_second", "decode_images_per_second",
                      "forward_images_per_second", "encode_over_forward", "decode_over_forward"):
                assert r[k] is not None and r[k] > 0, k
        # a lone image cannot get bits back: the single protocol pays the start-up cost every time
        assert ours["single"]["initial_bits"] > ours["all"]["initial_bits"]
        h = next(x for x in result["headline"] if x["dataset"] == ds)
        assert h["ratio"] == pytest.approx(h["ours_bpd"] / h["classical_bpd"])
        assert h["ours_bpd"] == min(r["bpd"] for r in ours.values() if not r.get("subset"))
    assert result["all_verified"]


def test_subsets_are_seeded_random_not_the_first_n(result, tiny, real_data_root):
    # MNIST's test set is not in random order: `--limit`, `single` and the rate curve must not take
    # its first N images. The same seed gives the same subset; the single files' -ELBO is the sum
    # over exactly the picked images.
    import numpy as np
    from bbans_vae.bench import SUBSET_SEED, _Plan
    from bbans_vae.data import open_dataset
    spec = open_dataset("mnist-bin", data_root=real_data_root)
    full = spec.images("test")
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(full))[:N])
    plan = _Plan({"mnist-bin": spec}, N, None, 7, 10, (), 8, real_data_root, [])
    plan.load("mnist-bin", [])
    assert np.array_equal(plan.images["mnist-bin"], full[keep])
    assert not np.array_equal(plan.images["mnist-bin"], full[:N])
    rd = result["datasets"]["mnist-bin"]
    assert rd["selection"].startswith(f"seeded random {N} of {len(full)} test images")
    assert result["settings"]["subset_seed"] == SUBSET_SEED
    ours = {r["protocol"]: r for r in rd["rows"] if r["ours"]}
    from bbans_vae.checkpoint import load_model
    from bbans_vae.objectives import dataset_neg_elbo_bits
    nb = dataset_neg_elbo_bits(load_model(tiny["bin"])[0], plan.images["mnist-bin"])
    pick = plan.order["mnist-bin"][:10]
    assert ours["single"]["neg_elbo_bits"] == pytest.approx(float(nb[pick].sum()))
    assert ours["single"]["neg_elbo_bits"] != pytest.approx(float(nb[:10].sum()))


def test_sweep_curves_and_metadata(result, tiny):
    sw = result["speed_sweep"]
    assert sw["model"] == tiny["bin"] and sw["dataset"] == "mnist-bin"
    assert [r["chains"] for r in sw["rows"]] == [1, 4]
    assert all(r["lossless_verified"] and r["n_images"] == N for r in sw["rows"])
    curves = {c["model"]: c for c in result["rate_curves"]}
    assert curves[tiny["8bit"]]["dataset"] == "mnist"
    for c in curves.values():
        assert [p["n_images"] for p in c["points"]] == [1, 10, 100, N]
        assert all(p["lossless_verified"] for p in c["points"])
    for k in ("torch", "numpy", "constriction", "imagecodecs", "vaecompress"):
        assert result["versions"][k]
    assert result["machine"]["cpu_count"] >= 1 and result["date_utc"] and result["command"]
    assert set(result["protocols"]) >= {"stream", "per_image", "mosaic", *BBANS_PROTOCOLS}
    steps = result["_steps"]
    assert steps[-1][0] == steps[-1][1] and [s[0] for s in steps] == list(range(len(steps)))


def test_write_results(result, tmp_path):
    res = {k: v for k, v in result.items() if k != "_steps"}
    paths = write_results(res, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"results.json", "README.md", "rate_vs_images.png", "bpd_mnist-bin.png", "bpd_mnist.png"}
    assert all(p.stat().st_size > 0 for p in paths)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["format"] == "vaecompress-bench/1"
    md = (tmp_path / "out" / "README.md").read_text()
    for s in ("## Headline", "## mnist-bin", "## mnist", "## Speed sweep", "chunks100", "seeded random 10 images only"):
        assert s in md, s
    assert "ratio" in format_headline(res)


def test_no_models_is_classical_only(real_data_root, tmp_path):
    res = run_bench(["mnist-bin"], [], limit=20, codecs=["gzip"], data_dir=real_data_root)
    assert res["notes"] and not res["rate_curves"] and res["speed_sweep"] is None
    assert all(not r["ours"] for r in res["datasets"]["mnist-bin"]["rows"])
    assert res["headline"][0]["ours_bpd"] is None and res["headline"][0]["classical_bpd"] > 0
    assert "classical codecs only" in format_headline(res)
    assert {p.name for p in write_results(res, tmp_path)} == {"results.json", "README.md", "bpd_mnist-bin.png"}


def test_cli_bench(tiny, real_data_root, tmp_path):
    out = tmp_path / "b.json"
    res = CliRunner().invoke(main, ["bench", "-d", "mnist-bin", "-d", "mnist", "-m", tiny["bin"], "--limit", "30",
                                    "--no-classical", "--chains", "1,2", "--single-images", "3",
                                    "--data-dir", str(real_data_root), "--json", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "mnist-bin" in res.output and "no model fits" in res.output
    data = json.loads(out.read_text())
    assert data["command"].startswith("vaecompress") and data["all_verified"]  # argv is pytest's here
    assert data["datasets"]["mnist"]["rows"] == []


def test_cli_bench_errors(real_data_root):
    res = CliRunner().invoke(main, ["bench", "-d", "no-such-set", "--no-classical"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.startswith("vaecompress: error: ")


def test_refine_protocol_row(tiny, real_data_root):
    """--refine-steps adds one verified full-set row per (model, dataset), coded with refinement, and
    the headline can pick it."""
    res = run_bench(["mnist"], [tiny["8bit"]], limit=40, chains_list=(), classical=False, single_images=2,
                    curve_sizes=(), data_dir=real_data_root, refine_steps=(3,))
    rows = {r["protocol"]: r for r in res["datasets"]["mnist"]["rows"]}
    assert set(rows) == {*BBANS_PROTOCOLS, "all+refine3"}
    ref, plain = rows["all+refine3"], rows["all"]
    assert ref["refine_steps"] == 3 and ref["coder_path"] == "float32" and plain["refine_steps"] == 0
    assert ref["lossless_verified"] and ref["n_images"] == 40 and ref["files"] == 1
    assert ref["ideal_bits"] != plain["ideal_bits"]        # the refined posterior was actually used
    assert "all+refine3" in res["protocols"] and res["settings"]["refine_steps"] == [3]
    assert res["headline"][0]["ours_bpd"] == min(r["bpd"] for r in rows.values() if not r.get("subset"))
    with pytest.raises(Exception, match="1..1000"):
        run_bench(["mnist"], [tiny["8bit"]], limit=5, classical=False, refine_steps=(0,), data_dir=real_data_root)


def _without_timings(obj):
    """The result with every timing (and the worker count itself) left out."""
    timing = ("_seconds", "_s", "_per_second", "_over_forward")
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if not k.endswith(timing) and k not in ("date_utc", "workers")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def test_same_results_for_every_worker_count(tiny, real_data_root):
    """--workers shares out files (chunks100, single) and chain groups (all): every size, bpd and
    verdict is the same as with one process."""
    kw = dict(limit=N, chains_list=(4,), codecs=["gzip"], single_images=5, curve_sizes=(1, 10),
              data_dir=real_data_root)
    one = run_bench(["mnist-bin"], [tiny["bin"]], workers=1, **kw)
    two = run_bench(["mnist-bin"], [tiny["bin"]], workers=3, **kw)
    assert one["settings"]["workers"] == 1 and two["settings"]["workers"] == 3
    assert two["all_verified"]
    assert _without_timings(two) == _without_timings(one)
    rows = {r["protocol"]: r for r in two["datasets"]["mnist-bin"]["rows"] if r["ours"]}
    assert rows["chunks100"]["files"] == 2 and rows["single"]["files"] == 5
