"""Text tables, Markdown and the plot of `vaecompress gaps` results (the library only computes)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .render import write_json  # noqa: F401  (re-exported: the gaps writers in one place)


def _decimals(se: float, digits: int) -> int:
    """`digits`, or more (at most 3 more) until a nonzero SE shows one significant digit: "±0.0000"
    would say the SE is zero."""
    d = digits
    while 0 < abs(se) < 0.5 * 10.0 ** -d and d < digits + 3:
        d += 1
    return d


def _pm(r: dict, key: str, digits: int = 4) -> str:
    v, se = r.get(f"{key}_bpd"), r.get(f"{key}_se_bpd")
    if v is None:
        return "-"
    if se is None or se != se:
        return f"{v:.{digits}f}"
    d = _decimals(se, digits)
    return f"{v:.{d}f}±{se:.{d}f}"


def _share(r: dict) -> str:
    """AIGG/EGG ± SE in percent."""
    d = _decimals(100 * r["aigg_share_of_egg_se"], 0)
    return f"{100 * r['aigg_share_of_egg']:.{d}f}±{100 * r['aigg_share_of_egg_se']:.{d}f}%"


def setting(result: dict) -> str:
    """One line: what was measured (dataset, training images, refit, test subset)."""
    n, n_te, n_all = result.get("train_subset_size"), result.get("test_n_images"), result.get("test_split_n_images")
    test = f"all {n_te} test images" if n_te == n_all else f"a seeded random {n_te} of the {n_all} test images"
    return (f"{result.get('dataset')}, {n} training images{' (all)' if result.get('train_subset_full') else ''}; "
            f"encoder refit {result.get('refit')}; {test}")


def header(coded: bool = True) -> str:
    h = (f"{'epoch':>6} {'train':>15} {'test':>15} {'refit':>15} {'EGG':>15} {'AIGG':>15} {'GMGG':>15} "
         f"{'AIGG/EGG':>9} {'refit ep':>9}")
    if coded:
        h += f"   {'EGG*':>15} {'AIGG*':>15} {'GMGG*':>15} {'EGG* w/o 1-time':>15}"
    return h


def row(r: dict) -> str:
    """One checkpoint: -ELBO gaps ± SE, and real-bit gaps ± SE (*) when measured."""
    conv = r.get("refit_converged")
    ep = f"{r.get('refit_epochs_run', '')}{'' if conv is None else ('c' if conv else '!')}"
    s = (f"{r['epoch']:>6} {_pm(r, 'train_elbo'):>15} {_pm(r, 'test_elbo'):>15} {_pm(r, 'test_refit_elbo'):>15} "
         f"{_pm(r, 'egg'):>15} {_pm(r, 'aigg'):>15} {_pm(r, 'gmgg'):>15} "
         f"{100 * r['aigg_share_of_egg']:8.1f}% {ep:>9}")
    if "egg_actual_bpd" in r:
        s += (f"   {_pm(r, 'egg_actual'):>15} {_pm(r, 'aigg_actual'):>15} {_pm(r, 'gmgg_actual'):>15} "
              f"{r['egg_actual_excl_onetime_bpd']:15.4f}")
    return s


def notes(result: dict) -> str:
    """The lines under the table: selections, units, refit convergence, coder effects."""
    recs = result["checkpoints"]
    lines = [f"setting: {setting(result)}",
             f"train images: {result['train_eval_selection']}; test images: {result['test_selection']}",
             "bpd ± standard error over images (paired where the same images are compared); * = real .vae files "
             "(8 x file size, each decoded and verified); w/o 1-time: without chain-start bits and container header; "
             "refit ep: epochs run (c = converged, ! = stopped at the cap)"]
    if recs and "egg_actual_bpd" in recs[-1]:
        r = recs[-1]
        lines.append(
            f"epoch {r['epoch']}: chain-start bits add {r['egg_initial_bpd']:+.5f} bpd to EGG* (train file "
            f"{r['train_initial_bpd']:.5f}, test {r['test_initial_bpd']:.5f} bpd), container headers "
            f"{r['egg_container_bpd']:+.5f}; the 2^-24 pixel floor takes "
            f"{r['test_floor_excess_bpd']:.5f} (test) and {r['train_floor_excess_bpd']:.5f} (train) bpd off the "
            f"-ELBO; capped-ELBO gaps: EGG {r['egg_floored_bpd']:.4f}, AIGG {r['aigg_floored_bpd']:.4f}, "
            f"GMGG {r['gmgg_floored_bpd']:.4f}")
    return "\n".join(lines)


def split_text(s: dict) -> str:
    """The -log p(x) + approximation + amortization split of the test -ELBO (± paired SE)."""
    return (f"split at epoch {s['epoch']} ({s['split_selection']}, bpd ± SE):\n"
            f"  test -ELBO (training encoder)  {_pm(s, 'split_test_elbo')}\n"
            f"  = -log p(x) [IWAE K={s['iwae_k']}]     {_pm(s, 'neg_log_px')}\n"
            f"  + approximation gap            {_pm(s, 'approximation_gap')}  (per-image Gaussian q - IWAE)\n"
            f"  + amortization gap             {_pm(s, 'amortization_gap')}  (test -ELBO - per-image q)\n"
            f"      of which AIGG              {_pm(s, 'split_aigg')}  (training - refit encoder)\n"
            f"      and refit encoder's gap    {_pm(s, 'refit_amortization_gap')}  (refit encoder - per-image q)")


def markdown(result: dict) -> str:
    """Markdown tables of a gaps result (for benchmarks/results READMEs)."""
    recs = result["checkpoints"]
    out = [f"Setting: {setting(result)}. bpd ± standard error over images.", "",
           "| epoch | train | test | test refit | EGG | AIGG | GMGG | AIGG/EGG | refit epochs | converged |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|"]
    for r in recs:
        out.append(f"| {r['epoch']} | {_pm(r, 'train_elbo')} | {_pm(r, 'test_elbo')} | {_pm(r, 'test_refit_elbo')} | "
                   f"{_pm(r, 'egg')} | {_pm(r, 'aigg')} | {_pm(r, 'gmgg')} | "
                   f"{_share(r)} | "
                   f"{r.get('refit_epochs_run')} | {r.get('refit_converged')} "
                   f"(Δ {r.get('refit_rel_change_last10pct') or 0:.1e}) |")
    if recs and "egg_actual_bpd" in recs[0]:
        out += ["", "Real .vae files (*: 8 x file size; every file decoded and verified), their one-time costs apart "
                    "(chain-start bits, container header), and the gaps of the -ELBO capped at 24 bits per pixel "
                    "(the coder's 2^-24 floor):", "",
                "| epoch | train* | test* | refit* | EGG* | AIGG* | GMGG* | EGG* w/o one-time | chain start in EGG* "
                "| header in EGG* | EGG capped | test floor excess |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in recs:
            out.append(f"| {r['epoch']} | {_pm(r, 'train_actual')} | {_pm(r, 'test_actual')} | "
                       f"{_pm(r, 'test_refit_actual')} | {_pm(r, 'egg_actual')} | {_pm(r, 'aigg_actual')} | "
                       f"{_pm(r, 'gmgg_actual')} | {r['egg_actual_excl_onetime_bpd']:.4f} | "
                       f"{r['egg_initial_bpd']:+.5f} | {r['egg_container_bpd']:+.5f} | {_pm(r, 'egg_floored')} | "
                       f"{r['test_floor_excess_bpd']:.4f} |")
    split = [r for r in recs if "test_iwae_bpd" in r]
    if split:
        out += ["", f"Split of the test -ELBO ({split[0]['split_selection']}; IWAE K = {split[0]['iwae_k']}):", "",
                "| epoch | test -ELBO | -log p(x) | approximation gap | amortization gap | of which AIGG | "
                "refit encoder's residual |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in split:
            out.append(f"| {r['epoch']} | {_pm(r, 'split_test_elbo')} | {_pm(r, 'neg_log_px')} | "
                       f"{_pm(r, 'approximation_gap')} | {_pm(r, 'amortization_gap')} | {_pm(r, 'split_aigg')} | "
                       f"{_pm(r, 'refit_amortization_gap')} |")
    return "\n".join(out)


# one colour per quantity, never reused with another meaning
COLOURS = {"train": "tab:blue", "test": "tab:red", "test_refit": "tab:green", "iwae": "black",
                "local_opt": "tab:pink", "egg": "tab:purple", "aigg": "tab:orange", "gmgg": "tab:brown"}


def plot(result: dict, path) -> None:
    """Two panels like the note's figure: -ELBO (train, test, test with the refit encoder) vs
    epoch, and the gaps vs epoch; error bars = ± 1 standard error; crosses = real bitstreams."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["checkpoints"]
    ep = np.array([r["epoch"] for r in recs])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    col = COLOURS
    names = {"train": "train (φ_N)", "test": "test (φ_N)", "test_refit": "test, refit encoder (φ_M)"}

    def series(key):
        return (np.array([r[f"{key}_bpd"] for r in recs]), np.array([r.get(f"{key}_se_bpd", 0.0) for r in recs]))

    for s, label in names.items():
        y, e = series(f"{s}_elbo")
        a1.errorbar(ep, y, yerr=e, fmt="-o", color=col[s], ms=3, capsize=3, label=f"{label}: -ELBO")
        if all(f"{s}_actual_bpd" in r for r in recs):
            y, e = series(f"{s}_actual")
            a1.errorbar(ep, y, yerr=e, fmt="x", color=col[s], ms=8, capsize=3, label=f"{label}: real bits")
    split = [r for r in recs if "test_iwae_bpd" in r]
    if split:
        se = np.array([r["epoch"] for r in split])
        sel = f"{split[0]['split_n_images']} test images"
        for key, c, label in (("test_local_opt", "local_opt", f"test, per-image q ({sel})"),
                              ("test_iwae", "iwae", f"test -log p(x), IWAE K={split[0]['iwae_k']} ({sel})")):
            a1.errorbar(se, [r[f"{key}_bpd"] for r in split], yerr=[r[f"{key}_se_bpd"] for r in split],
                        fmt="s--", mfc="none", color=col[c], ms=5, capsize=3, label=label)
    a1.set_xlabel("training epoch")
    a1.set_ylabel("bits per dimension")
    a1.set_title("code length (± 1 SE over images)", fontsize=10)
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    for g in ("egg", "aigg", "gmgg"):
        y, e = series(g)
        a2.errorbar(ep, y, yerr=e, fmt="-o", color=col[g], ms=3, capsize=3, label=f"{g.upper()} (-ELBO)")
        if all(f"{g}_actual_bpd" in r for r in recs):
            y, e = series(f"{g}_actual")
            a2.errorbar(ep, y, yerr=e, fmt="x--", color=col[g], ms=8, capsize=3, alpha=0.8,
                        label=f"{g.upper()}* (real bits)")
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xlabel("training epoch")
    a2.set_ylabel("gap (bpd, larger = worse on test)")
    a2.set_title("EGG = AIGG + GMGG (± 1 SE)", fontsize=10)
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.suptitle(setting(result), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


CSV_COLUMNS = ["epoch", "train_elbo_bpd", "train_elbo_se_bpd", "test_elbo_bpd", "test_elbo_se_bpd",
               "test_refit_elbo_bpd", "test_refit_elbo_se_bpd", "egg_bpd", "egg_se_bpd", "aigg_bpd", "aigg_se_bpd",
               "gmgg_bpd", "gmgg_se_bpd", "aigg_share_of_egg", "aigg_share_of_egg_se",
               "egg_floored_bpd", "aigg_floored_bpd", "gmgg_floored_bpd",
               "train_actual_bpd", "test_actual_bpd", "test_refit_actual_bpd",
               "egg_actual_bpd", "egg_actual_se_bpd", "aigg_actual_bpd", "aigg_actual_se_bpd",
               "gmgg_actual_bpd", "gmgg_actual_se_bpd", "egg_actual_excl_onetime_bpd", "aigg_actual_excl_onetime_bpd",
               "gmgg_actual_excl_onetime_bpd", "egg_initial_bpd", "egg_container_bpd", "train_initial_bpd",
               "test_initial_bpd", "test_refit_initial_bpd", "train_container_bpd", "test_container_bpd",
               "test_floor_excess_bpd", "test_local_opt_bpd", "test_iwae_bpd", "approximation_gap_bpd",
               "amortization_gap_bpd", "split_n_images", "refit_epochs_run", "refit_converged",
               "refit_rel_change_last10pct", "refit_seconds", "checkpoint_seconds"]


def write_csv(result: dict, path) -> None:
    """One row per checkpoint, the CSV_COLUMNS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in result["checkpoints"]:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
