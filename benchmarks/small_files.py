"""Small files (#18 item 3): one image per .vae file, before (version 2 header, plain chain start:
the posterior mode at full latent precision) and after (version 3 header, cheap start: the latent
at the precision that makes the image shortest), against JPEG-XL per image (imagecodecs, lossless,
effort 10; for binary images the better of 0/255 samples and bitspersample=1) in the same run.
Every file is decoded and verified. 200 seeded random test images per dataset.

    OMP_NUM_THREADS=1 python benchmarks/small_files.py > benchmarks/results/small-files/README.md
    OMP_NUM_THREADS=1 python benchmarks/small_files.py 200 mnist-bin binarized-mnist   # some datasets only:
        # their rows replace those of the same dataset in results.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import bbans_vae as bv
from bbans_vae.baselines import _jxl1_encode, _jxl_decode, _jxl_encode, default_jxl_effort
from bbans_vae.container import unpack
from bbans_vae.data import load_dataset

CASES = [("mnist-bin", "mnist-bin-ctx"), ("mnist-bin-stoch", "mnist-bin-stoch-ctx"), ("binarized-mnist", "binarized-mnist-ctx"),
         ("mnist", "mnist-ctx"), ("fashion-mnist", "fashion-mnist-ctx")]
SEED = 18


def jxl_bits(img: np.ndarray, binary: bool, effort: int) -> int:
    best = None
    for enc, arr in [(_jxl_encode, img * np.uint8(255) if binary else img)] + \
                    ([(_jxl1_encode, img)] if binary else []):
        data = enc(arr, effort=effort)
        assert np.array_equal(np.asarray(_jxl_decode(data)).reshape(arr.shape), arr)
        best = len(data) if best is None else min(best, len(data))
    return 8 * best


def main(n: int, datasets: list[str]) -> None:
    effort = default_jxl_effort()
    rows = []
    print(f"# One image per file\n\n{n} seeded random test images per dataset (`np.random.default_rng({SEED})"
          f".choice`), each in its own file, decoded and verified; JPEG-XL lossless effort {effort} per image "
          "in the same run (binary: the better of 0/255 and 1-bit samples). Exact coder path, 1 thread.\n")
    print("| dataset | model | before: bpd | header bytes | payload bits | after: bpd | header bytes | payload bits "
          "| JPEG-XL per image bpd | after / JPEG-XL | enc ms/file |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ds, name in [c for c in CASES if not datasets or c[0] in datasets]:
        images = load_dataset(ds, "test")
        x = images[np.sort(np.random.default_rng(SEED).choice(len(images), n, replace=False))]
        codec = bv.load(name)
        binary = codec.model.cfg.pixel_kind == "binary"
        P = x[0].size
        acc = {m: [0, 0, 0] for m in ("plain", "auto")}   # total bits, header bytes, payload bits
        jxl, t_enc = 0, 0.0
        for img in x:
            one = img[None]
            for mode in ("plain", "auto"):
                t = time.perf_counter()
                data = codec.compress(one, start=mode)
                t_enc += time.perf_counter() - t if mode == "auto" else 0.0
                assert np.array_equal(codec.decompress(data), one)
                h, _ = unpack(data)
                a = acc[mode]
                a[0] += 8 * len(data)
                a[1] += h.header_bytes
                a[2] += bv.file_sizes(data)["payload_bits"]
            jxl += jxl_bits(img, binary, effort)
        row = dict(dataset=ds, model=name, n=n, jxl_bpd=jxl / (n * P), enc_ms=1e3 * t_enc / n,
                   **{f"{m}_{k}": v / n for m in acc for k, v in zip(("bits", "header_bytes", "payload_bits"), acc[m])})
        rows.append(row)
        b, a = row["plain_bits"] / P, row["auto_bits"] / P
        print(f"| {ds} | {name} | {b:.4f} | {row['plain_header_bytes']:.0f} | {row['plain_payload_bits']:.1f} | "
              f"**{a:.4f}** | {row['auto_header_bytes']:.0f} | {row['auto_payload_bits']:.1f} | {row['jxl_bpd']:.4f} | "
              f"{a / row['jxl_bpd']:.3f} | {row['enc_ms']:.1f} |", flush=True)
    out = Path("benchmarks/results/small-files/results.json")
    if datasets and out.is_file():   # keep the other datasets' rows, in CASES order
        new = {r["dataset"]: r for r in rows}
        old = {r["dataset"]: r for r in json.loads(out.read_text())}
        rows = [new.get(ds, old.get(ds)) for ds, _ in CASES if ds in new or ds in old]
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, sys.argv[2:])
