#!/usr/bin/env bash
# Carry the seed experiment (1,000-epoch mlp-paper run + its gaps study) across sessions.
# Sessions start from a fresh clone, so the run directory (runs/seed-full, git-ignored) is lost;
# `save` copies what resuming needs into the repository, `restore` puts it back.
#   save:    resume state (weights + Adam), run.json, train_log.jsonl, the checkpoints the study still
#            needs (10, 50, 100, 200, ..., 1000 that have no finished gaps result), and the gaps store
#            (finished epoch results and in-progress refit state).
#   restore: the reverse; then re-run the training and study commands in benchmarks/results/seed-study/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/seed-full
STATE=benchmarks/results/seed-study/state
case "${1:-}" in
  save)
    rm -rf "$STATE.tmp"; mkdir -p "$STATE.tmp/checkpoints"
    cp -r "$RUN/resume" "$RUN/run.json" "$RUN/train_log.jsonl" "$STATE.tmp/"
    [ -d "$RUN/gaps" ] && cp -r "$RUN/gaps" "$STATE.tmp/"
    for e in 10 50 100 200 300 400 500 600 700 800 900 1000; do
      d=$(printf "epoch_%04d" "$e")
      [ -d "$RUN/checkpoints/$d" ] || continue
      ls "$RUN"/gaps/*/"$d.json" >/dev/null 2>&1 && continue   # already measured
      cp -r "$RUN/checkpoints/$d" "$STATE.tmp/checkpoints/"
    done
    rm -rf "$STATE"; mv "$STATE.tmp" "$STATE"
    du -sh "$STATE";;
  restore)
    [ -d "$STATE" ] || { echo "no saved state in $STATE" >&2; exit 1; }
    mkdir -p "$RUN/checkpoints"
    cp -r "$STATE/resume" "$STATE/run.json" "$STATE/train_log.jsonl" "$RUN/"
    [ -d "$STATE/gaps" ] && cp -r "$STATE/gaps" "$RUN/"
    cp -r "$STATE/checkpoints/." "$RUN/checkpoints/"
    echo "restored into $RUN (epoch $(tail -1 "$RUN/train_log.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])'))";;
  *) echo "usage: $0 save|restore" >&2; exit 2;;
esac
