#!/usr/bin/env bash
# One prepared device check for a session lent a GPU machine (see README, "GPU"): the CUDA kernel's own
# tests (nvcc, NVRTC, host emulation, and on the GPU: CuPy against the float64 reference and against the
# host emulation), every gpu-marked test, then the exact-search GPU benchmark at N = 1,000,000. Run from
# the repository root on the GPU machine, whose image already has torch, CuPy and numba with CUDA; with
# CUDA=12 or CUDA=13 set (and pip access) it first installs the extras gpu$CUDA (CuPy for that CUDA, NVRTC)
# into the current Python. Results land in $OUT (or ./gpu_out).
set -uo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
export WANDB_MODE=disabled PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "${CUDA:-}" ]; then
  python -m pip install -q -e ".[gpu${CUDA},dev]" 2>&1 | tail -3 | tee "$out/install.txt"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c "import lwgpu.device as d; print(d.available())" | tee -a "$out/device.txt"
timeout 180 python -m pytest -q -rs tests/kernels/test_kernels_cuda.py 2>&1 | tee "$out/cuda_kernel_tests.txt"
timeout 240 python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.txt"
timeout 240 python -m benchmarks.bench_exact_search --gpu --out "$out/exact_search_gpu.md" 2>&1 | tee "$out/gpu_bench.txt"
