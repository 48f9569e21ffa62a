"""torchrun: `train` data-parallel over 2 CPU processes (gloo) keeps checkpoints and resume;
`encode`/`decode` over 2 processes write the same bytes and pixels as one process; errors on any
rank stop the command with one line and no output. Plus the pieces: shares and array framing."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bbans_vae.distributed import Team, pack_arrays, unpack_arrays
from bbans_vae.train import _rank_batches

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _torchrun(args: list[str], cwd, procs: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", "vaecompress_cli.main", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_shares_cover_every_item_once():
    for size in (1, 2, 3, 5):
        for n in (0, 1, 2, 7, 100):
            shares = [Team(r, size).share(n) for r in range(size)]
            assert [i for s in shares for i in s] == list(range(n))


def test_rank_batches_split_each_batch_between_the_ranks():
    x = torch.arange(23)
    seen = []
    for rank in range(3):
        gen = torch.Generator().manual_seed(5)
        seen.append(list(_rank_batches(x, 23, 10, gen, Team(rank, 3))))
    one = list(_rank_batches(x, 23, 10, torch.Generator().manual_seed(5), None))
    for b, (full, n_full) in enumerate(one):
        assert [n for _, n in (seen[r][b] for r in range(3))] == [n_full] * 3      # weights use the whole batch
        assert torch.equal(torch.cat([seen[r][b][0] for r in range(3)]), full)


def test_pack_arrays_round_trip():
    arrays = [np.arange(5, dtype=np.uint32), np.zeros(0, np.float64), np.array([[1.5, -2.0]]),
              np.arange(12, dtype=np.uint8).reshape(2, 2, 3), np.array([7], np.int64)]
    back = unpack_arrays(pack_arrays(arrays))
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_torchrun_encode_decode_same_bytes_and_pixels(tmp_path, sample_images):
    from bbans_vae.checkpoint import load_model
    from bbans_vae.pipeline import compress
    x = sample_images[:150]
    np.save(tmp_path / "x.npy", x)
    model, config, _ = load_model("mnist-ctx")
    one, _ = compress(model, "mnist-ctx", config["weights_sha256"], x, names_stem="x", n_chains=5)
    # 2 ranks x 2 workers = 4 chain groups over 5 chains
    two = _torchrun(["encode", "x.npy", "-o", "two.vae", "--chains", "5", "--workers", "2", "-q", "--json"], tmp_path)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two.vae").read_bytes() == one
    report = json.loads(two.stdout)                       # rank 0 alone prints the report
    assert report["bytes"] == len(one)
    dec = _torchrun(["decode", "two.vae", "-o", "out", "--format", "npy", "--workers", "1", "-q"], tmp_path)
    assert dec.returncode == 0, dec.stderr
    assert np.array_equal(np.load(tmp_path / "out" / "images.npy"), x)


def test_torchrun_decode_of_a_corrupt_file_fails_on_every_rank_and_writes_nothing(tmp_path, sample_images):
    from bbans_vae.checkpoint import load_model
    from bbans_vae.container import pack, unpack
    from bbans_vae.pipeline import compress
    model, config, _ = load_model("mnist-bin")
    x = (sample_images[:40] >= 128).astype(np.uint8)
    data, _ = compress(model, "mnist-bin", config["weights_sha256"], x, n_chains=4)
    header, words = unpack(data)
    words = [w.copy() for w in words]
    words[3][0] ^= 0x5A5A5A5A                             # a chain rank 1 decodes
    (tmp_path / "bad.vae").write_bytes(pack(header, words))
    res = _torchrun(["decode", "bad.vae", "-o", "out", "--model", "mnist-bin", "--workers", "1", "-q"], tmp_path)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("vaecompress: error:")]
    assert any("corrupt payload" in ln and "rank" not in ln for ln in lines), res.stderr     # rank 0 says why
    assert not (tmp_path / "out").exists()


def _weights(path):
    from bbans_vae.checkpoint import load_checkpoint
    model, config = load_checkpoint(path)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), config


@pytest.mark.slow   # 3 torchrun launches: ~40-60 s on 2 shared cores
def test_torchrun_train_checkpoints_and_resume(tmp_path, real_data_root):
    """2 ranks: a run stopped after epoch 1 and resumed to 2 ends with the same weights as one run
    of 2 epochs; files as in one process, world size recorded; close to a one-process run."""
    common = ["train", "-d", "mnist-bin", "-m", "mlp-bbans-bin", "--hidden", "64", "--latent-dim", "8",
              "--train-size", "300", "--save-every", "1", "--data-dir", str(real_data_root), "-q"]
    for epochs, out in ((1, "a"), (2, "a"), (2, "b")):
        res = _torchrun(common + ["-e", str(epochs), "-o", out], tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("trained mlp-bbans-bin") == 1             # rank 0 reports
    from bbans_vae.models import preset_config
    from bbans_vae.train import TrainArgs, train
    cfg = dataclasses.replace(preset_config("mlp-bbans-bin"), hidden=(64,), latent_dim=8)
    train(tmp_path / "c", TrainArgs(dataset="mnist-bin", model=cfg.to_dict(), epochs=2, train_size=300, save_every=1,
                                    data_dir=str(real_data_root)))
    a, b, c = (tmp_path / d for d in "abc")
    wa, ca = _weights(a / "checkpoints" / "epoch_0002")
    wb, _ = _weights(b / "checkpoints" / "epoch_0002")
    wc, _ = _weights(c / "checkpoints" / "epoch_0002")
    assert torch.equal(wa, wb)                                           # resume = uninterrupted
    assert (a / "checkpoints" / "epoch_0001" / "model.safetensors").is_file()
    assert sorted(p.name for p in (a / "resume").iterdir()) == sorted(p.name for p in (c / "resume").iterdir())
    log = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and {r["world_size"] for r in log} == {2}
    assert json.loads((a / "run.json").read_text())["world_size"] == 2 and ca["world_size"] == 2
    # same batches and objective as one process: only the reparameterisation noise differs
    log_c = [json.loads(line) for line in (c / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["test_neg_elbo_bpd"] == pytest.approx(log_c[-1]["test_neg_elbo_bpd"], rel=0.01)
    assert not torch.equal(wa, wc)
