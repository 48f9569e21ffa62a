"""Summarise what a `benchmarks/gpu_study.py all` run produced (issue 14): the training curves of the
three mlp-paper runs (1k / 10k / 60k mnist-bin images) and the Reverse Half-Asleep fine-tunings
(test -ELBO gain over the baseline encoder, share of the baseline's AIGG removed, train -ELBO),
from the run's files alone (train_log.jsonl, checkpoint configs, refit states, per-image -ELBO
arrays), into results.json, README tables and figures.

    python benchmarks/gpu_study_report.py --runs runs/gpu1/runs --out benchmarks/results/gpu-study
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae.gaps import paired_gap, stderr  # noqa: E402

RUNS = {"seed-1k": 1_000, "seed-10k": 10_000, "seed-full": 60_000}
VARIANTS = ("control", "rha-prior", "rha-recon")
DIMS = 784


def training(runs: Path) -> dict:
    out = {}
    for name, n in RUNS.items():
        d = runs / name
        if not (d / "train_log.jsonl").is_file():
            continue
        log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines() if line.strip()]
        ckpts = sorted(d.glob("checkpoints/epoch_*/config.json"))
        out[name] = {"train_images": n, "epochs_done": log[-1]["epoch"] if log else 0,
                     "train_loss_bpd": [[r["epoch"], r["train_loss_bpd"]] for r in log],
                     "checkpoints": [{"epoch": c["epoch"], "test_neg_elbo_bpd": c["metrics"]["test_neg_elbo_bpd"],
                                      "train_loss_bpd": c["metrics"]["train_loss_bpd"],
                                      "weights_sha256": c["weights_sha256"]}
                                     for c in (json.loads(p.read_text()) for p in ckpts)],
                     "run": json.loads((d / "run.json").read_text())}
    return out


def rha(runs: Path) -> list[dict]:
    rows = []
    for mdir in sorted((runs / "rha").glob("*")):
        if not (mdir / "baseline_test_elbo.npy").is_file():
            continue
        base = np.load(mdir / "baseline_test_elbo.npy")
        refit = np.load(mdir / "refit_test_elbo.npy")
        base_tr = np.load(mdir / "baseline_train_elbo.npy") if (mdir / "baseline_train_elbo.npy").is_file() else None
        ref_state = json.loads((mdir / "refit-test" / "state.json").read_text())
        aigg_base = paired_gap(base, refit)
        for v in VARIANTS:
            per_seed = []
            for s in (0, 1, 2):
                f = mdir / f"{v}-seed{s}_test_elbo.npy"
                if not f.is_file():
                    continue
                mine = np.load(f)
                st = json.loads((mdir / f"{v}-seed{s}" / "state.json").read_text())
                gain = paired_gap(base, mine)
                r = {"seed": s, "epochs": st["epochs"], "test_elbo_bpd": mine.mean() / DIMS,
                     "gain_bpd": gain[0] / DIMS, "gain_se_bpd": gain[1] / DIMS,
                     "aigg_removed_share": gain[0] / aigg_base[0] if aigg_base[0] else None}
                tr = mdir / f"{v}-seed{s}_train_elbo.npy"
                if tr.is_file():
                    t = np.load(tr)
                    r["train_elbo_bpd"] = t.mean() / DIMS
                    if base_tr is not None:
                        r["train_gain_bpd"] = paired_gap(base_tr, t)[0] / DIMS
                per_seed.append(r)
            if not per_seed:
                continue
            g = np.array([r["gain_bpd"] for r in per_seed])
            sh = np.array([r["aigg_removed_share"] for r in per_seed], dtype=float)
            rows.append({"model": mdir.name, "variant": v, "epochs": per_seed[0]["epochs"], "seeds": len(per_seed),
                         "n_test_images": len(base),
                         "baseline_test_elbo_bpd": base.mean() / DIMS, "baseline_test_elbo_se_bpd": stderr(base) / DIMS,
                         "refit_test_elbo_bpd": refit.mean() / DIMS, "aigg_bpd": aigg_base[0] / DIMS,
                         "aigg_se_bpd": aigg_base[1] / DIMS, "refit_epochs": ref_state["epochs"],
                         "refit_converged": ref_state["converged"],
                         "refit_rel_change_last10pct": ref_state["rel_change_last10"],
                         "gain_bpd": float(g.mean()),
                         "gain_seed_se_bpd": float(g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else None,
                         "gain_image_se_bpd": float(np.mean([r["gain_se_bpd"] for r in per_seed])),
                         "aigg_removed_share": float(sh.mean()),
                         "aigg_removed_share_seed_se": float(sh.std(ddof=1) / math.sqrt(len(sh))) if len(sh) > 1 else None,
                         "train_gain_bpd": float(np.mean([r.get("train_gain_bpd", np.nan) for r in per_seed])),
                         "per_seed": per_seed})
    return rows


def plot_training(train: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = {"seed-1k": "tab:red", "seed-10k": "tab:orange", "seed-full": "tab:blue"}
    for name, t in train.items():
        e, v = zip(*t["train_loss_bpd"])
        ax.plot(e, v, color=colours[name], lw=1, ls="--", label=f"{t['train_images']:,} images: train loss")
        ce = [c["epoch"] for c in t["checkpoints"]]
        cv = [c["test_neg_elbo_bpd"] for c in t["checkpoints"]]
        ax.plot(ce, cv, color=colours[name], marker="o", ms=3, lw=1.5, label=f"{t['train_images']:,} images: test -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits per dimension")
    ax.set_yscale("log")
    ax.set_title("mlp-paper on mnist-bin: train loss and test -ELBO (full 10k test set, 1 sample)\n"
                 "trained on one GPU, 3 runs stacked; the 60k run stopped at the session's deadline", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(train: dict, rows: list[dict]) -> str:
    out = ["## Training (mlp-paper, mnist-bin, Adam 1e-3, batch 100, seed 0)", "",
           "| run | epochs done | epoch | train loss bpd | test -ELBO bpd |", "|---|---:|---:|---:|---:|"]
    for name, t in train.items():
        for c in t["checkpoints"]:
            out.append(f"| {t['train_images']:,} images | {t['epochs_done']} | {c['epoch']} | "
                       f"{c['train_loss_bpd']:.5f} | {c['test_neg_elbo_bpd']:.5f} |")
    out += ["", "## Reverse Half-Asleep (encoder fine-tuning, decoder frozen; 3 seeds; full 10k test set, "
            "10-sample -ELBO)", "",
            "gain = baseline test -ELBO - fine-tuned test -ELBO (positive: better), mean over seeds ± SE over seeds "
            "(mean per-image paired SE in brackets); AIGG share removed = gain / (baseline - refit test -ELBO).", "",
            "| model | variant | epochs | gain bpd | AIGG share removed | train -ELBO change bpd | baseline AIGG bpd |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        se = f" ± {r['gain_seed_se_bpd']:.5f}" if r["gain_seed_se_bpd"] is not None else ""
        sse = f" ± {r['aigg_removed_share_seed_se']:.3f}" if r["aigg_removed_share_seed_se"] is not None else ""
        out.append(f"| {r['model']} | {r['variant']} | {r['epochs']} of 100 | {r['gain_bpd']:+.5f}{se} "
                   f"[{r['gain_image_se_bpd']:.5f}] | {r['aigg_removed_share']:+.3f}{sse} | "
                   f"{r['train_gain_bpd']:+.5f} | {r['aigg_bpd']:.5f} ± {r['aigg_se_bpd']:.5f} "
                   f"({r['refit_epochs']} refit epochs) |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/gpu1/runs")
    ap.add_argument("--out", default="benchmarks/results/gpu-study")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = training(runs)
    rows = rha(runs)
    status = json.loads((runs / "gpu_study_status.json").read_text()) if (runs / "gpu_study_status.json").is_file() else {}
    (out / "results.json").write_text(json.dumps({"training": train, "rha": rows, "status": status},
                                                 indent=1, default=float) + "\n")
    (out / "tables.md").write_text(markdown(train, rows))
    plot_training(train, out / "training.png")
    print(markdown(train, rows))


if __name__ == "__main__":
    main()
