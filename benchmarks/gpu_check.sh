#!/usr/bin/env bash
# One run on a CUDA machine that checks the GPU paths and writes what it measured to a folder:
#   the GPU-only tests (AMP, channels_last), the throughput benchmark eager and compiled (speed ratios),
#   and every notebook's full mode (results beside the CPU ones: OUT/results/<name>/, with provenance naming the GPU).
# Budget: at most 10 minutes on an H100/H200; each step has its own timeout so one slow step cannot eat the rest.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default runs/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt" || exit 1
timeout 120 python -m pytest -q -rs -m "gpu or not gpu" tests/test_train.py tests/test_checks.py tests/test_spurious_experiment.py tests/test_benchmark.py 2>&1 | tail -8 | tee "$out/gpu_tests.txt"
python benchmarks/kd_throughput.py --tutorial-steps 40 --out "$out/bench_eager.json" 2>&1 | tee "$out/bench_eager.txt"
python benchmarks/kd_throughput.py --tutorial-steps 40 --compile --out "$out/bench_compiled.json" 2>&1 | tee "$out/bench_compiled.txt"
for name in text exits sets spurious dedier capstone hinton; do
  extra=""; [ "$name" = text ] && extra="--dataset standin"
  start=$(date +%s)
  timeout 240 python -m kdteach "$name" --mode full $extra --out "$out/results/$name" --no-progress 2>&1 | tail -30 > "$out/$name.txt"
  echo "$name: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/timings.txt"
done
