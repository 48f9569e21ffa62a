"""One conv model, images of several sizes (#16 item 3): real files, decoded and verified.

Codes, with one any-size model, on both coder paths: the MNIST-bin test digits (28x28), 200
13x37 crops of 2x2 mosaics of test digits, 5 13x1000 strips of test digits side by side, and a
mixed file of 300 digits + 100 crops + 3 strips + 100 digits. Prints a Markdown table: real bpd
(8 x file size / original pixels), the model's -ELBO, the chain-start bits, images/s.

    OMP_NUM_THREADS=1 python benchmarks/anysize.py --model tests/data/conv-bin [--limit 10000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import bbans_vae as bv
from bbans_vae.data import load_dataset


def groups(x: np.ndarray) -> dict:
    mos = np.block([[x[0:200, None], x[200:400, None]], [x[400:600, None], x[600:800, None]]]).reshape(200, 56, 56)
    crops = np.ascontiguousarray(mos[:, 20:33, 10:47])
    strips = np.concatenate([x[i * 36:(i + 1) * 36] for i in range(5)], 0).reshape(5, 36, 28, 28)
    strips = np.ascontiguousarray(strips.transpose(0, 2, 1, 3).reshape(5, 28, 36 * 28)[:, 8:21, :1000])
    return {"28x28 test digits": x, "13x37 mosaic crops": crops, "13x1000 strips": strips,
            "mixed sizes, one file": [*x[:300], *crops[:100], *strips[:3], *x[300:400]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tests/data/conv-bin")
    ap.add_argument("--limit", type=int, default=10000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    codec = bv.load(a.model)
    test = load_dataset("mnist-bin", "test")[:a.limit]
    print("| coder path | images | n | real bpd | -ELBO bpd | chain-start bpd | encode img/s | decode img/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in ("exact", "float32"):
        for name, imgs in groups(test).items():
            t = time.perf_counter()
            data, rep = codec.compress(imgs, report=True, coder_path=path)
            enc = time.perf_counter() - t
            t = time.perf_counter()
            out = codec.decompress(data)
            dec = time.perf_counter() - t
            assert len(out) == len(imgs) and all(np.array_equal(p, q) for p, q in zip(out, imgs))
            n = len(imgs)
            print(f"| {path} | {name} | {n} | {rep['actual_bpd']:.4f} | {rep['neg_elbo_bpd']:.4f} | "
                  f"{rep['initial_bits'] / rep['n_dims']:.4f} | {n / enc:.0f} | {n / dec:.0f} |", flush=True)


if __name__ == "__main__":
    main()
