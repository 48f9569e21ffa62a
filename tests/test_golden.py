"""Golden bitstreams: every bundled model, on a fixed seeded sample of real test images, must
write byte-identical files. The exact coder path is a file format (same bytes on every machine);
float32 files depend on this machine's kernels, so their digests are checked only on the CPU
kind and torch version they were recorded with.

Regenerate (only when the container format version changes):
    python -m tests.test_golden
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from bbans_vae.checkpoint import bundled_models, load_model
from bbans_vae.pipeline import compress
from bbans_vae.container import unpack
from bbans_vae.data import load_dataset

SAMPLE_SEED = 2026
N_IMAGES = 12
N_CHAINS = 2
# (model, coder path, refinement steps)
CASES = [(name, path, 0) for name in ("fashion-mnist-ctx", "mnist", "mnist-bin", "mnist-bin-ctx",
                                       "mnist-bin-paper", "mnist-bin-stoch-ctx", "mnist-ctx")
         for path in ("exact", "float32")] + [("mnist-bin", "float32", 2)]
RECORDED_ON = {"torch": "2.13.0+cpu", "cpu_capability": "AVX512"}

# case -> (sha256 of the file, sha256 of the chains' words); filled by `python -m tests.test_golden`
GOLDEN: dict[str, tuple[str, str]] = {
    'fashion-mnist-ctx/exact': (
        '3052f107e067009d1cb88ee15606d2e342828002682a20bac5e41905a2e45116',
        '7d9ecdc46984768d6539420a60633ad4adff7c0dacd5a06bd76d73496d01dc3a'),
    'fashion-mnist-ctx/float32': (
        '08f17d21faa3f4f738307048818d14c2a50b6cba607b669490a7bb0314646255',
        '246bf8e0b8ebcfd5562bd6c2e6fca0a42a50463e8451c3a9c9f3ed90b740f715'),
    'mnist/exact': (
        '39b1c7b20dc8ee5aefefa1ec0286dc278f9e967cd8189e9040b14de95eda0251',
        'db6cc5e30d7e93c080a1d11d8f0cf6f7f1beba7745d0505d12b92b7497126535'),
    'mnist/float32': (
        '819866bc9ec175be5c178bb017da5e54ab5e3a3ba2a381da9bfd11f1de9b93be',
        'fc9e1e6bfff06fb35d580349da2abefd13dc31e2a73d7f251bade7faf7d8a577'),
    'mnist-bin/exact': (
        'cfdff60d3282dce7afdbed29708c6e2950e047b35a4bbd9ccc2c422b35e0c29c',
        '5ef641bf6e70da3ec734525b47d12089bcba1aa690455c10a205718631ea9ff6'),
    'mnist-bin/float32': (
        'edbf023d822d379ca96c6686bc8b43f1beaa07a3db2052c2f61b79b7a0ab965e',
        '55d1a35242a571e776139f40f293440bf6d26005fee8e0d29926d24fa993f0e8'),
    'mnist-bin-ctx/exact': (
        'c19e670319b994934834c8f6d8a0491985fa08caed984e469e349bec636f9387',
        '2f5fe2f2a73bcf14a35d6307ea9a38bb0cb5bdf0cf520fca18f56aa80b239bb5'),
    'mnist-bin-ctx/float32': (
        '61f121747bcd8453cdf74aa19a0b5544a748808538bc0d975e7f0bebdf391d7f',
        'ab6e83b5e653f3d835630d5705afda1205432c930e2de595f48186d99b16c26a'),
    'mnist-bin-paper/exact': (
        'c334bceaa3c480a6de5441b43e54017f00022ef9e5f316dbe254734942ad8d2c',
        '6faeb914c0aa5cda23f03bbf0afd02c571990d071d84d1748804e7e9080240f9'),
    'mnist-bin-paper/float32': (
        'fda5493b86bc4208d529e0ef93a7dca14a6c356129638b5c279f268d41b3acc8',
        'f50ce18ef465d7f89cebb69454ba45ac7ede9b1c7469e30c3c68280008575882'),
    'mnist-bin-stoch-ctx/exact': (
        '0da2df0f1645797a3722d6aabd357a4ee1e980264d256cd24d92fb367dc6ed00',
        '4c44c38e2bd0010cd1a472fc37a1ba4b4a33ad0c1d30fdce581af44afd48e1c6'),
    'mnist-bin-stoch-ctx/float32': (
        '2c807f8914e134e692689cf8c6f6d98b9a1be342756606313dafd0cb16603b9d',
        '639aec7716b30dd1b64405a8716eca86b43c22bddd40c73ce8b332efcafa5a48'),
    'mnist-ctx/exact': (
        '2aeea8f88ae6f9dfe6b42328c8082db95e7d63d9a5a09a6371014174f1d5ac23',
        '153ffe00f114b1ffd86a91946be1dff2881bd15ead0570520672daf7715bfd4a'),
    'mnist-ctx/float32': (
        '5f4bd8e7566064246f0541c89df4c11fa2246dee1599ccbe013dfb44218ad51e',
        'ff73f667325971e4b0cea3e68d1490b2c3e24225edb99712adb2e2ca7ddf0eda'),
    'mnist-bin/float32/refine2': (
        '99a8db5a434a1624449f654a27712f29c90b8d2b0f632a7fdca3e60f1efa87da',
        '2409dbab306fb2502b87d7982213df365ac095914accec98bab03a4ce55fbdab'),
}


def case_id(name: str, path: str, refine: int) -> str:
    return f"{name}/{path}" + (f"/refine{refine}" if refine else "")


def sample(dataset: str, data_root) -> np.ndarray:
    images = load_dataset(dataset, "test", data_root)
    idx = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(images), N_IMAGES, replace=False))
    return images[idx]


def encode_case(name: str, path: str, refine: int, data_root) -> tuple[str, str]:
    model, config, _ = load_model(name)
    pixels = sample(config["dataset"], data_root)
    data, _ = compress(model, name, config["weights_sha256"], pixels, n_chains=N_CHAINS,
                       with_neg_elbo=False, coder_path=path, refine_steps=refine)
    _, chains = unpack(data)
    words = hashlib.sha256(b"".join(np.asarray(w, "<u4").tobytes() for w in chains)).hexdigest()
    return hashlib.sha256(data).hexdigest(), words


def _same_machine_kind() -> bool:
    return (torch.__version__ == RECORDED_ON["torch"]
            and torch.backends.cpu.get_cpu_capability() == RECORDED_ON["cpu_capability"])


def test_every_bundled_model_has_golden_cases():
    assert {name for name, _, _ in CASES} == set(bundled_models())
    assert set(GOLDEN) == {case_id(*c) for c in CASES}


@pytest.mark.parametrize("name,path,refine", CASES, ids=[case_id(*c) for c in CASES])
def test_golden_file(name, path, refine, real_data_root):
    file_sha, words_sha = GOLDEN[case_id(name, path, refine)]
    if path == "float32" and not _same_machine_kind():
        pytest.skip("float32 bitstreams are recorded for one CPU kind and torch version only")
    got_file, got_words = encode_case(name, path, refine, real_data_root)
    assert got_words == words_sha, "the coded chains changed"
    if torch.__version__ == RECORDED_ON["torch"]:       # the header records the torch version
        assert got_file == file_sha, "the file bytes changed (header or layout)"


if __name__ == "__main__":
    from tests.conftest import data_root
    print(json.dumps({"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}))
    for c in CASES:
        print(f"    {case_id(*c)!r}: {encode_case(*c, data_root())!r},", flush=True)
