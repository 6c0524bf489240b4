#!/usr/bin/env bash
# One call on a lent GPU: the CUDA tests, then the DM benchmark at the paper's settings (IPC 10,
# batch_real 256) for a few hundred iterations. Sized for about 5 minutes but never yet run on a
# GPU (none has been lent to this project), so give the call a limit with room to spare.
#   bash simulations/gpu_check.sh [DATA_DIR] [OUT_DIR]
# The GPU machine gets a copy of the working tree, not this machine's .venv: the package is
# imported from the checkout (PYTHONPATH), and the benchmark needs only torch, torchvision,
# numpy, scikit-learn and tqdm. MNIST is used when DATA_DIR holds it (carry it, e.g. an ignored
# .data/ folder with MNIST/raw, 55 MB); otherwise the benchmark runs on the bundled digits only.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-../shared/data}
OUT_DIR=${2:-${OUT:-results/gpu_check}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 FEDCOND_DATA_DIR="$DATA_DIR" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
# the CUDA tests need pytest and import only fedcond's core; a failure is recorded, not fatal
python -m pytest -q -p no:cacheprovider tests/distill/test_cuda.py 2>&1 | tee "$OUT_DIR/cuda_tests.txt" \
  || echo "CUDA tests failed or could not run (see cuda_tests.txt)" | tee -a "$OUT_DIR/cuda_tests.txt"
DATA_ARGS=()
if [ -f "$DATA_DIR/MNIST/raw/train-images-idx3-ubyte" ]; then
  DATA_ARGS=(--data-dir "$DATA_DIR" --datasets mnist --mnist-ipcs 10)
else
  echo "no MNIST under $DATA_DIR: digits only" | tee -a "$OUT_DIR/gpu.txt"
  DATA_ARGS=(--datasets digits --digits-ipcs 10)
fi
python simulations/bench_dm.py --device cuda "${DATA_ARGS[@]}" --out "$OUT_DIR" \
  --sections speed,equal,methods --speed-iterations 20 --equal-iterations 300 --equal-seeds 1 \
  --mnist-iterations 300 --digits-iterations 300 --digits-seeds 1 --baselines random --dm-matchings mean \
  --eval-runs 2 --eval-epochs 300 2>&1 | tee "$OUT_DIR/bench_dm.txt"
