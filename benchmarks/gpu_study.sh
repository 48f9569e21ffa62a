#!/usr/bin/env bash
# Issue 14's GPU run (benchmarks/gpu_study.py all) as it was given to the lent GPU machine:
#   OUT=<folder> DEADLINE_S=<seconds> [ONLY=seed] bash benchmarks/gpu_study.sh   (ONLY: gpu_study.py all --only)
# It needs the MNIST files under $VAECOMPRESS_DATA (default .devdata/MNIST/raw/*.gz, carried there)
# and, where constriction is not installed, its wheel in .whl/ (pip download constriction==0.5.0 for
# the machine's Python). It tries NVIDIA MPS so the study's GPU processes share the chip instead of
# time-slicing it, and runs without it if it does not start.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-out}
mkdir -p "$OUT"
if ! python3 -c "import constriction" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export VAECOMPRESS_DATA=${VAECOMPRESS_DATA:-$PWD/.devdata} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/machine.txt"
python3 -c "import torch, numpy, constriction, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())" 2>&1 | tee -a "$OUT/machine.txt"
if command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p /tmp/mps /tmp/mps-log
  if nvidia-cuda-mps-control -d && timeout 30 python3 -c "import torch; torch.zeros(1).cuda(); torch.cuda.synchronize()"; then
    export GPU_STUDY_MPS=1; echo "MPS on" | tee -a "$OUT/machine.txt"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS did not start; without it" | tee -a "$OUT/machine.txt"
  fi
fi
python3 benchmarks/gpu_study.py all --runs runs --out "$OUT" --deadline-s "${DEADLINE_S:-540}" --cpu-jobs 15 ${ONLY:+--only "$ONLY"} 2>&1 | tee "$OUT/driver.log"
[ -n "${GPU_STUDY_MPS:-}" ] && echo quit | nvidia-cuda-mps-control 2>/dev/null
exit 0
