"""Hostile files, models and outputs (#15): every case ends quickly, in bounded memory, with one
clear `vaecompress: error:` line (or an exact decode), and leaves nothing behind.

Each case runs the real CLI in a forked child (tests/capped.py) and asserts its CPU time
(< CASE_CPU_SECONDS) and the memory it allocated above the inherited baseline
(< CASE_EXTRA_BYTES; a fresh process adds ~235 MiB for python + torch, so this is <= 500 MB
for the command run alone). Files are built with the project's own container writer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bbans_vae import container as C
from bbans_vae.checkpoint import WEIGHTS, load_model, save_checkpoint, sha256_file
from bbans_vae.pipeline import compress
from tests.capped import run_capped
from tests.conftest import random_model

CASE_CPU_SECONDS = 5.0
CASE_EXTRA_BYTES = 250 << 20
FIXTURES = Path(__file__).resolve().parent / "data"
RESULTS: list[dict] = []           # per-case measurements (printed by test_zz_report with -s)


def check(res, fragment: str, name: str, rc: int | None = None, cpu_seconds: float | None = None):
    """One clean error line containing `fragment`, within the time and memory caps."""
    cpu_cap = CASE_CPU_SECONDS if cpu_seconds is None else cpu_seconds
    lines = res.error_lines()
    RESULTS.append({"case": name, "cpu_s": round(res.cpu_seconds, 2), "extra_mib": round(res.extra_bytes / 2**20),
                    "peak_mib": round(res.peak_bytes / 2**20), "rc": res.rc, "error": lines[-1] if lines else ""})
    assert res.rc != 0, res.stdout + res.stderr
    if rc is not None:
        assert res.rc == rc, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("vaecompress: error: "), res.stderr
    assert fragment in lines[0], lines[0]
    assert res.cpu_seconds < cpu_cap, f"{name}: {res.cpu_seconds:.1f} s CPU"
    assert res.extra_bytes < CASE_EXTRA_BYTES, f"{name}: {res.extra_bytes / 2**20:.0f} MiB"


def check_ok(res, name: str):
    RESULTS.append({"case": name, "cpu_s": round(res.cpu_seconds, 2), "extra_mib": round(res.extra_bytes / 2**20),
                    "peak_mib": round(res.peak_bytes / 2**20), "rc": res.rc, "error": ""})
    assert res.rc == 0, res.stderr
    assert res.cpu_seconds < CASE_CPU_SECONDS and res.extra_bytes < CASE_EXTRA_BYTES, (res.cpu_seconds, res.extra_bytes)


# ----------------------------------------------------------------------------- crafted files


@dataclasses.dataclass
class Base:
    header: C.Header
    chains: list
    pixels: np.ndarray
    sha: str


@pytest.fixture(scope="module")
def base(sample_images) -> Base:
    """4 binary digits coded with the bundled mnist-bin-ctx on the exact path, 2 chains."""
    model, config, _ = load_model("mnist-bin-ctx")
    px = (sample_images[:4] >= 128).astype(np.uint8)
    data, _ = compress(model, "mnist-bin-ctx", config["weights_sha256"], px, n_chains=2, with_neg_elbo=False,
                       coder_path="exact")
    h, chains = C.unpack(data)
    return Base(h, chains, px, config["weights_sha256"])


def random_words(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 2**32, n, dtype=np.uint64).astype(np.uint32)


def craft(base: Base, path: Path, chains=None, **fields) -> Path:
    """A version-2 file: `base`'s header with `fields` replaced, `chains` as payload (default:
    base's), block checksums of the right count (random where the layout changed)."""
    chains = base.chains if chains is None else chains
    h = dataclasses.replace(base.header, chain_words=[len(c) for c in chains], **fields)
    n_blocks = C.block_count(h.n_images, h.n_chains, h.refine_steps)
    if len(h.block_checks) != 2 * n_blocks:
        h.block_checks = bytes(np.random.default_rng(1).integers(0, 256, 2 * n_blocks, dtype=np.uint8))
    path.write_bytes(C.pack(h, chains))
    return path


