"""Presentation of results: text tables for the terminal, Markdown, JSON files and plots.

The library returns plain dicts (`bbans_vae.bench.run_bench`, ...); everything a person reads
is made here.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from bbans_vae.bench import refine_protocol


def format_headline(result: dict) -> str:
    """Plain-text headline table (what the CLI prints)."""
    rows = result["headline"]
    w = max([len(r["ours"] or "-") for r in rows] + [22])
    wc = max([len(r["classical"] or "-") for r in rows] + [22])
    lines = [f"{'dataset':<16} {'images':>6}  {'vaecompress (best)':<{w}} {'bpd':>7}  "
             f"{'best classical codec':<{wc}} {'bpd':>7}  {'ratio':>6}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        f = lambda v: f"{v:7.4f}" if v is not None else f"{'-':>7}"  # noqa: E731
        ratio = f"{r['ratio']:6.3f}" if r["ratio"] is not None else f"{'-':>6}"
        lines.append(f"{r['dataset']:<16} {r['n_images']:>6}  {r['ours'] or '-':<{w}} {f(r['ours_bpd'])}  "
                     f"{r['classical'] or '-':<{wc}} {f(r['classical_bpd'])}  {ratio}")
    lines.append("ratio = vaecompress bpd / classical bpd (below 1: vaecompress is smaller); bpd = bits per pixel")
    if not result.get("all_verified", True):
        lines.append("WARNING: some decodes did not reproduce the input exactly (see results.json)")
    for n in result.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writers


def _file_stem(dataset: str) -> str:
    """A file-name part for a dataset name or path (a path dataset's name holds '/')."""
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(dataset).name or dataset)
    return stem.lstrip(".") or "dataset"


