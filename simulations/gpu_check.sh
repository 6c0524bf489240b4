#!/usr/bin/env bash
# One call on a lent GPU (under 5 minutes): the CUDA-marked tests, then the DM benchmark at the
# paper's settings (MNIST, IPC 10, batch_real 256) for a few hundred iterations, CPU-free timings.
#   bash simulations/gpu_check.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-../shared/data}
OUT_DIR=${2:-${OUT:-results/gpu_check}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 FEDCOND_DATA_DIR="$DATA_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
python -m pytest -q -m cuda tests 2>&1 | tee "$OUT_DIR/cuda_tests.txt"
python simulations/bench_dm.py --device cuda --data-dir "$DATA_DIR" --out "$OUT_DIR" \
  --sections speed,equal,methods --speed-iterations 20 --equal-iterations 300 --equal-seeds 1 \
  --mnist-iterations 300 --mnist-other-iterations 300 --digits-iterations 300 --digits-seeds 1 \
  --eval-runs 2 --eval-epochs 300 2>&1 | tee "$OUT_DIR/bench_dm.txt"