def pack_v1(h: C.Header, chains) -> bytes:
    """The version-1 writer (as of 2026-11), kept here to build version-1 test files."""
    v = C._varint
    s = C._str
    payload = b"".join(np.asarray(w, dtype="<u4").tobytes() for w in chains)
    parts = [s(h.model_name), h.model_sha256[:16].ljust(16, b"\0"), s(h.engine), s(h.torch_version),
             bytes([C.CODER_PATHS.index(h.coder_path), C.PIXEL_KINDS.index(h.pixel_kind), h.binary_scale]),
             v(h.height), v(h.width), v(h.n_images), bytes([h.latent_bits]), v(h.refine_steps),
             *([v(h.refine_lr_e4)] if h.refine_steps else []), v(len(chains)), *(v(len(c)) for c in chains),
             v(len(h.plain_images))]
    prev = -1
    for i in h.plain_images:
        parts.append(v(i - prev - 1))
        prev = i
    parts += [b"\x00", s(h.names_stem or "image")] if h.names is None else [b"\x01", *(s(n) for n in h.names)]
    parts += [h.pixels_sha256[:16].ljust(16, b"\0"), struct.pack("<I", zlib.crc32(payload))]
    header = b"".join(parts)
    return C.MAGIC + b"\x01" + v(len(header)) + header + payload


def decode(path, out, *extra, **kw):
    return run_capped(["decode", path, "-o", out, *extra], **kw)


# ----------------------------------------------------------------------------- 1. memory


def test_decode_of_the_base_file_is_exact_and_small(base, tmp_path):
    f = craft(base, tmp_path / "ok.vae")
    res = decode(f, tmp_path / "out", "--format", "npy")
    check_ok(res, "base file decodes exactly")
    assert np.array_equal(np.load(tmp_path / "out" / "images.npy"), base.pixels)


def test_too_many_chains_refused_before_allocating(base, tmp_path):
    n = 16_384
    f = craft(base, tmp_path / "c.vae", chains=[random_words(1, i) for i in range(n)], n_images=n,
              plain_images=list(range(n)))
    check(decode(f, tmp_path / "o"), "chain count=16384 exceeds the limit 4096", "16,384 one-word chains")
    check(run_capped(["info", f]), "chain count=16384 exceeds the limit 4096", "info: 16,384 chains")


@pytest.mark.parametrize("bits", [16, 2, 15])
def test_latent_bits_bounded_as_at_encode(base, tmp_path, bits):
    f = craft(base, tmp_path / "l.vae", coder_path="float32", machine=C.machine_fingerprint(), latent_bits=bits)
    check(decode(f, tmp_path / "o"), f"latent bits {bits} outside 4..14", f"float32 path, latent bits {bits}")


def test_huge_round_tables_refused(base, tmp_path):
    n = 256
    f = craft(base, tmp_path / "t.vae", chains=[random_words(1, i) for i in range(n)], n_images=n,
              plain_images=list(range(n)), latent_bits=14)
    check(decode(f, tmp_path / "o"), "too much memory per round", "256 chains x 2^14 buckets (exact)")


def test_max_memory_refuses_before_decoding(base, tmp_path):
    f = craft(base, tmp_path / "ok.vae")
    check(decode(f, tmp_path / "o", "--max-memory", "20M"), "more than the limit 20.0 MiB (--max-memory)",
          "--max-memory 20M on a good file")
    check(decode(f, tmp_path / "o", "--max-output-bytes", "100"), "more than --max-output-bytes 100",
          "--max-output-bytes 100")
    assert not (tmp_path / "o").exists()


def test_memory_estimate_bounds_the_measured_peak(base, tmp_path, sample_images):
    """The stated function (limits.decode_memory_bytes) is an upper bound of what decode adds."""
    from bbans_vae import limits
    model, config, _ = load_model("mnist-bin-ctx")
    px = (sample_images[:96] >= 128).astype(np.uint8)
    data, _ = compress(model, "mnist-bin-ctx", config["weights_sha256"], px, n_chains=32, with_neg_elbo=False)
    (tmp_path / "m.vae").write_bytes(data)
    res = decode(tmp_path / "m.vae", tmp_path / "o")
    check_ok(res, "96 images, 32 chains: estimate vs peak")
    h, _ = C.unpack(data)
    est = limits.decode_memory_bytes(model.cfg, h.n_chains, h.latent_bits, h.output_bytes, len(data), exact=True)
    assert res.extra_bytes < est, (res.extra_bytes, est)


