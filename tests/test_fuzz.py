"""Fuzzing the .vae reader and decoder with mutated valid containers (hypothesis).

Every mutated file must end in a clean `VaeCompressError` or in a decode whose pixels equal the
original exactly: never another exception, a hang, a wrong image, or a large allocation. Each
case runs in a forked child (tests/capped.py's approach) so its CPU time and peak memory are
measured and capped on their own: at most CASE_CPU_SECONDS of CPU and CASE_EXTRA_BYTES above
the inherited baseline; a child still running after CASE_WALL_SECONDS is a hang.

Mutations: truncation, bit flips, byte overwrites/insertions/deletions, huge varints spliced into
the header, wrong versions and header lengths; header-aware edits of one field's bytes (the
field spans come from the real reader) to boundary values, with the header length and CRC made
consistent again so the edit reaches validation and decoding; header fields rewritten through
the real writer (counts, sizes, shapes, coder path, latent bits, refinement, plain images,
names, chain splits, the model and pixel digests, block checksums); and corrupt ANS words in
files whose CRC and counts are made consistent again (so the ANS decoder itself is attacked).
Bases: version-2 files of two small random models (binary/8-bit, exact/float32, refinement,
explicit names, several checked blocks) and a version-1 file of a bundled model.

The fast subset (200 cases) runs by default; `-m slow` runs 10,000 and, with
FUZZ_REPORT_DIR set, writes results.json and README.md there (benchmarks/results/fuzz/).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import platform
import re
import resource
import signal
import struct
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bbans_vae import container as C
from bbans_vae.container import CODER_PATHS, PIXEL_KINDS, pack, unpack
from bbans_vae.errors import VaeCompressError
from bbans_vae.pipeline import compress, decompress
from tests.capped import status_kb
from tests.conftest import random_model

SHA = "ab" * 32
CASE_CPU_SECONDS = 5.0
CASE_WALL_SECONDS = 60
CASE_EXTRA_BYTES = 500 << 20
FIXTURES = Path(__file__).resolve().parent / "data"
RESULTS: list[dict] = []


@dataclasses.dataclass
class Base:
    name: str
    data: bytes
    pixels: np.ndarray
    model: object
    sha: str = SHA


@functools.lru_cache(maxsize=1)
def bases() -> tuple[Base, ...]:
    from bbans_vae.checkpoint import load_model
    from bbans_vae.data import sample_images
    imgs = sample_images()
    binm = random_model("mlp-bbans-bin", seed=3, hidden=(16,), latent_dim=4)
    gray = random_model("mlp-bbans-8bit", seed=3, hidden=(16,), latent_dim=4)
    b = (imgs[:12] >= 128).astype(np.uint8)
    out = []
    for name, model, px, kw in [
        ("bin-float-255", binm, b[:10] * 255, {"n_chains": 3}),
        ("bin-exact-names", binm, b[:7], {"n_chains": 2, "coder_path": "exact", "names": [f"d{i}" for i in range(7)]}),
        ("8bit-exact", gray, imgs[20:25], {"n_chains": 2, "coder_path": "exact", "latent_bits": 6}),
        ("8bit-float-1chain", gray, imgs[30:34], {"n_chains": 1}),
        ("bin-float-refine", binm, b[:6], {"n_chains": 2, "refine_steps": 2, "names_stem": "r"}),
        ("8bit-exact-blocks", gray, imgs[100:300], {"n_chains": 2, "coder_path": "exact"}),
    ]:
        data, _ = compress(model, name, SHA, px, with_neg_elbo=False, **kw)
        out.append(Base(name, data, px, model))
    meta = json.loads((FIXTURES / "v1-files.json").read_text())["v1-mnist-bin-exact.vae"]
    model, config, _ = load_model(meta["model"])
    v1 = (FIXTURES / "v1-mnist-bin-exact.vae").read_bytes()
    out.append(Base("v1-mnist-bin", v1, (imgs[:10] >= 128).astype(np.uint8) * 255, model, config["weights_sha256"]))
    return tuple(out)


# ----------------------------------------------------------------------------- mutations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _at(data: bytes, frac: float) -> int:
    return min(len(data), int(frac * len(data)))


def _header_len_span(data: bytes) -> tuple[int, int]:
    pos = 5
    while pos < len(data) and data[pos] & 0x80:
        pos += 1
    return 5, min(len(data), pos + 1)


class _SpanReader(C._Reader):
    """The real reader, recording the byte span of every primitive field it reads."""

    def __init__(self, data: bytes, what: str):
        super().__init__(data, what)
        self.spans: list[tuple[int, int]] = []
        self.depth = 0

    def take(self, n: int) -> bytes:
        start = self.pos
        b = super().take(n)
        if not self.depth:
            self.spans.append((start, self.pos))
        return b

    def varint(self, limit: int, field_name: str, low: int = 0) -> int:
        start = self.pos
        self.depth += 1
        try:
            return super().varint(limit, field_name, low)
        finally:
            self.depth -= 1
            self.spans.append((start, self.pos))


def field_spans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(header start, spans relative to it) of a file the reader accepts; ([], ) otherwise."""
    try:
        version, hlen, start = C._prefix(data)
        r = _SpanReader(data[start:start + hlen], "header")
        (C._parse_v2 if version == 2 else C._parse_v1)(r)
        return start, r.spans
    except (VaeCompressError, IndexError):
        return 0, []