def write_results(result: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write results.json, README.md, rate_vs_images.png and bpd_<dataset>.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out / "results.json"
    _write_text(p, json.dumps(result, indent=2, default=_json_default) + "\n")
    paths.append(p)
    plots = _plots(result, out)
    p = out / "README.md"
    _write_text(p, format_markdown(result, [q.name for q in plots]))
    paths.append(p)
    return paths + plots


def write_json(result: dict, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _write_text(p, json.dumps(result, indent=2, default=_json_default) + "\n")
    return p


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (Path,)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(v, spec=".4f", none="–"):
    if v is None:
        return none
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _row_notes(r: dict) -> str:
    parts = []
    if r.get("ours"):
        parts.append(f"{r['files']} file{'s' if r['files'] != 1 else ''}, {r['chains']} chain"
                     f"{'s' if r['chains'] != 1 else ''}/file")
        parts.append(f"-ELBO {_fmt(r.get('neg_elbo_bpd'))}")
        parts.append(f"initial {r['initial_bits']:,.0f} bits")
        if r.get("subset"):
            parts.append(f"**{r['subset']} only**")
        if not r.get("lossless_verified"):
            parts.append(f"**NOT VERIFIED: {r.get('error')}**")
    else:
        if r.get("padding_images"):
            parts.append(f"grid {r['grid'][0]}x{r['grid'][1]}, {r['padding_images']} padding")
        if "jpegxl" in r["codec"]:
            parts.append(r["params"])
    return "; ".join(parts)


def format_markdown(result: dict, plot_names: Sequence[str] = ()) -> str:
    m, v, s = result["machine"], result["versions"], result["settings"]
    L = ["# vaecompress benchmark", "",
         f"Generated {result['date_utc']} in {result['elapsed_seconds'] / 60:.1f} min by:", "",
         "```", result["command"], "```", "",
         f"Machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m.get('cpu_model') or m['machine']}, "
         f"{m['platform']}. BB-ANS coding and the forward-pass timing run on 1 torch thread.", "",
         "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".", "",
         f"Images: the `{s['split']}` split of each dataset"
         + (f", a seeded random {s['limit']} of its images (seed {s.get('subset_seed', 0)})" if s["limit"] else "") + f". JPEG-XL effort {s['jpegxl_effort']}. "
         f"BB-ANS latents: 2^{s['latent_bits']} equal-mass buckets per dimension. "
         "bpd = bits per pixel (dimension) = 8 x bytes / (images x pixels). "
         "Every row was decoded and compared with the input pixel for pixel.", ""]
    if not result["all_verified"]:
        L += ["**WARNING: some decodes did not reproduce their input: see the rows marked NOT VERIFIED.**", ""]
    L += ["## Headline", "",
          "Best full-set vaecompress row (protocols `all`, `chunks100`"
          + "".join(f", `{refine_protocol(k)}`" for k in s.get("refine_steps", ())) + ") vs the best classical "
          "codec on the same "
          "images; ratio = vaecompress bpd / classical bpd (below 1: vaecompress is smaller).", "",
          "| dataset | images | vaecompress (best) | bpd | best classical | bpd | ratio |",
          "|---|---:|---|---:|---|---:|---:|"]
    for r in result["headline"]:
        L.append(f"| {r['dataset']} | {r['n_images']} | {r['ours'] or '–'} | {_fmt(r['ours_bpd'])} | "
                 f"{r['classical'] or '–'} | {_fmt(r['classical_bpd'])} | {_fmt(r['ratio'], '.3f')} |")
    L += ["", "## Protocols", ""]
    L += [f"* `{k}`: {d}" for k, d in result["protocols"].items()]
    if result["models"]:
        L += ["", "## Models", "", "| model | trained on | architecture | z | likelihood | parameters | epoch |",
              "|---|---|---|---:|---|---:|---:|"]
        for mi in result["models"]:
            arch = f"{mi.get('preset') or 'mlp'} ({'x'.join(map(str, mi['hidden']))})"
            L.append(f"| {mi['name']} | {mi.get('dataset') or '?'} | {arch} | {mi['latent_dim']} | "
                     f"{mi['likelihood']} | {mi['parameters']:,} | {mi.get('epoch') if mi.get('epoch') is not None else '?'} |")
    for d, rd in result["datasets"].items():
        L += ["", f"## {d}: {rd['selection']}", "", f"{rd['description']}. Sorted by bpd; **bold** = vaecompress.",
              "", "| # | codec | protocol | input | bytes | bpd | notes |", "|---:|---|---|---|---:|---:|---|"]
        ok = sorted((r for r in rd["rows"] if r.get("bpd") is not None), key=lambda r: r["bpd"])
        for i, r in enumerate(ok, 1):
            name = f"**{r['codec']}**" if r.get("ours") else r["codec"]
            bpd = f"**{r['bpd']:.4f}**" if r.get("ours") else f"{r['bpd']:.4f}"
            L.append(f"| {i} | {name} | {r['protocol']} | {r.get('input') or ''} | {r['total_bytes']:,} | {bpd} | "
                     f"{_row_notes(r)} |")
        for r in rd["rows"]:
            if r.get("bpd") is None:
                L.append(f"| – | {r['codec']} | {r.get('protocol') or ''} | {r.get('input') or ''} | – | – | "
                         f"skipped: {r.get('skipped')} |")
    ours = [(d, r) for d, rd in result["datasets"].items() for r in rd["rows"] if r.get("ours")]
    if ours:
        L += ["", "## BB-ANS code lengths and speed", "",
              "actual = container bytes; ideal = Σ -log2 p(x|z) - log2 p(z) + log2 q(z|x) at the latents used; "
              "initial = bits not got back on chain starts; container = header + padding + flush. "
              "fwd img/s = bare encoder + decoder forward passes over the same images in the same batches "
              "(1 thread); enc/fwd, dec/fwd = coding time / forward time.", "",
              "| dataset | model | protocol | images | chains | actual bpd | -ELBO bpd | ideal bpd | initial bits | "
              "container bits | enc img/s | dec img/s | fwd img/s | enc/fwd | dec/fwd | verified |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for d, r in ours:
            L.append(_speed_line([d, r["model"], r["protocol"]], r))
    sw = result.get("speed_sweep")
    if sw and sw["rows"]:
        L += ["", f"## Speed sweep: {sw['model']} on {sw['dataset']} ({sw.get('n_images')} images, one file)", "",
              "| chains | images | actual bpd | -ELBO bpd | ideal bpd | initial bits | container bits | enc img/s | "
              "dec img/s | fwd img/s | enc/fwd | dec/fwd | verified |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in sw["rows"]:
            L.append(_speed_line([], r, chains_first=True))
    if result["rate_curves"]:
        sizes = sorted({p["n_images"] for c in result["rate_curves"] for p in c["points"]})
        L += ["", "## Rate vs number of images in one file", "",
              "actual bpd of one .vae file holding n images (the first n of one seeded random order; default chains); the chain-start "
              "cost is amortized over more images as n grows. In brackets: the model's -ELBO bpd on the same images.",
              "", "| model | dataset | " + " | ".join(f"n={n}" for n in sizes) + " |",
              "|---|---|" + "---:|" * len(sizes)]
        for c in result["rate_curves"]:
            by = {p["n_images"]: p for p in c["points"]}
            cells = [f"{by[n]['actual_bpd']:.4f} ({by[n]['neg_elbo_bpd']:.4f})" if n in by else "–" for n in sizes]
            L.append(f"| {c['model']} | {c['dataset']} | " + " | ".join(cells) + " |")
    if result["codecs"]:
        L += ["", "## Classical codecs", "", "| codec | settings | library |", "|---|---|---|"]
        for c in result["codecs"]:
            L.append(f"| {c['codec']} | {c['params']} | {c['library'] or 'missing: ' + str(c['skipped'])} |")
    if plot_names:
        L += ["", "## Plots", ""] + [f"![{n}]({n})" for n in plot_names]
    if result["notes"]:
        L += ["", "## Notes", ""] + [f"* {n}" for n in result["notes"]]
    return "\n".join(L) + "\n"


def _speed_line(prefix: list, r: dict, chains_first: bool = False) -> str:
    cells = list(prefix)
    if chains_first:
        cells += [str(r["chains"]), str(r["n_images"])]
    else:
        cells += [str(r["n_images"]) + (" (subset)" if r.get("subset") else ""), str(r["chains"])]
    cells += [_fmt(r.get("actual_bpd")), _fmt(r.get("neg_elbo_bpd")), _fmt(r.get("ideal_bpd")),
              _fmt(r.get("initial_bits"), ",.0f"), _fmt(r.get("container_bits"), ",.0f"),
              _fmt(r.get("encode_images_per_second"), ",.0f"), _fmt(r.get("decode_images_per_second"), ",.0f"),
              _fmt(r.get("forward_images_per_second"), ",.0f"), _fmt(r.get("encode_over_forward"), ".1f"),
              _fmt(r.get("decode_over_forward"), ".1f"), "yes" if r.get("lossless_verified") else "**NO**"]
    return "| " + " | ".join(cells) + " |"


def _plots(result: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    curves = [c for c in result["rate_curves"] if c["points"]]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, c in enumerate(curves):
            pts = sorted(c["points"], key=lambda p: p["n_images"])
            n = [p["n_images"] for p in pts]
            color = f"C{i % 10}"
            ax.plot(n, [p["actual_bpd"] for p in pts], "-o", color=color, label=f"{c['model']} on {c['dataset']}")
            ax.plot(n, [p["neg_elbo_bpd"] for p in pts], ":", color=color, alpha=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("images coded in one file")
        ax.set_ylabel("bits per dimension (actual file size)")
        ax.set_title("BB-ANS rate vs number of images (dotted: model -ELBO)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "rate_vs_images.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    for d, rd in result["datasets"].items():
        rows = sorted((r for r in rd["rows"] if r.get("bpd") is not None), key=lambda r: r["bpd"])
        if not rows:
            continue
        labels = [f"{r['codec']} / {r['protocol']}" + (f" / {r['input']}" if r.get("input") and not r.get("ours")
                                                         else "") + (" *" if r.get("subset") else "")
                  for r in rows]
        fig, ax = plt.subplots(figsize=(9, 0.25 * len(rows) + 1.4))
        ax.barh(range(len(rows)), [r["bpd"] for r in rows],
                color=["C3" if r.get("ours") else "C0" for r in rows])
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("bits per dimension")
        ax.set_title(f"{d}: {rd['selection']}\n(red: vaecompress; * = subset of the images)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        p = out / f"bpd_{_file_stem(d)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- demo


def format_demo(rows: list[dict]) -> str:
    """The demo's tables: per pixel kind, vaecompress and every rival on the same images, best first."""
    lines = [f"vaecompress demo: {rows[0]['n_images']} bundled MNIST test images (28x28), "
             "bits-back ANS with bundled VAEs, decoded and verified", ""]
    head = f"{'codec':<40} {'bytes':>9} {'bpd':>8}  notes"
    for r in rows:
        kind = "binary (thresholded at 128)" if r["pixel_kind"] == "binary" else "8-bit"
        lines += [f"[{r['pixel_kind']}] {kind}; JPEG-XL effort {r['jpegxl_effort']}", head, "-" * len(head)]
        ours = (f"{'vaecompress ' + r['model']:<40} {r['bytes']:>9,} {r['actual_bpd']:>8.4f}  "
                f"-ELBO {r['neg_elbo_bpd']:.4f} bpd, {r['chains']} chains, "
                f"{r['encode_images_per_second']:,.0f}/{r['decode_images_per_second']:,.0f} img/s enc/dec, "
                f"{'pixel-exact' if r['verified'] else 'MISMATCH'}")
        measured = [c for c in r["rivals"] if c.get("bpd") is not None]
        table = [(r["actual_bpd"], ours)] + [
            (c["bpd"], f"{c['codec'] + ' (' + c['protocol'].replace('_', ' ') + ', ' + c['input'] + ')':<40} "
                       f"{c['total_bytes']:>9,} {c['bpd']:>8.4f}") for c in measured]
        lines += [line for _, line in sorted(table, key=lambda t: t[0])]
        lines += [f"{c['codec']:<40} {'-':>9} {'-':>8}  skipped: {c['skipped']}"
                  for c in r["rivals"] if c.get("bpd") is None]
        lines.append("")
    return "\n".join(lines)
