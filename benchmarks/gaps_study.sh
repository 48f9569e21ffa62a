#!/usr/bin/env bash
# Generalization-gap study (SPEC §7, issue 4): how much of a VAE's test/train gap in code length is
# the encoder's (AIGG) and how much the decoder's (GMGG), as -ELBO estimates and real bitstreams.
#
# Two runs of the gaps paper's architecture (mlp-paper: 3x500 ReLU MLP, z=10, Bernoulli) on
# mnist-bin, small enough to overfit clearly on one CPU core:
#   A: 1,000 training images, 500 epochs, checkpoint every 50   (strong overfitting)
#   B: 10,000 training images, 100 epochs, checkpoint every 25  (milder)
# then `vaecompress gaps` on each: encoder refit 50 epochs on the first 2,000 test images,
# the -log p(x) / approximation / amortization split at every checkpoint on the first 500
# (IWAE K=500, 300 local steps).  ~20-25 min on one busy core.
#
# Usage:  benchmarks/gaps_study.sh            (from the repository root; resumes runs)
# Env:    RUNS (default runs/), OUT (default benchmarks/results/gaps), VAECOMPRESS_DATA
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
VC=${VC:-.venv/bin/vaecompress}
RUNS=${RUNS:-runs}
OUT=${OUT:-benchmarks/results/gaps}
mkdir -p "$OUT"
GAPS_ARGS=(--refit-epochs 50 --max-test 2000 --split all --split-images 500 --iwae 500 --local-steps 300
           --samples 10 --chains 10 --threads 1 -q)

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
    echo "   gaps in $((SECONDS - t0)) s"
}

study train1000 1000 500 50
study train10000 10000 100 25
echo "== done ($(date -u +%FT%TZ)); results in $OUT/"
