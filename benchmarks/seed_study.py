"""The seed experiment at full scale (issue 14): EGG = AIGG + GMGG of mlp-paper trained on the full
60k mnist-bin training set for 1,000 epochs, at epochs 10, 50, 100, 200, ..., 1000, with the encoder
refit on the full 10k test set (decoder frozen) until converged (at most 1,000 epochs), the same
gaps from real bitstreams on the default (exact, portable) coder path with every stream decoded
and verified, chain-start bits and the 2^-24 pixel floor apart, and the split of the test code
length into -log p(x) (IWAE) + approximation gap + amortization gap at every checkpoint.

The training runs separately (it writes a checkpoint every 10 epochs):
    OMP_NUM_THREADS=1 vaecompress train -d mnist-bin -m mlp-paper -e 1000 --save-every 10 \\
        -o runs/seed-full --device cpu --threads 1
This driver measures each wanted checkpoint as soon as it appears, oldest first, and waits for
the next one; every result is stored as it is finished (RUN/gaps/<settings hash>/epoch_NNNN.json,
with the refit encoder's weights), an interrupted refit continues from its last saved epoch, and
finished checkpoints are skipped, so after any interruption the same command resumes:
    nohup .venv/bin/python benchmarks/seed_study.py --run runs/seed-full > logs/seed-study.log 2>&1 &
After each checkpoint it writes gaps.json, gaps.csv, gaps.md and gaps.png (the note's figure with
error bars) next to the records. `--dry-run` lists what is done and what is left.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.checkpoint import read_config  # noqa: E402
from vaecompress_cli import render_gaps as render  # noqa: E402

DEFAULT_EPOCHS = "10,50," + ",".join(str(e) for e in range(100, 1001, 100))


def study_config(args) -> G.GapsConfig:
    return G.GapsConfig(refit_until_converged=True, refit_tol=args.refit_tol, refit_max_epochs=args.refit_max_epochs,
                        train_eval_size=args.train_eval_size or None, test_images=args.test_images, split="all",
                        split_images=args.split_images, iwae_k=args.iwae, local_steps=args.local_steps,
                        chains=args.chains, elbo_samples=args.samples, seed=args.seed)


def log(msg: str) -> None:
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}] {msg}", flush=True)


def available(run: Path) -> dict[int, Path]:
    try:
        return dict(G.list_checkpoints(run))
    except Exception:  # no checkpoint yet
        return {}


def stored_records(run: Path, cfg: G.GapsConfig, data_dir) -> tuple[Path, dict, dict, list[dict]]:
    """(store, images info, a checkpoint's config, every stored record for these settings), by epoch.

    A record whose checkpoint is on disk counts only if it was measured on those weights; one whose
    checkpoint is not (a later session, a pruned run: see seed_state.py) counts as it stands."""
    ckpts = available(run)
    config = read_config(next(iter(ckpts.values())))
    images = G.run_images(run, config, cfg, data_dir)
    sdir = G.store_dir(run, cfg, images.info)
    recs = []
    for p in sorted(sdir.glob("epoch_*.json")):
        epoch = int(p.stem.split("_")[1])
        rec = G.load_record(sdir, epoch, read_config(ckpts[epoch])["weights_sha256"] if epoch in ckpts else None)
        if rec is not None:
            recs.append({**rec, "from_store": True})
    return sdir, images.info, config, recs


def stored_epochs(run: Path, cfg: G.GapsConfig, data_dir) -> list[int]:
    return [r["epoch"] for r in stored_records(run, cfg, data_dir)[3]]


def write_summary(run: Path, cfg: G.GapsConfig, data_dir, command: str) -> Path:
    """gaps.{json,csv,md,png} over every stored checkpoint, not only those of this invocation."""
    sdir, info, config, recs = stored_records(run, cfg, data_dir)
    res = G.assemble(run, dataclasses.replace(cfg, epochs=tuple(r["epoch"] for r in recs)), info, config, recs,
                     sum(r.get("checkpoint_seconds") or 0.0 for r in recs), sdir)
    res["command"] = command
    render.write_json(res, sdir / "gaps.json")
    render.write_csv(res, sdir / "gaps.csv")
    (sdir / "gaps.md").write_text(render.markdown(res) + "\n")
    render.plot(res, sdir / "gaps.png")
    return sdir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/seed-full", help="training run directory")
    ap.add_argument("--epochs", default=DEFAULT_EPOCHS, help="checkpoint epochs to measure, in this order")
    ap.add_argument("--refit-tol", type=float, default=1e-4)
    ap.add_argument("--refit-max-epochs", type=int, default=1000)
    ap.add_argument("--test-images", type=int, default=None, help="seeded random subset (default: all 10k)")
    ap.add_argument("--train-eval-size", type=int, default=10000,
                    help="a seeded random subset of the training images (SE included; 0: all of them)")
    ap.add_argument("--split-images", type=int, default=2000)
    ap.add_argument("--iwae", type=int, default=1000)
    ap.add_argument("--local-steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--chains", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--poll", type=float, default=60.0, help="seconds between looks for a new checkpoint")
    ap.add_argument("--max-wait", type=float, default=24 * 3600.0, help="give up waiting after this many seconds")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dry-run", action="store_true", help="say what is done and what is left, measure nothing")
    ap.add_argument("--summary", action="store_true",
                    help="only rewrite gaps.{json,csv,md,png} from every stored checkpoint, measure nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = study_config(args)
    cfg.validate()
    wanted = [int(e) for e in args.epochs.split(",")]
    command = "python " + " ".join(sys.argv)
    log(f"seed study on {run}: epochs {wanted}; refit {G.refit_description(cfg)}; {args.threads} thread(s)")

    if args.summary:
        out = write_summary(run, cfg, args.data_dir, command)
        log(f"wrote {out}/gaps.{{json,csv,md,png}} (epochs {stored_epochs(run, cfg, args.data_dir)})")
        return
    done: list[int] = []
    for epoch in wanted:
        waited = 0.0
        while epoch not in available(run):
            if args.dry_run or waited > args.max_wait:
                log(f"epoch {epoch}: no checkpoint yet{'' if args.dry_run else '; gave up waiting'}")
                break
            time.sleep(args.poll)
            waited += args.poll
        ckpts = available(run)
        if epoch not in ckpts:
            if args.dry_run:
                continue
            break
        if args.dry_run:
            images = G.run_images(run, read_config(ckpts[epoch]), cfg, args.data_dir)
            sdir = G.store_dir(run, cfg, images.info)
            rec = G.load_record(sdir, epoch, read_config(ckpts[epoch])["weights_sha256"])
            state = sdir / f"epoch_{epoch:04d}.refit" / G.REFIT_STATE
            part = json.loads(state.read_text())["epochs"] if state.is_file() else 0
            log(f"epoch {epoch}: {'done' if rec else f'to do (refit at epoch {part})'}; store {sdir}")
            continue
        t0 = time.time()

        def stage(done_, total, text):
            log(text)

        res = G.run_gaps(run, dataclasses.replace(cfg, epochs=(epoch,)), data_dir=args.data_dir, on_stage=stage)
        rec = res["checkpoints"][0]
        log(f"epoch {epoch}: {'read from the store' if rec['from_store'] else f'measured in {time.time() - t0:.0f} s'}")
        log(render.header(cfg.code))
        log(render.row(rec))
        done.append(epoch)
        out = write_summary(run, cfg, args.data_dir, command)
        log(f"wrote {out}/gaps.{{json,csv,md,png}}")
    if not args.dry_run:
        log("finished" if len(done) == len(wanted) else f"stopped with {len(done)} of {len(wanted)} checkpoints done")


if __name__ == "__main__":
    main()
