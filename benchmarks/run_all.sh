#!/usr/bin/env bash
# Regenerates benchmarks/results/bench/ (results.json, README.md, plots): every dataset
# (mnist-bin, mnist-bin-stoch, binarized-mnist, mnist, fashion-mnist; full 10k test splits),
# every bundled model, all classical codecs at their strongest settings, JPEG-XL at effort 10
# (libjxl's maximum; effort 10 is 2-3x slower than 9 but ~15% smaller on 8-bit MNIST mosaics).
#
# Budget on 2 CPU cores: classical codecs ~5 min per dataset (~25 min), BB-ANS ~1 min per
# (model, dataset) pair plus ~1 min speed sweep: about 35 min with three bundled models.
#
# Usage:  benchmarks/run_all.sh [extra `vaecompress bench` options, e.g. --jxl-effort 9]
# Data:   $VAECOMPRESS_DATA, else ../shared/data next to the repository, else ~/.cache/vaecompress/data.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VAECOMPRESS_DATA:-}" && -d ../shared/data ]]; then
    export VAECOMPRESS_DATA="$(cd ../shared/data && pwd)"
fi
VC=vaecompress
[[ -x .venv/bin/vaecompress ]] && VC=.venv/bin/vaecompress
OUT=benchmarks/results/bench
start=$(date +%s)
"$VC" bench --out "$OUT" --jxl-effort 10 "$@"
echo "run_all.sh: ${OUT} regenerated in $(( ($(date +%s) - start) / 60 )) min"