def fix_lengths(data: bytes, old_hlen_end: int, header_delta: int) -> bytes:
    """Rewrite the header length after the header grew by `header_delta` and recompute the
    version-2 CRC (the last 4 header bytes), so a field edit reaches validation."""
    try:
        version, hlen, start = C._prefix(data[:old_hlen_end + 10])
    except VaeCompressError:
        return data
    new_hlen = max(0, hlen + header_delta)
    out = data[:5] + _varint(new_hlen) + data[start:]
    end = 5 + len(_varint(new_hlen)) + new_hlen
    if version == 2 and 4 <= new_hlen and end <= len(out):
        crc = zlib.crc32(out[end:], zlib.crc32(out[:end - 4]))
        out = out[:end - 4] + struct.pack("<I", crc) + out[end:]
    return out


BOUNDARY = [0, 1, 2, 3, 4, 13, 14, 15, 16, 127, 128, 255, 256, 1000, 1001, 4095, 4096, 4097, 10_000, 1 << 20,
            (1 << 24) + 1, 1 << 32, (1 << 63) - 1, 1 << 70]


def _edit_span(data: bytes, frac: float, how: str, value: int, fix: bool) -> bytes:
    start, spans = field_spans(data)
    if not spans:
        return data
    a, b = spans[min(len(spans) - 1, int(frac * len(spans)))]
    a, b = start + a, start + b
    if how == "varint":
        new = _varint(BOUNDARY[value % len(BOUNDARY)])
    elif how == "bytes":
        new = bytes((value >> (8 * i)) & 0xFF for i in range(b - a))
    elif how == "delete":
        new = b""
    else:  # duplicate
        new = data[a:b] * 2
    out = data[:a] + new + data[b:]
    return fix_lengths(out, start, len(new) - (b - a)) if fix else out


def _rewrite_field(data: bytes, field: str, value, base: Base) -> bytes:
    """Rewrite one header field through the real writer (skipped if the file no longer parses
    or the writer cannot express the value); block checksums are recomputed for the new layout
    (real digests of the original pixels where they exist, so decoding reaches them)."""
    try:
        header, chains = unpack(data)
    except VaeCompressError:
        return data
    if field == "chains":                       # regroup the same words into other chains
        words = np.concatenate(chains) if chains else np.zeros(0, np.uint32)
        cuts = sorted(min(len(words), c) for c in value)
        chains = np.split(words, cuts)
        header = dataclasses.replace(header, chain_words=[len(c) for c in chains])
    elif field == "shapes":
        header = dataclasses.replace(header, shapes=value, n_images=sum(r[0] for r in value) if value else header.n_images)
    elif field in {f.name for f in dataclasses.fields(header)}:
        if field == "plain_images":
            value = sorted(set(value))
        header = dataclasses.replace(header, **{field: value})
    else:
        return data
    try:
        ranges = C.block_ranges(header.n_images, header.n_chains, header.refine_steps)
        px = base.pixels
        checks = b""
        if len(ranges) > 1 and field != "block_checks":
            checks = b"".join(C.pixels_digest(px[lo:hi], 2) if hi <= len(px) else b"\xa5\x5a" for lo, hi in ranges)
        header = dataclasses.replace(header, block_checks=header.block_checks if field == "block_checks" else checks)
        return pack(header, chains)
    except (ValueError, TypeError, IndexError, OverflowError, struct.error, ZeroDivisionError):
        return data