# ----------------------------------------------------------------------------- 2. time


def test_random_payload_refused_after_one_block(base, tmp_path):
    """32,001 images declared on 1,000 random words (the image count bound allows it): the first
    checked block (the last 32 images) fails its checksum; before #15 this ran for 137 s."""
    f = craft(base, tmp_path / "r.vae", chains=[random_words(1000)], n_images=32_001, plain_images=[0])
    check(decode(f, tmp_path / "o"), "do not match their checksum", "32,001 images on 1,000 random words")


@pytest.mark.parametrize("workers", [2, 3])
def test_random_payload_refused_after_one_block_with_workers(base, tmp_path, workers):
    """The same with several worker processes: the parent reassembles whole rounds from the
    workers' shared output and checks each block as it completes, stopping every worker."""
    f = craft(base, tmp_path / "r.vae", chains=[random_words(500, seed=s) for s in range(4)], n_images=32_001,
              plain_images=[0, 1, 2, 3])
    # CPU is summed over the worker processes, and each pays the per-round cost of the first block:
    # the cap is the per-case cap per worker beyond the second
    check(decode(f, tmp_path / "o", "--workers", str(workers)), "do not match their checksum",
          f"32,001 images on 4 x 500 random words, {workers} workers",
          cpu_seconds=CASE_CPU_SECONDS * max(1, workers - 1))


def test_refinement_steps_bounded_in_the_container(base, tmp_path):
    f = craft(base, tmp_path / "r.vae", coder_path="float32", machine=C.machine_fingerprint(), refine_steps=10_000,
              refine_lr_e4=100)
    check(decode(f, tmp_path / "o"), "refine steps=10000 exceeds the limit 1000", "refine_steps 10,000")


def test_refinement_on_random_payload_refused_after_one_image(tmp_path, sample_images):
    """With K refinement steps a block is one image (BLOCK_IMAGES / (1 + K) < 1), so random data
    costs one image's refinement: 1,000 steps on mnist-bin, ~2 s."""
    model, config, _ = load_model("mnist-bin")
    px = (sample_images[:2] >= 128).astype(np.uint8)
    data, _ = compress(model, "mnist-bin", config["weights_sha256"], px, n_chains=1, with_neg_elbo=False,
                       coder_path="float32")
    h, _ = C.unpack(data)
    b = Base(h, [], px, config["weights_sha256"])
    f = craft(b, tmp_path / "r.vae", chains=[random_words(300)], n_images=4_000, plain_images=[0], refine_steps=1000,
              refine_lr_e4=100)
    check(decode(f, tmp_path / "o"), "do not match their checksum", "refine 1000 steps, 4,000 images, random words")


# ----------------------------------------------------------------------------- 3. file size


def test_sparse_huge_file_not_read(base, tmp_path):
    f = craft(base, tmp_path / "s.vae")
    with open(f, "r+b") as fh:
        fh.truncate(1 << 30)
    check(run_capped(["info", f]), "unexpected bytes after the payload", "info: sparse 1 GiB file")
    check(decode(f, tmp_path / "o"), "unexpected bytes after the payload", "decode: sparse 1 GiB file")
    with open(f, "r+b") as fh:
        fh.truncate((1 << 34) + 1)
    check(run_capped(["info", f]), "larger than the limit", "info: sparse 16 GiB file")
    check(decode(f, tmp_path / "o", "--max-memory", "1G"), "larger than the limit", "decode: file above --max-memory")


