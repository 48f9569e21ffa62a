"""Kodak-24 (#16 item 4): a conv model trained on other photos against PNG, WebP and JPEG-XL.

Every codec sees the same 24 images (`../shared/data/kodak`, sha256-checked against its
SHA256SUMS), each coded on its own, every file decoded and compared with the original; bits per
subpixel = 8 x bytes / (H x W x 3), per image and in total (total bytes / total subpixels).

* vaecompress, one file per image: `Codec.compress([image])` on the default exact (portable)
  coder path with the default start (`auto`: a lone image codes its latents at the cheapest
  precision), decoded with `Codec.decompress`; also the model's -ELBO on the image (1 sample).
* vaecompress, all 24 in one file (two sizes: 768x512 and 512x768), so bits back carry from
  image to image: total only.
* PNG as distributed (file sizes), PNG optimised (zlib 9, best of 6 filters x 3 strategies),
  WebP lossless (level 100, method 6), JPEG-XL lossless at the given efforts: the codecs of
  `bbans_vae.baselines.REGISTRY`, through imagecodecs.
* Peak RSS of `vaecompress encode` and `decode` of one photo (kodim01), each in its own process
  under `/usr/bin/time -v`.

    OMP_NUM_THREADS=1 python benchmarks/kodak.py --model RUN_DIR -o benchmarks/results/kodak
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import bbans_vae as bv
from bbans_vae.baselines import REGISTRY, codec_table

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def load_kodak(root: Path) -> tuple[list[str], list[np.ndarray], list[int]]:
    sums = dict(reversed(line.split()) for line in (root / "SHA256SUMS").read_text().splitlines() if line.strip())
    names, images, sizes = [], [], []
    for name in sorted(sums):
        raw = (root / name).read_bytes()
        if hashlib.sha256(raw).hexdigest() != sums[name]:
            raise SystemExit(f"{name}: sha256 differs from {root / 'SHA256SUMS'}")
        img = np.asarray(Image.open(root / name).convert("RGB"), dtype=np.uint8)
        names.append(name), images.append(img), sizes.append(len(raw))
    return names, images, sizes


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def classical(images: list[np.ndarray], codec: str, effort: int) -> list[dict]:
    c = REGISTRY[codec]
    rows = []
    for img in images:
        enc, te = timed(c.encode, img, effort=effort)
        dec, td = timed(c.decode, bytes(enc))
        if not np.array_equal(np.asarray(dec).reshape(img.shape), img):
            raise SystemExit(f"{codec} is not lossless here")
        rows.append({"bytes": len(enc), "encode_s": te, "decode_s": td})
    return rows


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one command under /usr/bin/time -v."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return kb / 1024, wall


def table(res: dict) -> str:
    """Markdown: bits per subpixel per image and in total, one column per codec."""
    labels = [l for l in ("vaecompress", "png as distributed", "png", "webp") if l in res["per_image"]]
    labels += [l for l in res["per_image"] if l.startswith("jpegxl")]
    n = len(res["per_image"].get("vaecompress", [])) or len(res["images"])
    lines = ["| image | " + " | ".join(labels) + " | vaecompress -ELBO | enc s | dec s |",
             "|---|" + "---:|" * (len(labels) + 3)]
    for i in range(n):
        d = res["subpixels"][i]
        cells = [f"{8 * res['per_image'][l][i]['bytes'] / d:.3f}" if i < len(res["per_image"][l]) else "-"
                 for l in labels]
        ours = res["per_image"].get("vaecompress", [])
        extra = ([f"{ours[i]['neg_elbo_bits'] / d:.3f}", f"{ours[i]['encode_s']:.1f}", f"{ours[i]['decode_s']:.1f}"]
                 if i < len(ours) else ["-"] * 3)
        lines.append(f"| {res['images'][i]} | " + " | ".join(cells + extra) + " |")
    tot = res["total_bpsp"]
    lines.append("| **total** | " + " | ".join(f"**{tot[l]:.3f}**" for l in labels) +
                 f" | {tot.get('vaecompress -ELBO', float('nan')):.3f} | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="run or checkpoint directory of the model")
    ap.add_argument("--kodak", type=Path, default=KODAK)
    ap.add_argument("--efforts", default="7,9", help="JPEG-XL efforts")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (a quick check)")
    ap.add_argument("--no-one-file", action="store_true", help="skip the all-in-one-file run")
    ap.add_argument("--table", action="store_true", help="print the Markdown table of OUT/results.json and stop")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    if a.table:
        print(table(json.loads((a.out / "results.json").read_text())), end="")
        return
    if not a.model:
        ap.error("--model is required")
    torch.set_num_threads(1)
    names, images, png_sizes = load_kodak(a.kodak)
    names, images, png_sizes = names[:a.limit], images[:a.limit], png_sizes[:a.limit]
    dims = [img.size for img in images]
    res: dict = {"images": names, "subpixels": dims, "codecs": {}, "per_image": {}}

    codec = bv.load(a.model)
    cfg = codec.model.cfg
    res["model"] = {"path": a.model, "weights_sha256": codec.weights_sha256,
                    "params": sum(p.numel() for p in codec.model.parameters()),
                    "arch": cfg.arch, "hidden": list(cfg.hidden), "latent_dim": cfg.latent_dim}
    res["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                          "command": " ".join(sys.argv)}
    a.out.mkdir(parents=True, exist_ok=True)

    def save(stage: str) -> None:              # after every stage: an interrupted run keeps what it measured
        res["total_bpsp"] = {label: 8 * sum(r["bytes"] for r in rows) / sum(dims[:len(rows)])
                             for label, rows in res["per_image"].items()}
        ours = res["per_image"].get("vaecompress", [])
        if ours:
            res["total_bpsp"]["vaecompress -ELBO"] = sum(r["neg_elbo_bits"] for r in ours) / sum(dims[:len(ours)])
        res["done"] = stage
        (a.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")

    res["per_image"]["png as distributed"] = [{"bytes": s} for s in png_sizes]
    runs = [("png", "png", 0), ("webp", "webp", 0)] + [(f"jpegxl e{e}", "jpegxl", int(e)) for e in a.efforts.split(",")]
    res["codecs"] = {r["codec"]: r["library"] for r in codec_table() if r["codec"] in ("png", "webp", "jpegxl")}
    for label, name, effort in runs:
        res["per_image"][label] = classical(images, name, effort)
        print(f"{label}: {8 * sum(r['bytes'] for r in res['per_image'][label]) / sum(dims):.4f} bpsp", flush=True)
    save("classical")

    exe = str(Path(sys.executable).with_name("vaecompress"))
    tmp = a.out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    enc_mb, enc_s = peak_rss([exe, "encode", str(a.kodak / names[0]), "-o", str(tmp / "one.vae"), "-m", a.model,
                              "--workers", "1", "--force"])
    dec_mb, dec_s = peak_rss([exe, "decode", str(tmp / "one.vae"), "-o", str(tmp / "restored"), "-m", a.model,
                              "--workers", "1", "--force"])
    res["peak_rss_mb"] = {"image": names[0], "encode": enc_mb, "decode": dec_mb, "encode_wall_s": enc_s,
                          "decode_wall_s": dec_s}
    print(f"peak RSS {names[0]}: encode {enc_mb:.0f} MB, decode {dec_mb:.0f} MB", flush=True)
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    tmp.rmdir()
    save("peak rss")

    if not a.no_one_file:
        data, rep = codec.compress(list(images), report=True)
        out, td = timed(codec.decompress, data)
        if not all(np.array_equal(p, q) for p, q in zip(out, images)):
            raise SystemExit("vaecompress: the one-file run did not decode exactly")
        te = rep["encode_seconds"]
        res["one_file"] = {"bytes": len(data), "bpsp": 8 * len(data) / sum(dims), "encode_s": te, "decode_s": td,
                           "initial_bits": rep["initial_bits"], "neg_elbo_bits": rep["neg_elbo_bits"]}
        print(f"all in one file: {res['one_file']['bpsp']:.4f} bpsp, enc {te:.0f}s dec {td:.0f}s", flush=True)
        save("one file")

    ours = res["per_image"]["vaecompress"] = []
    for name, img in zip(names, images):
        data, rep = codec.compress([img], report=True)       # encode_seconds: the coding alone, not the -ELBO pass
        out, td = timed(codec.decompress, data)
        if not np.array_equal(out[0], img):
            raise SystemExit(f"vaecompress: {name} did not decode exactly")
        te, elbo = rep["encode_seconds"], rep["neg_elbo_bits"]
        ours.append({"bytes": len(data), "encode_s": te, "decode_s": td, "neg_elbo_bits": elbo,
                     "initial_bits": rep["initial_bits"], "container_bits": rep["container_bits"]})
        print(f"{name} vaecompress {8 * len(data) / img.size:.4f} bpsp (-ELBO {elbo / img.size:.4f}, "
              f"start {rep['initial_bits'] / img.size:.4f}) enc {te:.1f}s dec {td:.1f}s", flush=True)
        save(f"vaecompress per image: {len(ours)} of {len(names)}")
    print(json.dumps(res["total_bpsp"], indent=1))

if __name__ == "__main__":
    main()