def _rewrite_words(data: bytes, kind: str, frac: float, value: int) -> bytes:
    """Corrupt the ANS payload but keep the file self-consistent (CRC and word counts are
    recomputed by the writer), so the ANS decoder itself sees the bad words."""
    try:
        header, chains = unpack(data)
    except VaeCompressError:
        return data
    chains = [np.array(c, dtype=np.uint32) for c in chains]
    c = min(len(chains) - 1, int(frac * len(chains)))
    w = chains[c]
    if kind == "flip" and len(w):
        i = min(len(w) - 1, int(frac * 7919) % len(w))
        w[i] ^= np.uint32(1 << (value % 32))
    elif kind == "set" and len(w):
        w[int(frac * 7919) % len(w)] = np.uint32(value % 2 ** 32)
    elif kind == "drop":
        chains[c] = w[:max(0, len(w) - 1 - value % 4)]
    elif kind == "append":
        chains[c] = np.append(w, np.uint32(value % 2 ** 32))
    elif kind == "zero_last" and len(w):
        w[-1] = 0
    elif kind == "swap" and len(chains) > 1:
        chains[0], chains[-1] = chains[-1], chains[0]
    header = dataclasses.replace(header, chain_words=[len(x) for x in chains])
    try:
        return pack(header, chains)
    except (ValueError, TypeError, IndexError, OverflowError):
        return data


SAFE_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
FIELDS = st.one_of(
    st.tuples(st.just("n_images"), st.one_of(st.integers(0, 64), st.integers(0, 2 ** 40))),
    st.tuples(st.just("height"), st.one_of(st.integers(0, 40), st.integers(0, 2 ** 20))),
    st.tuples(st.just("width"), st.one_of(st.integers(0, 40), st.integers(0, 2 ** 20))),
    st.tuples(st.just("channels"), st.integers(0, 6)),
    st.tuples(st.just("shapes"), st.one_of(st.none(), st.lists(
        st.tuples(st.integers(1, 8), st.sampled_from([27, 28, 29]), st.sampled_from([28, 1]), st.integers(1, 2)),
        min_size=1, max_size=3))),
    st.tuples(st.just("latent_bits"), st.integers(0, 255)),
    st.tuples(st.just("refine_steps"), st.one_of(st.integers(0, 3), st.integers(0, 20_000))),
    st.tuples(st.just("refine_lr_e4"), st.integers(0, 200_000)),
    st.tuples(st.just("binary_scale"), st.sampled_from([0, 1, 2, 255])),
    st.tuples(st.just("pixel_kind"), st.sampled_from(PIXEL_KINDS)),
    st.tuples(st.just("coder_path"), st.sampled_from(CODER_PATHS)),
    st.tuples(st.just("machine"), st.integers(0, 2 ** 32 - 1)),
    st.tuples(st.just("plain_images"), st.lists(st.integers(0, 40), max_size=12)),
    st.tuples(st.just("names"), st.one_of(st.none(), st.lists(SAFE_TEXT, max_size=20))),
    st.tuples(st.just("names_stem"), SAFE_TEXT),
    st.tuples(st.just("engine"), st.sampled_from(["constriction 0.5.0", "constriction 0.4.0"])),
    st.tuples(st.just("model_sha256"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("pixels_sha256"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("block_checks"), st.binary(max_size=16)),
    st.tuples(st.just("chains"), st.lists(st.integers(0, 400), max_size=8)),
)

OPS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 16)),
    st.tuples(st.just("huge"), st.floats(0, 0.5), st.integers(7, 70)),
    st.tuples(st.just("version"), st.integers(0, 255)),
    st.tuples(st.just("header_len"), st.one_of(st.integers(0, 400), st.integers(0, 2 ** 64))),
    st.tuples(st.just("span"), st.floats(0, 1), st.sampled_from(["varint", "bytes", "delete", "duplicate"]),
              st.integers(0, 2 ** 32), st.booleans()),
    st.tuples(st.just("span"), st.floats(0, 1), st.just("varint"), st.integers(0, 2 ** 32), st.just(True)),
    st.tuples(st.just("field"), FIELDS),
    st.tuples(st.just("field"), FIELDS),
    st.tuples(st.just("words"), st.sampled_from(["flip", "set", "drop", "append", "zero_last", "swap"]),
              st.floats(0, 1), st.integers(0, 2 ** 32 - 1)),
    st.tuples(st.just("words"), st.sampled_from(["flip", "set", "drop", "append"]),
              st.floats(0, 1), st.integers(0, 2 ** 32 - 1)),
)


