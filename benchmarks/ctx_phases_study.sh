#!/usr/bin/env bash
# Issue 18, item 1: what more context phases buy. Each 4-phase bundled context model is trained on
# for the same epochs twice from its own weights: once as it is (4 phases, the control) and once
# with the 2-level checkerboard (7 phases, presets ctx7-*: the same weights, only the coding order
# and the masks change), then both are coded on the full test set on the default exact path
# (decoded and verified) by `vaecompress bench`. binarized-mnist (Larochelle) gets its first
# context models the same way, started from mnist-bin-ctx.
#
# Resumable: every `vaecompress train` resumes its run directory, finished benches are skipped.
#   nohup nice -n 5 bash benchmarks/ctx_phases_study.sh > logs/ctx-phases.log 2>&1 &
# Needs VAECOMPRESS_DATA (or ~/.cache/vaecompress/data) with MNIST and binarized_mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
VC=${VC:-.venv/bin/vaecompress}
RUNS=${RUNS:-runs/ctx-phases}
OUT=${OUT:-benchmarks/results/ctx-phases}
EPOCHS_BIN=${EPOCHS_BIN:-8}
EPOCHS_8BIT=${EPOCHS_8BIT:-3}
export OMP_NUM_THREADS=1
mkdir -p "$RUNS" "$OUT"

train() {   # name dataset preset init epochs lr
  local name=$1 ds=$2 preset=$3 init=$4 epochs=$5 lr=$6
  echo "[$(date -u +%FT%TZ)] train $name ($preset on $ds from $init, $epochs epochs, lr $lr)"
  $VC train -d "$ds" -m "$preset" --init "$init" -e "$epochs" --lr "$lr" --save-every 1 \
    -o "$RUNS/$name" --device cpu --threads 1 -q
}

bench() {   # name dataset
  local name=$1 ds=$2
  if [ -f "$OUT/$name/results.json" ]; then echo "bench $name: done"; return; fi
  echo "[$(date -u +%FT%TZ)] bench $name on $ds"
  $VC bench -m "$RUNS/$name" -d "$ds" --no-classical --chains '' --single-images 20 -j 1 -o "$OUT/$name" -q
}

# binary: control and 7 phases from mnist-bin-ctx, same epochs and lr
train bin-ctx4  mnist-bin ctx-bin  mnist-bin-ctx "$EPOCHS_BIN" 2e-4
train bin-ctx7  mnist-bin ctx7-bin mnist-bin-ctx "$EPOCHS_BIN" 2e-4
bench bin-ctx4 mnist-bin
bench bin-ctx7 mnist-bin
# binarized-mnist (Larochelle): no context model existed
train larochelle-ctx4 binarized-mnist ctx-bin  mnist-bin-ctx "$EPOCHS_BIN" 2e-4
train larochelle-ctx7 binarized-mnist ctx7-bin mnist-bin-ctx "$EPOCHS_BIN" 2e-4
bench larochelle-ctx4 binarized-mnist
bench larochelle-ctx7 binarized-mnist
# 8-bit
train mnist-ctx4 mnist ctx-8bit  mnist-ctx "$EPOCHS_8BIT" 2e-4
train mnist-ctx7 mnist ctx7-8bit mnist-ctx "$EPOCHS_8BIT" 2e-4
bench mnist-ctx4 mnist
bench mnist-ctx7 mnist
echo "[$(date -u +%FT%TZ)] all done"