def test_truncated_files_say_how_much_is_missing(base, tmp_path):
    data = craft(base, tmp_path / "t.vae").read_bytes()
    (tmp_path / "t.vae").write_bytes(data[:-10])
    check(decode(tmp_path / "t.vae", tmp_path / "o"), "file is truncated: 10 bytes missing", "truncated by 10 bytes")
    (tmp_path / "t.vae").write_bytes(data[:12])
    check(run_capped(["info", tmp_path / "t.vae"]), "file is truncated: at least", "truncated inside the header")
    v1 = (FIXTURES / "v1-mnist-bin-exact.vae").read_bytes()
    (tmp_path / "v1.vae").write_bytes(v1[:-7])
    check(decode(tmp_path / "v1.vae", tmp_path / "o"), "file is truncated: 7 bytes missing", "v1 truncated by 7 bytes")


# ----------------------------------------------------------------------------- 4. outputs


def test_force_never_replaces_special_files(base, tmp_path, sample_images):
    np.save(tmp_path / "x.npy", (sample_images[:3] >= 128).astype(np.uint8))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    check(run_capped(["encode", tmp_path / "x.npy", "-o", fifo, "--force"]), "is a FIFO, not a regular file",
          "encode -o FIFO --force")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    sock = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    try:
        check(run_capped(["encode", tmp_path / "x.npy", "-o", sock, "--force"]), "is a socket", "encode -o socket --force")
    finally:
        s.close()
    if os.geteuid() == 0:   # a character device like /dev/null (mknod needs root)
        dev = tmp_path / "mynull"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        check(run_capped(["encode", tmp_path / "x.npy", "-o", dev, "--force"]), "is a device", "encode -o chardev --force")
        assert stat.S_ISCHR(os.lstat(dev).st_mode)
    link = tmp_path / "link.vae"
    link.symlink_to(tmp_path / "elsewhere.vae")
    check(run_capped(["encode", tmp_path / "x.npy", "-o", link, "--force"]), "is a symbolic link", "encode -o symlink --force")
    f = craft(base, tmp_path / "ok.vae")
    check(decode(f, fifo, "--force"), "exists and is not a folder", "decode -o FIFO --force")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "image_00001.png")
    check(decode(f, out, "--force"), "is a FIFO", "decode --force onto a FIFO named like an output")
    assert sorted(p.name for p in out.iterdir()) == ["image_00001.png"]


