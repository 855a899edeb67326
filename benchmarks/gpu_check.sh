#!/usr/bin/env bash
# One run on a CUDA machine that checks the GPU paths and writes what it measured to a folder:
#   the GPU-only tests (AMP, channels_last), the throughput benchmark eager and compiled (speed ratios),
#   and notebook 01's headline in full mode (the paper's MNIST numbers and their wall time).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default runs/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt" || exit 1
python -m pytest -q -rs tests/test_train.py tests/test_benchmark.py 2>&1 | tail -5 | tee "$out/gpu_tests.txt"
python benchmarks/kd_throughput.py --tutorial-steps 40 --out "$out/bench_eager.json" 2>&1 | tee "$out/bench_eager.txt"
python benchmarks/kd_throughput.py --tutorial-steps 40 --compile --out "$out/bench_compiled.json" 2>&1 | tee "$out/bench_compiled.txt"
python -m kdteach hinton --mode full --out "$out/hinton" --no-progress 2>&1 | tail -30 | tee "$out/hinton.txt"
