"""--workers: groups of chains coded in parallel processes give the same file and the same pixels
for every worker count; errors and interrupts stop every worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bbans_vae.ans.chains import chain_groups
from bbans_vae.ans.workers import can_fork, run_jobs
from bbans_vae.checkpoint import load_model
from bbans_vae.errors import ContainerError
from bbans_vae.pipeline import compress, decompress

pytestmark = pytest.mark.skipif(not can_fork(), reason="worker processes need fork")


def test_chain_groups_cover_every_chain_once():
    for chains in range(1, 12):
        for workers in range(1, 6):
            groups = chain_groups(chains, workers)
            assert len(groups) == min(chains, workers)
            assert [c for c0, c1 in groups for c in range(c0, c1)] == list(range(chains))
            assert all(c1 > c0 for c0, c1 in groups)


@pytest.mark.parametrize("name", ["mnist-bin", "mnist-ctx"])
def test_same_file_and_pixels_for_every_worker_count(name, sample_images):
    model, config, _ = load_model(name)
    x = sample_images[:23] if model.cfg.pixel_kind == "8bit" else (sample_images[:23] >= 128).astype(np.uint8)
    sha = config["weights_sha256"]
    files, reports = [], []
    for workers in (1, 2, 3, 7):
        data, report = compress(model, name, sha, x, n_chains=7, with_neg_elbo=False, workers=workers)
        files.append(data)
        reports.append(report)
    assert all(f == files[0] for f in files)
    for key in ("ideal_bits", "initial_bits", "payload_bits", "plain_images"):
        assert len({r[key] for r in reports}) == 1, key
    for workers in (1, 3, 7):
        done = []
        pixels, _, _ = decompress(files[0], model, sha, workers=workers, progress=done.append)
        assert np.array_equal(pixels, x)
        assert sum(done) == len(x)                      # the progress bar reaches the total


def test_float32_path_ignores_workers(sample_images):
    """float32 results depend on the batch, so that path always codes in one process."""
    model, config, _ = load_model("mnist-bin")
    x = (sample_images[:12] >= 128).astype(np.uint8)
    one, _ = compress(model, "mnist-bin", config["weights_sha256"], x, n_chains=4, with_neg_elbo=False,
                      coder_path="float32")
    two, _ = compress(model, "mnist-bin", config["weights_sha256"], x, n_chains=4, with_neg_elbo=False,
                      coder_path="float32", workers=2)
    assert one == two
    assert np.array_equal(decompress(two, model, config["weights_sha256"], workers=2)[0], x)


def test_a_corrupt_chain_in_one_worker_raises(sample_images):
    model, config, _ = load_model("mnist-bin")
    x = (sample_images[:12] >= 128).astype(np.uint8)
    data, _ = compress(model, "mnist-bin", config["weights_sha256"], x, n_chains=4, with_neg_elbo=False)
    from bbans_vae.container import pack, unpack
    header, words = unpack(data)
    words = [w.copy() for w in words]
    words[3][0] ^= 0x5A5A5A5A                          # the last group's chain
    with pytest.raises(ContainerError):
        decompress(pack(header, words), model, config["weights_sha256"], workers=2)


def _fails(progress):
    raise ValueError("job failed")


def _sleeps(progress):
    time.sleep(60)


def test_a_failing_job_stops_the_others():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="job failed"):
        run_jobs([_sleeps, _fails, _sleeps])
    assert time.perf_counter() - t0 < 30


def test_ctrl_c_stops_every_worker_and_writes_nothing(tmp_path):
    """SIGINT to the encoder's process group (what Ctrl-C does): it exits, no worker survives and
    no output file (or temporary file) is left."""
    x = np.random.default_rng(0).integers(0, 2, (3000, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.vae"
    proc = subprocess.Popen([sys.executable, "-m", "vaecompress_cli.main", "encode", str(tmp_path / "x.npy"),
                             "-o", str(out), "--model", "mnist-bin-ctx", "--workers", "2", "--quiet"],
                            start_new_session=True, stderr=subprocess.PIPE,
                            # a shell's background job starts with SIGINT ignored; Ctrl-C needs it live
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)                                      # model loaded, workers coding
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    time.sleep(0.5)
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    assert list(tmp_path.iterdir()) == [tmp_path / "x.npy"]
