#!/usr/bin/env bash
# GPU benchmark: training images/s, float32 vs mixed precision, one GPU vs all (bench/gpu_bench.py).
# Run from the repository on a machine with NVIDIA GPUs, after `pip install -e '.[gpu]'` (or make, then
# .venv/bin/pip install 'tensorflow[and-cuda]'); writes the "GPU" section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
exec "$PYTHON" bench/gpu_bench.py "$@"
