"""Speed and memory of `vaecompress encode` / `decode`, everything counted, per bundled model.

Each measurement is one fresh CLI process under `/usr/bin/time -v` (peak RSS = "Maximum resident
set size"; wall time includes interpreter start, model load and file I/O). Images/s is given two
ways: `cli` = images / wall time of the whole command, `coder` = the command's own JSON report
(coding only). Inputs are the model's dataset as a `.npy` file (test split; the train split for
sizes above 10,000), so `encode` reads them memory-mapped.

    python benchmarks/speed.py --out benchmarks/results/speed/after [--models a,b] [--sizes 1000,10000]
                               [--workers 1,2] [--label after] [--no-decode]

Writes OUT/results.json and OUT/README.md (a table). Run with OMP_NUM_THREADS=1 on a quiet machine;
compare speeds only within one run (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def vaecompress_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "vaecompress"
    return [str(exe)] if exe.exists() else ["vaecompress"]


def timed(cmd: list[str], env: dict) -> dict:
    """Run `cmd` under /usr/bin/time -v; returns wall seconds, peak RSS (MB), stdout, rc."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": int(m.group(1)) / 1024 if m else None, "stdout": p.stdout}


def bundled() -> dict[str, str]:
    """name -> dataset of every bundled model."""
    from bbans_vae.checkpoint import bundled_models
    return {name: json.loads((path / "config.json").read_text())["dataset"]
            for name, path in bundled_models().items()}


def versions() -> dict:
    import constriction
    import torch
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "constriction": getattr(constriction, "__version__", "0.5.0"), "git_revision": rev,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", default=None, help="comma-separated bundled model names (default: all)")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (omit: the CLI's default, "
                                                    "and no --workers option is passed)")
    ap.add_argument("--label", default="")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--extra", default="", help="extra encode options, e.g. '--coder-path float32'")
    ap.add_argument("--cli", default=None, help="the command that runs the CLI (default: the vaecompress "
                                               "script next to this Python)")
    args = ap.parse_args()
    from bbans_vae.data import load_dataset

    models = bundled()
    names = args.models.split(",") if args.models else sorted(models)
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [None]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    vc = args.cli.split() if args.cli else vaecompress_cmd()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="vc-speed-"))
    try:
        for name in names:
            ds = models[name]
            for n in sizes:
                x = load_dataset(ds, "test" if n <= 10_000 else "train")
                if n > len(x):
                    print(f"skip {name} n={n}: {ds} has {len(x)} images", file=sys.stderr)
                    continue
                inp = tmp / f"{ds}-{n}.npy"
                if not inp.exists():
                    np.save(inp, np.ascontiguousarray(x[:n]))
                del x
                for w in workers:
                    wopt = [] if w is None else ["--workers", str(w)]
                    vae = tmp / "out.vae"
                    enc = timed([*vc, "encode", str(inp), "-o", str(vae), "--model", name, "--json", "--quiet",
                                 "--force", *wopt, *args.extra.split()], env)
                    rep = json.loads(enc["stdout"])
                    row = {"model": name, "dataset": ds, "n_images": n, "workers": w,
                           "chains": rep.get("chains"), "coder_path": rep.get("coder_path"),
                           "actual_bpd": rep.get("actual_bpd"), "bytes": rep.get("bytes"),
                           "encode_wall_s": enc["wall_s"], "encode_peak_rss_mb": enc["peak_rss_mb"],
                           "encode_cli_images_per_s": n / enc["wall_s"],
                           "encode_coder_images_per_s": rep.get("encode_images_per_second")}
                    if not args.no_decode:
                        outdir = tmp / "dec"
                        dec = timed([*vc, "decode", str(vae), "-o", str(outdir), "--format", "npy", "--json",
                                     "--quiet", "--force", *wopt], env)
                        drep = json.loads(dec["stdout"])
                        same = np.array_equal(np.load(outdir / "images.npy", mmap_mode="r"), np.load(inp, mmap_mode="r"))
                        if not same:
                            raise RuntimeError(f"{name} n={n}: decoded pixels differ")
                        shutil.rmtree(outdir)
                        row.update(decode_wall_s=dec["wall_s"], decode_peak_rss_mb=dec["peak_rss_mb"],
                                   decode_cli_images_per_s=n / dec["wall_s"],
                                   decode_coder_images_per_s=drep.get("decode_images_per_second"))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"label": args.label, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (args.out / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# speed/memory: {args.label}", "", f"`{meta['command']}`  ", f"{meta['date']}; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), "",
             "| model | N | workers | chains | bpd | enc img/s (cli / coder) | enc peak RSS MB "
             "| dec img/s (cli / coder) | dec peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['model']} | {r['n_images']} | {r['workers'] or 'default'} | {r['chains']} | "
                     f"{f(r['actual_bpd'], '.4f')} | {f(r['encode_cli_images_per_s'], ',.0f')} / "
                     f"{f(r['encode_coder_images_per_s'], ',.0f')} | {f(r['encode_peak_rss_mb'], '.0f')} | "
                     f"{f(r.get('decode_cli_images_per_s'), ',.0f')} / {f(r.get('decode_coder_images_per_s'), ',.0f')} | "
                     f"{f(r.get('decode_peak_rss_mb'), '.0f')} |")
    (args.out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
