"""Carry the CPU seed study (issue 14) across sessions whose work tree is laid anew.

`runs/` is not kept between sessions on these machines, and the study needs ~3 h of training and
~40 min per checkpoint on one core, more than one session. Training is bit-reproducible (same
seed, one thread: the retrained epoch-1..N losses equal the committed log to the last digit, and
the checkpoint weights hash equals the one in each stored record), so what must survive is only:

* the resume state (newest weights + Adam moments, ~22 MB), so training continues where it was;
* checkpoints of wanted epochs that are not measured yet (~7 MB each).
The records of the checkpoints already measured travel in the committed summary (gaps.json holds
every record whole); `restore --records` puts them back into the run's store.

    python benchmarks/seed_state.py save --run runs/seed-full --to benchmarks/results/seed-study/state
    python benchmarks/seed_state.py restore --from benchmarks/results/seed-study/state --run runs/seed-full \\
        --records benchmarks/results/seed-study/cpu-run/gaps.json

`restore` refuses to go backwards (a run whose resume epoch is newer than the saved one), and
`--records` writes the per-checkpoint records of a committed gaps.json back into the run's store,
so `seed_study.py` skips them and its summary covers them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbans_vae import gaps as G  # noqa: E402
from bbans_vae.checkpoint import read_config, write_json_atomic  # noqa: E402
from seed_study import DEFAULT_EPOCHS  # noqa: E402  (this script's folder is on sys.path)


def resume_epoch(run: Path) -> int:
    p = run / "resume" / "config.json"
    return int(json.loads(p.read_text())["epoch"]) if p.is_file() else 0


def measured(run: Path) -> dict[int, str]:
    """epoch -> weights hash of every record in the run's gaps store (any settings)."""
    out = {}
    for p in sorted((run / "gaps").glob("*/epoch_*.json")):
        rec = json.loads(p.read_text())
        out[int(rec["epoch"])] = rec["checkpoint_weights_sha256"]
    return out


def save(run: Path, dest: Path, wanted: list[int]) -> None:
    if not (run / "resume" / "config.json").is_file():
        sys.exit(f"{run}: no resume state to save")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("run.json", "train_log.jsonl"):
        shutil.copy2(run / name, dest / name)
    shutil.copytree(run / "resume", dest / "resume")
    done = measured(run)
    kept = []
    for epoch, ckpt in G.list_checkpoints(run):
        if epoch in wanted and epoch not in done:
            shutil.copytree(ckpt, dest / "checkpoints" / ckpt.name)
            kept.append(epoch)
    print(f"saved {run} at epoch {resume_epoch(run)} to {dest}: checkpoints {kept} not measured yet "
          f"(measured: {sorted(done)}; their records travel in the committed gaps.json)")


def restore(src: Path, run: Path, records: list[Path]) -> None:
    if resume_epoch(run) > resume_epoch(src):
        sys.exit(f"{run} is at epoch {resume_epoch(run)}, newer than the saved {resume_epoch(src)}; nothing restored")
    run.mkdir(parents=True, exist_ok=True)
    for name in ("run.json", "train_log.jsonl"):
        shutil.copy2(src / name, run / name)
    if (run / "resume").exists():
        shutil.rmtree(run / "resume")
    shutil.copytree(src / "resume", run / "resume")
    for ckpt in sorted((src / "checkpoints").glob("epoch_*")):
        if not (run / "checkpoints" / ckpt.name).exists():
            shutil.copytree(ckpt, run / "checkpoints" / ckpt.name)
    put_records(run, records)
    print(f"restored {run} at epoch {resume_epoch(run)}; records {sorted(measured(run))}")


def put_records(run: Path, summaries: list[Path]) -> None:
    """The per-checkpoint records of committed gaps.json summaries, back into the run's store."""
    for path in summaries:
        res = json.loads(path.read_text())
        sdir = run / "gaps" / Path(res["store_dir"]).name
        sdir.mkdir(parents=True, exist_ok=True)
        for rec in res["checkpoints"]:
            target = sdir / f"epoch_{int(rec['epoch']):04d}.json"
            if not target.exists():
                write_json_atomic(target, {k: v for k, v in rec.items() if k != "from_store"})


def check(run: Path) -> None:
    """Every checkpoint whose epoch has a stored record must have that record's weights."""
    done = measured(run)
    for epoch, ckpt in G.list_checkpoints(run):
        if epoch in done:
            ok = read_config(ckpt)["weights_sha256"] == done[epoch]
            print(f"epoch {epoch}: weights {'match' if ok else 'DIFFER from'} the stored record")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("--run", type=Path, default=Path("runs/seed-full"))
    s.add_argument("--to", type=Path, required=True)
    s.add_argument("--epochs", default=DEFAULT_EPOCHS, help="the study's wanted checkpoint epochs")
    r = sub.add_parser("restore")
    r.add_argument("--from", dest="src", type=Path, required=True)
    r.add_argument("--run", type=Path, default=Path("runs/seed-full"))
    r.add_argument("--records", type=Path, nargs="*", default=[])
    p = sub.add_parser("records", help="only put the records of committed gaps.json files into the store")
    p.add_argument("--run", type=Path, default=Path("runs/seed-full"))
    p.add_argument("summaries", type=Path, nargs="+")
    c = sub.add_parser("check", help="compare retrained checkpoints' weights with the stored records")
    c.add_argument("--run", type=Path, default=Path("runs/seed-full"))
    args = ap.parse_args()
    if args.cmd == "save":
        save(args.run, args.to, [int(e) for e in args.epochs.split(",")])
    elif args.cmd == "restore":
        restore(args.src, args.run, args.records)
    elif args.cmd == "records":
        put_records(args.run, args.summaries)
        print(f"{args.run}: records {sorted(measured(args.run))}")
    else:
        check(args.run)


if __name__ == "__main__":
    main()
