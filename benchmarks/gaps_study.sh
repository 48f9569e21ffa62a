#!/usr/bin/env bash
# Generalization-gap study (SPEC §7, issue 4): how much of a VAE's test/train gap in code length is
# the encoder's (AIGG) and how much the decoder's (GMGG), as -ELBO estimates and real bitstreams.
#
# Two runs of the gaps paper's architecture (mlp-paper: 3x500 ReLU MLP, z=10, Bernoulli) on
# mnist-bin, small enough to overfit clearly on one CPU core:
#   A: 1,000 training images, 500 epochs, checkpoint every 50   (strong overfitting)
#   B: 10,000 training images, 100 epochs, checkpoint every 25  (milder)
# then `vaecompress gaps` on each with the corrected protocol (issue 14): encoder refit on the
# whole test set until converged (relative change < 1e-4 over the last 10% of the epochs, at most
# 1,000), every gap with its standard error, the -log p(x) / approximation / amortization split at
# every checkpoint on a seeded random 1,000 of the test images (IWAE K=1000, 300 local steps).
# Every checkpoint's result is kept in RUN/gaps/<hash>/ as it is measured: re-running resumes.
# Several hours on one core (the refits dominate).
#
# Usage:  benchmarks/gaps_study.sh [train1000|train10000 ...]   (from the repository root; resumes
#         runs; default both, one after the other). `vaecompress gaps` already measures one
#         checkpoint per core (-j), so two studies at once share the cores; to finish one first,
#         run the other under `nice -n 19`.
# Env:    RUNS (default runs/), OUT (default benchmarks/results/gaps), VAECOMPRESS_DATA
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
VC=${VC:-.venv/bin/vaecompress}
RUNS=${RUNS:-runs}
OUT=${OUT:-benchmarks/results/gaps}
mkdir -p "$OUT"
GAPS_ARGS=(--refit-until-converged --refit-tol 1e-4 --refit-max-epochs 1000 --split all --split-images 1000
           --iwae 1000 --local-steps 300 --samples 10 --chains 10 --threads 1 -q)

study() {  # name train_size epochs save_every
    local name=$1 n=$2 e=$3 s=$4
    local t0=$SECONDS
    echo "== $name: train $n images, $e epochs ($(date -u +%FT%TZ))"
    "$VC" train -d mnist-bin -m mlp-paper --train-size "$n" -e "$e" --save-every "$s" --seed 0 \
        -o "$RUNS/gaps-study-$name" -q
    echo "   trained in $((SECONDS - t0)) s"
    t0=$SECONDS
    "$VC" gaps "$RUNS/gaps-study-$name" "${GAPS_ARGS[@]}" \
        --json "$OUT/$name.json" --csv "$OUT/$name.csv" --plot "$OUT/$name.png"
    local store  # the run's store for these settings, as the JSON just written names it
    store=$("${VC%/vaecompress}/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["store_dir"])' "$OUT/$name.json")
    cp "$store/gaps.md" "$OUT/$name.md"  # the tables
    echo "   gaps in $((SECONDS - t0)) s"
}

NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(train1000 train10000)
for name in "${NAMES[@]}"; do
    case $name in
        train1000)  study train1000 1000 500 50 ;;
        train10000) study train10000 10000 100 25 ;;
        *) echo "gaps_study.sh: unknown study '$name' (expected train1000 or train10000)" >&2; exit 2 ;;
    esac
done
echo "== done ($(date -u +%FT%TZ)); results in $OUT/"
