"""Fuzzing the .vae reader and decoder with mutated valid containers (hypothesis).

Every mutated file must end in a clean `VaeCompressError` or in a decode whose pixels equal the
original exactly: never another exception, a hang, or a huge allocation. Mutations: truncation,
bit flips, byte overwrites/insertions/deletions, huge varints spliced into the header, wrong
versions and header lengths, header fields rewritten through the real writer (counts, sizes,
coder path, latent bits, plain images, names, chain splits), and corrupt ANS words in files
whose CRC and counts are made consistent again (so the ANS decoder itself is attacked). The fast subset (200 cases) runs
by default; `-m slow` runs 10,000 and prints the outcome distribution.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import re
import signal
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bbans_vae.pipeline import compress, decompress
from bbans_vae.container import CODER_PATHS, PIXEL_KINDS, pack, unpack
from bbans_vae.errors import VaeCompressError
from tests.conftest import random_model

SHA = "ab" * 32
CASE_SECONDS = 120                # a case running longer is a hang (the slowest legal case,
                                  # n_images at its bound of 32 per payload word, takes ~10-30 s)
MAX_TRACED_BYTES = 256 << 20      # numpy allocations per case (tracemalloc sees them)
OUTCOMES: collections.Counter = collections.Counter()


@dataclasses.dataclass
class Base:
    name: str
    data: bytes
    pixels: np.ndarray
    model: object


@functools.lru_cache(maxsize=1)
def bases() -> tuple[Base, ...]:
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
    ]:
        data, _ = compress(model, name, SHA, px, with_neg_elbo=False, **kw)
        out.append(Base(name, data, px, model))
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


def _rewrite_field(data: bytes, field: str, value) -> bytes:
    """Rewrite one header field through the real writer (skipped if the file no longer parses
    or the writer cannot express the value)."""
    try:
        header, chains = unpack(data)
    except VaeCompressError:
        return data
    if field == "chains":                       # regroup the same words into other chains
        words = np.concatenate(chains) if chains else np.zeros(0, np.uint32)
        cuts = sorted(min(len(words), c) for c in value)
        chains = np.split(words, cuts)
        header = dataclasses.replace(header, chain_words=[len(c) for c in chains])
    elif field in {f.name for f in dataclasses.fields(header)}:
        if field == "plain_images":
            value = sorted(set(value))
        header = dataclasses.replace(header, **{field: value})
    else:
        return data
    try:
        return pack(header, chains)
    except (ValueError, TypeError, IndexError, OverflowError, struct_error()):
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


def struct_error():
    import struct
    return struct.error


FIELDS = st.one_of(
    st.tuples(st.just("n_images"), st.one_of(st.integers(0, 64), st.integers(0, 2 ** 40))),
    st.tuples(st.just("height"), st.one_of(st.integers(0, 40), st.integers(0, 2 ** 20))),
    st.tuples(st.just("width"), st.one_of(st.integers(0, 40), st.integers(0, 2 ** 20))),
    st.tuples(st.just("latent_bits"), st.integers(0, 255)),
    st.tuples(st.just("refine_steps"), st.integers(0, 20_000)),
    st.tuples(st.just("refine_lr_e4"), st.integers(0, 200_000)),
    st.tuples(st.just("binary_scale"), st.integers(0, 255)),
    st.tuples(st.just("pixel_kind"), st.sampled_from(PIXEL_KINDS)),
    st.tuples(st.just("coder_path"), st.sampled_from(CODER_PATHS)),
    st.tuples(st.just("plain_images"), st.lists(st.integers(0, 40), max_size=12)),
    st.tuples(st.just("names"), st.one_of(st.none(), st.lists(st.text(max_size=8), max_size=20))),
    st.tuples(st.just("names_stem"), st.text(max_size=12)),
    st.tuples(st.just("model_name"), st.text(max_size=12)),
    st.tuples(st.just("engine"), st.text(max_size=24)),
    st.tuples(st.just("pixels_sha256"), st.binary(min_size=16, max_size=16)),
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
    st.tuples(st.just("field"), FIELDS),
    st.tuples(st.just("field"), FIELDS),
    st.tuples(st.just("words"), st.sampled_from(["flip", "set", "drop", "append", "zero_last", "swap"]),
              st.floats(0, 1), st.integers(0, 2 ** 32 - 1)),
    st.tuples(st.just("words"), st.sampled_from(["flip", "set", "drop", "append"]),
              st.floats(0, 1), st.integers(0, 2 ** 32 - 1)),
)


def mutate(data: bytes, op) -> bytes:
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
    if kind == "field":
        return _rewrite_field(data, *op[1])
    if kind == "words":
        return _rewrite_words(data, *op[1:])
    raise AssertionError(kind)


# ----------------------------------------------------------------------------- the oracle


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"decode ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def decode_outcome(data: bytes, base: Base) -> str:
    """Clean error or exact pixels; anything else fails the test."""
    tracemalloc.reset_peak()
    try:
        with time_limit(CASE_SECONDS):
            pixels, header, _ = decompress(data, base.model, SHA)
    except VaeCompressError as e:
        words = re.sub(r"\d+", "N", str(e)).split()[:5]          # group by the message's start
        outcome = f"{type(e).__name__}: {' '.join(words)}"
    else:
        assert pixels.shape == base.pixels.shape and np.array_equal(pixels, base.pixels), \
            "a mutated file decoded to different pixels without an error"
        outcome = "decoded exactly" if data == base.data else "decoded exactly (mutated file)"
    peak = tracemalloc.get_traced_memory()[1]
    assert peak < MAX_TRACED_BYTES, f"decode allocated {peak / 2**20:.0f} MiB"
    OUTCOMES[outcome] += 1
    return outcome


@pytest.fixture(scope="module", autouse=True)
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_bases_decode():
    for base in bases():
        assert decode_outcome(base.data, base) == "decoded exactly"


CASE = st.tuples(st.integers(0, 3), st.lists(OPS, min_size=1, max_size=3))


def _run(case):
    which, ops = case
    base = bases()[which]
    data = base.data
    for op in ops:
        data = mutate(data, op)
    decode_outcome(data, base)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(CASE)
def test_mutated_containers_fast(case):
    _run(case)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(CASE)
def test_mutated_containers_many(case):
    _run(case)


@pytest.mark.slow
def test_report_outcomes(capsys):
    """Runs after the slow fuzz test in file order: print what the cases ended in."""
    with capsys.disabled():
        total = sum(OUTCOMES.values())
        print(f"\nfuzz outcomes over {total} decodes:")
        for k, v in OUTCOMES.most_common():
            print(f"  {v:6d}  {k}")


def test_huge_tables_are_refused():
    """A header that asks for 300 chains x 2^16 buckets (GiBs per round) is refused up front."""
    from bbans_vae.container import unpack
    from bbans_vae.errors import ContainerError
    from bbans_vae.data import sample_images
    model = random_model("mlp-bin", seed=0)
    x = (sample_images()[:300] >= 128).astype(np.uint8)
    data, _ = compress(model, "m", SHA, x, n_chains=300, with_neg_elbo=False, coder_path="float32")
    header, chains = unpack(data)
    with pytest.raises(ContainerError, match="memory"):
        decompress(pack(dataclasses.replace(header, latent_bits=16), chains), model, SHA)
    with pytest.raises(VaeCompressError, match="memory"):
        compress(model, "m", SHA, x, n_chains=300, latent_bits=16, with_neg_elbo=False)