def mutate(data: bytes, op, base: Base) -> bytes:
    kind = op[0]
    if kind == "truncate":
        return data[:_at(data, op[1])]
    if kind in ("flip", "set"):
        if not data:
            return data
        i = min(len(data) - 1, _at(data, op[1]))
        v = data[i] ^ (1 << op[2]) if kind == "flip" else op[2]
        return data[:i] + bytes([v]) + data[i + 1:]
    if kind == "insert":
        i = _at(data, op[1])
        return data[:i] + op[2] + data[i:]
    if kind == "delete":
        i = _at(data, op[1])
        return data[:i] + data[i + op[2]:]
    if kind == "huge":                         # a huge varint where a count or size may be
        i = min(len(data), 5 + _at(data[5:], op[1]))
        return data[:i] + _varint((1 << op[2]) - 1) + data[i + 1:]
    if kind == "version":
        return data[:4] + bytes([op[1]]) + data[5:] if len(data) > 4 else data
    if kind == "header_len":
        a, b = _header_len_span(data)
        return data[:a] + _varint(op[1]) + data[b:]
    if kind == "span":
        return _edit_span(data, *op[1:])
    if kind == "field":
        return _rewrite_field(data, *op[1], base)
    if kind == "words":
        return _rewrite_words(data, *op[1:])
    raise AssertionError(kind)


# ----------------------------------------------------------------------------- the oracle


def outcome_group(e: Exception) -> str:
    """An error grouped by its message's first words (numbers, quoted names and paths elided)."""
    text = re.sub(r"'[^']*'", "'...'", str(e))
    words = re.sub(r"\d+", "N", text).split()[:6]
    return f"{type(e).__name__}: {' '.join(words)}"


def _outcome(data: bytes, base: Base) -> str:
    """In the child: a clean error (grouped by the message's first words) or exact pixels."""
    try:
        pixels, header, _ = decompress(data, base.model, base.sha, max_memory=1 << 30)
    except VaeCompressError as e:
        return outcome_group(e)
    except BaseException as e:  # noqa: BLE001
        return f"CRASH {type(e).__name__}: {str(e)[:200]} | {traceback.format_exc(limit=3)[-600:]}"
    if pixels.shape != base.pixels.shape or not np.array_equal(pixels, base.pixels):
        return "WRONG PIXELS"
    return "decoded exactly" if data == base.data else "decoded exactly (mutated file)"


