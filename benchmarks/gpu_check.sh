#!/usr/bin/env bash
# One prepared device check for a session lent a GPU machine (see README, "GPU"): the gpu-marked
# tests, then the exact-search GPU benchmark at N = 1,000,000. Run from the repository root on the
# GPU machine, whose image already has torch, CuPy and numba with CUDA; results land in $OUT (or ./gpu_out).
set -uo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
export WANDB_MODE=disabled PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c "import lwgpu.device as d; print(d.available())" | tee -a "$out/device.txt"
timeout 240 python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.txt"
timeout 240 python -m benchmarks.bench_exact_search --gpu --out "$out/exact_search_gpu.md" 2>&1 | tee "$out/gpu_bench.txt"
