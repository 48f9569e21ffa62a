#!/usr/bin/env bash
# Issue 18 item 6: the BB-ANS paper's own model sizes trained by our tool, coded by our coder on the
# full test sets (real files, decoded and verified), for comparison with the paper's published
# 0.19 bpd (784-100-40 Bernoulli, stochastically binarized MNIST) and 1.41 bpd (784-200-50 on 8-bit
# MNIST; the paper's likelihood is a beta-binomial, ours a discretized Gaussian).
# Resumable: train continues its run directory; bench rewrites its output.
set -euo pipefail
cd "$(dirname "$0")/.."
VC=${VC:-.venv/bin/vaecompress}
export OMP_NUM_THREADS=1
$VC train -d mnist-bin-stoch -m mlp-bbans-bin -e 100 --save-every 50 -o runs/bbans-bin --threads 1 -q
$VC train -d mnist -m mlp-bbans-8bit -e 100 --save-every 50 -o runs/bbans-8bit --threads 1 -q
$VC bench -m runs/bbans-bin -d mnist-bin-stoch --no-classical --chains '' -o benchmarks/results/bbans-paper-bin
$VC bench -m runs/bbans-8bit -d mnist --no-classical --chains '' -o benchmarks/results/bbans-paper-8bit