def decode_capped(data: bytes, base: Base) -> dict:
    """Decode in a forked child; outcome, CPU seconds, wall seconds, extra peak RSS."""
    rd, wr = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            start = status_kb("VmRSS") * 1024
            resource.setrlimit(resource.RLIMIT_AS, (status_kb("VmSize") * 1024 + (2 << 30), resource.RLIM_INFINITY))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(CASE_WALL_SECONDS)
            out = _outcome(data, base)
            os.write(wr, json.dumps({"outcome": out, "start": start}).encode())
        finally:
            os._exit(0)
    os.close(wr)
    chunks = []
    while True:
        b = os.read(rd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(rd)
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    try:
        msg = json.loads(b"".join(chunks))
    except ValueError:
        sig = -os.waitstatus_to_exitcode(status)
        msg = {"outcome": "HANG (killed by the wall-clock alarm)" if sig == signal.SIGALRM
               else f"CRASH (child died, status {status})", "start": ru.ru_maxrss * 1024}
    return {"outcome": msg["outcome"], "cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": wall,
            "extra_bytes": max(0, ru.ru_maxrss * 1024 - msg["start"]), "base": base.name, "bytes": len(data)}


def check_case(data: bytes, base: Base) -> dict:
    r = decode_capped(data, base)
    RESULTS.append(r)
    progress = os.environ.get("FUZZ_PROGRESS")          # a file: one line per 100 cases
    if progress and len(RESULTS) % 100 == 0:
        with open(progress, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {len(RESULTS)} cases, worst CPU "
                    f"{max(x['cpu_s'] for x in RESULTS):.2f} s, worst extra "
                    f"{max(x['extra_bytes'] for x in RESULTS) / 2**20:.0f} MiB\n")
    assert not r["outcome"].startswith(("CRASH", "HANG", "WRONG")), r
    assert r["cpu_s"] < CASE_CPU_SECONDS, r
    assert r["extra_bytes"] < CASE_EXTRA_BYTES, r
    return r


def test_bases_decode():
    for base in bases():
        assert check_case(base.data, base)["outcome"] == "decoded exactly", base.name


CASE = st.tuples(st.integers(0, 6), st.lists(OPS, min_size=1, max_size=3))


def _run(case):
    which, ops = case
    base = bases()[which]
    data = base.data
    for op in ops:
        data = mutate(data, op, base)
    check_case(data, base)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(CASE)
def test_mutated_containers_fast(case):
    _run(case)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(CASE)
def test_mutated_containers_many(case):
    _run(case)


@pytest.mark.slow
def test_report_outcomes(capsys):
    """Runs after the slow fuzz test in file order: print (and with FUZZ_REPORT_DIR, write) what
    the cases ended in, their peak memory and worst time."""
    rep = summarize(RESULTS)
    with capsys.disabled():
        print(f"\nfuzz: {rep['cases']} decodes, worst CPU {rep['worst_cpu_s']:.2f} s, "
              f"worst extra RSS {rep['worst_extra_mib']:.0f} MiB")
        for k, v in rep["outcomes"].items():
            print(f"  {v:6d}  {k}")
    out = os.environ.get("FUZZ_REPORT_DIR")
    if out:
        write_report(rep, Path(out))


def summarize(results: list[dict]) -> dict:
    import torch
    outcomes = collections.Counter(r["outcome"] for r in results)
    worst_cpu = max(results, key=lambda r: r["cpu_s"])
    worst_mem = max(results, key=lambda r: r["extra_bytes"])
    per_base = {}
    for r in results:
        b = per_base.setdefault(r["base"], {"cases": 0, "worst_cpu_s": 0.0, "worst_extra_mib": 0.0})
        b["cases"] += 1
        b["worst_cpu_s"] = max(b["worst_cpu_s"], r["cpu_s"])
        b["worst_extra_mib"] = max(b["worst_extra_mib"], r["extra_bytes"] / 2**20)
    bad = sum(v for k, v in outcomes.items() if k.startswith(("CRASH", "HANG", "WRONG")))
    return {
        "cases": len(results), "crashes_hangs_wrong": bad,
        "crashes": sum(v for k, v in outcomes.items() if k.startswith("CRASH")),
        "hangs": sum(v for k, v in outcomes.items() if k.startswith("HANG")),
        "wrong_outputs": outcomes.get("WRONG PIXELS", 0),
        "worst_cpu_s": worst_cpu["cpu_s"], "worst_cpu_case": {k: worst_cpu[k] for k in ("outcome", "base", "bytes")},
        "worst_extra_mib": worst_mem["extra_bytes"] / 2**20,
        "worst_mem_case": {k: worst_mem[k] for k in ("outcome", "base", "bytes")},
        "mean_cpu_s": sum(r["cpu_s"] for r in results) / len(results),
        "total_cpu_s": sum(r["cpu_s"] for r in results),
        "limits": {"cpu_s": CASE_CPU_SECONDS, "wall_s": CASE_WALL_SECONDS, "extra_mib": CASE_EXTRA_BYTES >> 20},
        "per_base": per_base,
        "outcomes": dict(outcomes.most_common()),
        "command": "FUZZ_REPORT_DIR=benchmarks/results/fuzz OMP_NUM_THREADS=1 python -m pytest -q -m slow "
                   "tests/test_fuzz.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "constriction": C.ENGINES[-1], "container": C.VERSION},
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "threads": os.environ.get("OMP_NUM_THREADS")},
    }