def test_decode_force_replaces_only_what_it_writes(base, tmp_path):
    f = craft(base, tmp_path / "ok.vae")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "image_00000.png").write_text("old")
    check_ok(decode(f, out, "--force"), "decode --force into a folder with other files")
    assert sorted(p.name for p in out.iterdir()) == ["image_00000.png", "image_00001.png", "image_00002.png",
                                                     "image_00003.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_output_writability_checked_before_the_work(base, tmp_path, sample_images):
    np.save(tmp_path / "x.npy", (sample_images[:200] >= 128).astype(np.uint8))
    (tmp_path / "file").write_text("")
    res = run_capped(["encode", tmp_path / "x.npy", "-o", tmp_path / "file" / "x.vae"])
    check(res, "is not a folder", "encode into a path under a regular file")
    assert res.cpu_seconds < 2.0     # refused before reading the images and encoding them
    check(decode(craft(base, tmp_path / "ok.vae"), tmp_path / "file" / "out"), "is not a folder",
          "decode into a path under a regular file")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signals_clean_up_like_ctrl_c(tmp_path, sample_images, sig):
    """A signal while decode writes PNGs: exit 128+sig, one line, no temp folder, no output."""
    model, config, _ = load_model("mnist-bin")
    px = (sample_images[:1000] >= 128).astype(np.uint8)
    data, _ = compress(model, "mnist-bin", config["weights_sha256"], px, n_chains=50, with_neg_elbo=False)
    (tmp_path / "m.vae").write_bytes(data)
    out = tmp_path / "out"

    def send_when_writing():
        def watch():
            deadline = time.monotonic() + 50
            while time.monotonic() < deadline:
                tmps = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
                if tmps and len(list(tmps[0].iterdir())) > 20:
                    os.kill(os.getpid(), sig)
                    return
                time.sleep(0.002)
        threading.Thread(target=watch, daemon=True).start()

    res = run_capped(["decode", tmp_path / "m.vae", "-o", out], before=send_when_writing)
    lines = res.error_lines()
    assert res.rc == 128 + sig, res.stderr
    assert len(lines) == 1 and f"terminated by {signal.Signals(sig).name}" in lines[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.vae"]


# ----------------------------------------------------------------------------- 5. models


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "model"
    save_checkpoint(d, random_model("mlp-bbans-bin", hidden=(16,), latent_dim=4), {"dataset": "mnist-bin"})
    return d


def _edit_config(d: Path, text: str | None = None, **model_fields):
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"].update(model_fields)
    (d / "config.json").write_text(text if text is not None else json.dumps(cfg))


def _edit_weights(d: Path, fn):
    state = load_file(str(d / WEIGHTS))
    fn(state)
    save_file(state, str(d / WEIGHTS))
    cfg = json.loads((d / "config.json").read_text())
    cfg["weights_sha256"] = sha256_file(d / WEIGHTS)
    (d / "config.json").write_text(json.dumps(cfg))


def _encode_with(d: Path, tmp_path: Path, sample_images):
    np.save(tmp_path / "x.npy", (sample_images[:2] >= 128).astype(np.uint8))
    return run_capped(["encode", tmp_path / "x.npy", "-o", tmp_path / "x.vae", "--model", d])


@pytest.mark.parametrize("case, edit, fragment", [
    ("deeply nested config.json", lambda d: _edit_config(d, '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     "nested"),
    ("huge integer in config.json", lambda d: _edit_config(d, '{"format": "vaecompress-checkpoint/1", "x": ' +
                                                             "9" * 5000 + "}"), "integer of 5000 digits"),
    ("NaN in config.json", lambda d: _edit_config(d, '{"format": "vaecompress-checkpoint/1", "x": NaN}'),
     "NaN is not allowed"),
    ("hidden [1e9]", lambda d: _edit_config(d, hidden=[1e9]), "hidden must be a list"),
    ("hidden [500.7]", lambda d: _edit_config(d, hidden=[500.7]), "hidden must be a list"),
    ("hidden [300000]", lambda d: _edit_config(d, hidden=[300_000]), "parameters, more than the limit"),
    ("latent_dim true", lambda d: _edit_config(d, latent_dim=True), "latent_dim must be an integer"),
    ("latent_dim '4'", lambda d: _edit_config(d, latent_dim="4"), "latent_dim must be an integer"),
    ("NaN weights", lambda d: _edit_weights(d, lambda s: s["decoder.0.weight"].__setitem__((0, 0), float("nan"))),
     "NaN or infinite"),
    ("Inf weights", lambda d: _edit_weights(d, lambda s: s["encoder.0.bias"].__setitem__(0, float("inf"))),
     "NaN or infinite"),
    ("weights of another shape", lambda d: _edit_weights(d, lambda s: s.__setitem__("encoder.0.bias", torch.zeros(17))),
     "the config needs F32 (16,)"),
    ("float64 weights", lambda d: _edit_weights(d, lambda s: s.__setitem__("encoder.0.bias", s["encoder.0.bias"].double())),
     "needs F32"),
    ("a missing tensor", lambda d: _edit_weights(d, lambda s: s.pop("encoder.0.bias")), "does not fit its config"),
])
def test_tampered_model_dirs(model_dir, tmp_path, sample_images, case, edit, fragment):
    edit(model_dir)
    check(_encode_with(model_dir, tmp_path, sample_images), fragment, f"model: {case}")


def test_oversized_weights_file_not_read(model_dir, tmp_path, sample_images):
    with open(model_dir / WEIGHTS, "r+b") as f:
        f.truncate(1 << 33)
    check(_encode_with(model_dir, tmp_path, sample_images), "larger than", "model: 8 GiB sparse weights file")


def test_decode_never_loads_a_model_from_a_path_in_the_file(base, tmp_path, model_dir, sample_images):
    """A version-1 file names an absolute model folder: without --model or $VAECOMPRESS_MODELS it is
    not loaded, and the error is the same whether or not the folder exists."""
    model, config, _ = load_model(str(model_dir))
    px = (sample_images[:3] >= 128).astype(np.uint8)
    data, _ = compress(model, "x", config["weights_sha256"], px, with_neg_elbo=False)
    h, chains = C.unpack(data)
    msgs = []
    for name in (str(model_dir), str(tmp_path / "nonexistent")):
        v1 = tmp_path / "v1.vae"
        v1.write_bytes(pack_v1(dataclasses.replace(h, model_name=name, model_sha256=bytes.fromhex(config["weights_sha256"])[:16],
                                                   torch_version=torch.__version__,
                                                   pixels_sha256=C.pixels_digest(px, 16)), chains))
        res = decode(v1, tmp_path / "o", env={"VAECOMPRESS_MODELS": None})
        check(res, "neither a bundled model nor a checkpoint under $VAECOMPRESS_MODELS", "v1 file naming a model path")
        msgs.append(res.error_lines()[0].replace(name, "PATH"))
    assert msgs[0] == msgs[1]
    res = decode(v1, tmp_path / "o", "--format", "npy", env={"VAECOMPRESS_MODELS": str(tmp_path)})
    check_ok(res, "v1 file, model found in $VAECOMPRESS_MODELS")
    assert np.array_equal(np.load(tmp_path / "o" / "images.npy"), px)


# ----------------------------------------------------------------------------- 6. display, names


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\r\nfake: line\u2028\u202e\x85"


def test_header_strings_are_escaped_for_display(base, tmp_path):
    h = dataclasses.replace(base.header, model_name="m" + ESCAPES, engine="constriction" + ESCAPES,
                            torch_version="2" + ESCAPES, model_sha256=b"\x01" * 16)
    (tmp_path / "v1.vae").write_bytes(pack_v1(h, base.chains))
    res = run_capped(["info", tmp_path / "v1.vae"])
    assert res.rc == 0, res.stderr
    for bad in ("\x1b", "\x07", "\r", "\u2028", "\u202e", "\x85"):
        assert bad not in res.stdout + res.stderr
    assert "\\x1b]0;pwned\\x07" in res.stdout
    res = decode(tmp_path / "v1.vae", tmp_path / "o", env={"VAECOMPRESS_MODELS": None})
    check(res, "named 'm\\x1b]0;pwned", "decode: escapes in a v1 model name")
    assert "\x1b" not in res.stderr


@pytest.mark.parametrize("bad", ["a\u202ebc", "x\u2028y", "n\x85", "../up", ".hidden", "a/b", "-rf", "tab\t"])
def test_unsafe_names_refused_in_files(base, tmp_path, bad):
    names = [bad, "b", "c", "d"]
    f = craft(base, tmp_path / "n.vae", names=names, names_stem=None)
    check(run_capped(["info", f]), "is not allowed", f"name {bad!r} in a v2 header")
    h = dataclasses.replace(base.header, names=names, names_stem=None, model_sha256=bytes.fromhex(base.sha)[:16])
    (tmp_path / "v1.vae").write_bytes(pack_v1(h, base.chains))
    check(decode(tmp_path / "v1.vae", tmp_path / "o"), "is not allowed", f"name {bad!r} in a v1 header")


def test_names_are_covered_by_the_checksum(base, tmp_path):
    f = craft(base, tmp_path / "n.vae", names=["alpha", "beta", "gamma", "delta"], names_stem=None)
    data = bytearray(f.read_bytes())
    i = bytes(data).index(b"gamma")
    data[i] ^= 0x02                      # "gamma" -> "eamma": still a safe name
    f.write_bytes(bytes(data))
    check(decode(f, tmp_path / "o"), "header or payload checksum mismatch", "a bit flipped in an image name")


def test_encoder_makes_input_names_safe(tmp_path, sample_images):
    from PIL import Image
    d = tmp_path / "in"
    d.mkdir()
    for i, n in enumerate(["evil\u202egnp", "line\u2028sep", "ok name"]):
        Image.fromarray(((sample_images[i] >= 128) * 255).astype(np.uint8)).save(d / f"{n}.png")
    res = run_capped(["encode", d, "-o", tmp_path / "x.vae"])
    assert res.rc == 0, res.stderr
    h, _ = C.unpack((tmp_path / "x.vae").read_bytes())
    assert sorted(h.names) == ["evil_gnp", "line_sep", "ok name"]


# ----------------------------------------------------------------------------- 7. messages


def test_float32_file_from_another_machine(base, tmp_path):
    model, config, _ = load_model("mnist-bin")
    px = base.pixels
    data, _ = compress(model, "mnist-bin", config["weights_sha256"], px, n_chains=2, with_neg_elbo=False,
                       coder_path="float32")
    h, chains = C.unpack(data)
    chains = [np.array(c) for c in chains]
    chains[0][0] ^= np.uint32(1 << 7)         # what other kernels do: different numbers, same bits
    other = dataclasses.replace(h, machine=h.machine ^ 1)
    (tmp_path / "f.vae").write_bytes(C.pack(other, chains))
    check(decode(tmp_path / "f.vae", tmp_path / "o"), "encoded on the float32 path on another machine configuration: "
          "decode it there, or re-encode with the default exact path", "float32 file from another machine")
    (tmp_path / "g.vae").write_bytes(C.pack(h, chains))
    res = decode(tmp_path / "g.vae", tmp_path / "o")
    check(res, "corrupt", "float32 file, same machine, corrupt payload")
    assert "another machine" not in res.stderr


def test_version_1_files_still_decode(tmp_path):
    """Files written before the version-2 container (tests/data, made by the old writer)."""
    meta = json.loads((FIXTURES / "v1-files.json").read_text())
    for fn, m in meta.items():
        out = tmp_path / fn
        res = decode(FIXTURES / fn, out, "--format", "npy")
        check_ok(res, f"version-1 file {fn}")
        import hashlib
        got = np.load(out / "images.npy")
        assert hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest() == m["pixels_sha256"]


def test_version_1_random_payload_refused_unless_trusted(base, tmp_path):
    """A version-1 file has no block checksums: 32,001 images declared on random words would decode
    for minutes before its final checksum fails, so decode refuses it up front unless --trust-v1."""
    h = dataclasses.replace(base.header, model_name="mnist-bin-ctx", model_sha256=bytes.fromhex(base.sha)[:16],
                            engine=C.ENGINES[0], torch_version=torch.__version__, n_images=32_001, plain_images=[0],
                            names=None, names_stem="image", pixels_sha256=bytes(16))
    f = tmp_path / "v1.vae"
    f.write_bytes(pack_v1(h, [random_words(1000)]))
    check(decode(f, tmp_path / "o"), "--trust-v1", "version-1 file, 32,001 images on random words")


def test_zz_report(capsys, request):
    """Print the measured cases with `-s` (the table in benchmarks/results/fuzz/ comes from it)."""
    if request.config.getoption("capture") != "no":
        return
    with capsys.disabled():
        for r in RESULTS:
            print(f"\n{r['case'][:60]:<60} cpu {r['cpu_s']:5.2f} s  +{r['extra_mib']:4d} MiB  rc {r['rc']:3d}  "
                  f"{r['error'][:90]}", end="")
        print()


@pytest.mark.slow
def test_float32_file_encoded_under_other_cpu_kernels(tmp_path, sample_images):
    """A real float32-path file from another kernel set (ATEN_CPU_CAPABILITY=default in the
    encoder): this machine decodes it exactly or says where to decode it; never 'corrupt'."""
    import subprocess
    import sys
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this machine runs the default kernels already")
    np.save(tmp_path / "x.npy", sample_images[:40])
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "vaecompress_cli.main", "encode", str(tmp_path / "x.npy"), "-o",
                    str(tmp_path / "f.vae"), "--model", "mnist-ctx", "--coder-path", "float32", "-q"],
                   env=env, check=True, capture_output=True)
    res = decode(tmp_path / "f.vae", tmp_path / "o", "--format", "npy")
    if res.rc == 0:
        assert np.array_equal(np.load(tmp_path / "o" / "images.npy"), sample_images[:40])
    else:
        check(res, "encoded on the float32 path on another machine configuration", "float32 file, other CPU kernels")
