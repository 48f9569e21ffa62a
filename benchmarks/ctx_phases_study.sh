#!/usr/bin/env bash
# Issue 18, item 1: what more context phases buy. Each 4-phase bundled context model is trained on
# for the same epochs twice from its own weights: once as it is (4 phases, the control) and once
# with the 2-level checkerboard (7 phases, presets ctx7-*: the same weights, only the coding order
# and the masks change), then both are coded on the full test set on the default exact path
# (decoded and verified) by `vaecompress bench`, and `ctx_phases_report.py` splits the -ELBO by
# pixel class. binarized-mnist (Larochelle) gets its first context model the same way, started
# from mnist-bin-ctx. The two runs of a pair train at once (one core each).
#
# Resumable: every `vaecompress train` resumes its run directory, finished benches are skipped.
#   nohup nice -n 5 bash benchmarks/ctx_phases_study.sh > logs/ctx-phases.log 2>&1 &
# Needs VAECOMPRESS_DATA (or ~/.cache/vaecompress/data) with MNIST and binarized_mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
VC=${VC:-.venv/bin/vaecompress}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/ctx-phases}
OUT=${OUT:-benchmarks/results/ctx-phases}
EPOCHS_BIN=${EPOCHS_BIN:-8}
EPOCHS_8BIT=${EPOCHS_8BIT:-3}
export OMP_NUM_THREADS=1
mkdir -p "$RUNS" "$OUT" logs

train() {   # name dataset preset init epochs lr
  local name=$1 ds=$2 preset=$3 init=$4 epochs=$5 lr=$6
  echo "[$(date -u +%FT%TZ)] train $name ($preset on $ds from $init, $epochs epochs, lr $lr)"
  $VC train -d "$ds" -m "$preset" --init "$init" -e "$epochs" --lr "$lr" --save-every 1 \
    -o "$RUNS/$name" --device cpu --threads 1 -q > "logs/ctx-phases-$name.log" 2>&1
}

bench() {   # name dataset
  local name=$1 ds=$2
  if [ -f "$OUT/$name/results.json" ]; then echo "bench $name: done"; return; fi
  echo "[$(date -u +%FT%TZ)] bench $name on $ds"
  $VC bench -m "$RUNS/$name" -d "$ds" --no-classical --chains '' --single-images 20 -j 1 -o "$OUT/$name" -q \
    > "logs/ctx-phases-bench-$name.log" 2>&1
}

pair() {    # dataset init epochs preset4 name4 preset7 name7
  local ds=$1 init=$2 epochs=$3
  train "$5" "$ds" "$4" "$init" "$epochs" 2e-4 & local a=$!
  train "$7" "$ds" "$6" "$init" "$epochs" 2e-4 & local b=$!
  wait $a; wait $b
  bench "$5" "$ds" & a=$!
  bench "$7" "$ds" & b=$!
  wait $a; wait $b
  $PY benchmarks/ctx_phases_report.py --dataset "$ds" --models "$init" "$RUNS/$5" "$RUNS/$7" \
    --bench "$5=$OUT/$5" "$7=$OUT/$7" --out "$OUT/$ds" > "logs/ctx-phases-report-$ds.log" 2>&1
}

pair mnist-bin mnist-bin-ctx "$EPOCHS_BIN" ctx-bin bin-ctx4 ctx7-bin bin-ctx7
pair mnist mnist-ctx "$EPOCHS_8BIT" ctx-8bit mnist-ctx4 ctx7-8bit mnist-ctx7
pair binarized-mnist mnist-bin-ctx "$EPOCHS_BIN" ctx-bin larochelle-ctx4 ctx7-bin larochelle-ctx7
echo "[$(date -u +%FT%TZ)] all done"