def write_report(rep: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rep, indent=2) + "\n")
    lines = [
        "# Fuzz run of the .vae reader and decoder (#15)", "",
        f"Command: `{rep['command']}`  ",
        f"Machine: {rep['machine']['cores']} cores, {rep['machine']['platform']}, OMP_NUM_THREADS="
        f"{rep['machine']['threads']}; versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()), "",
        "Each case mutates one of the base files (tests/test_fuzz.py: byte edits, header-aware field edits with "
        "the header length and CRC made consistent, fields rewritten through the writer, corrupt ANS words) and "
        "decodes it in a forked child; the limits per case are "
        f"{rep['limits']['cpu_s']} s CPU, {rep['limits']['extra_mib']} MiB above the inherited baseline "
        f"(python + torch + harness), {rep['limits']['wall_s']} s wall.", "",
        f"**{rep['cases']} cases: {rep['crashes']} crashes, {rep['hangs']} hangs, {rep['wrong_outputs']} wrong "
        f"outputs.** Worst CPU time {rep['worst_cpu_s']:.2f} s ({rep['worst_cpu_case']['outcome']}); "
        f"peak memory above baseline {rep['worst_extra_mib']:.0f} MiB ({rep['worst_mem_case']['outcome']}); "
        f"mean {rep['mean_cpu_s'] * 1000:.0f} ms CPU per case, {rep['total_cpu_s'] / 60:.1f} CPU minutes in all.", "",
        "| base file | cases | worst CPU s | worst extra MiB |", "|---|---:|---:|---:|",
        *(f"| {k} | {v['cases']} | {v['worst_cpu_s']:.2f} | {v['worst_extra_mib']:.0f} |"
          for k, v in rep["per_base"].items()), "",
        "| outcome | cases |", "|---|---:|",
        *(f"| {k.replace('|', '/')} | {v} |" for k, v in rep["outcomes"].items()), "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def test_huge_tables_are_refused():
    """A header that asks for 300 chains x 2^14 buckets (1.2 GiB per round) is refused up front,
    and latent bits outside the encoder's range are refused by the reader."""
    from bbans_vae.data import sample_images
    from bbans_vae.errors import ContainerError
    model = random_model("mlp-bin", seed=0)
    x = (sample_images()[:300] >= 128).astype(np.uint8)
    data, _ = compress(model, "m", SHA, x, n_chains=300, with_neg_elbo=False, coder_path="float32")
    header, chains = unpack(data)
    with pytest.raises(ContainerError, match="memory"):
        decompress(pack(dataclasses.replace(header, latent_bits=14), chains), model, SHA)
    with pytest.raises(VaeCompressError, match="memory"):
        compress(model, "m", SHA, x, n_chains=300, latent_bits=14, with_neg_elbo=False)
    with pytest.raises(ContainerError, match="latent bits 16 outside 4..14"):
        decompress(pack(dataclasses.replace(header, latent_bits=16), chains), model, SHA)
