# Two commands on a fresh machine:  `make run` (set up + main job)  and  `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; a GPU machine can override, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
# text: the offline sentence encoder (text specs); dist: Dask (sharded banks, tests on a LocalCluster).
EXTRAS ?= cpu,dev,text,dist
# `make nvcc`: compile the CUDA kernel ahead of time (compile only, no GPU needed); skipped without nvcc.
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
# The options lwgpu/kernels/cupy_mmd.py passes to cupy.RawModule at run time.
NVCC_FLAGS ?= -std=c++14
CUDA_SRC := lwgpu/kernels/cuda/mmd.cu
CUDA_OUT := build/nvcc
# `make gpu-test CUDA=12` (or CUDA=13) on a machine with an NVIDIA GPU and pip access: a venv of its own
# ($(GPU_VENV)) with PyPI's torch (a CUDA build on Linux), the extras cpu,gpu$(CUDA),dev (CuPy for that CUDA
# major + NVRTC), then every test marked gpu. The CPU-side kernel tests run in `make test` everywhere.
CUDA ?= 12
GPU_VENV ?= .venv-gpu$(CUDA)
GPU_TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test bench nvcc gpu-test clean

$(VENV)/.installed-$(EXTRAS): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

run: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/lwgpu-bench

test: install nvcc
	WANDB_MODE=disabled $(PY) -m pytest -q

nvcc:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
		mkdir -p $(CUDA_OUT) && \
		for arch in $(CUDA_ARCHS); do \
			echo "$(NVCC) $(NVCC_FLAGS) -arch=sm_$$arch -cubin -o $(CUDA_OUT)/mmd_sm_$$arch.cubin $(CUDA_SRC)"; \
			$(NVCC) $(NVCC_FLAGS) -arch=sm_$$arch -cubin -o $(CUDA_OUT)/mmd_sm_$$arch.cubin $(CUDA_SRC) || exit 1; \
		done && \
		echo "[nvcc] OK: compiled $(CUDA_SRC) for $(addprefix sm_,$(CUDA_ARCHS)) with $$($(NVCC) --version | grep -o 'release [0-9.]*') into $(CUDA_OUT)/"; \
	else \
		echo "[nvcc] SKIPPED: $(NVCC) is not on the PATH, $(CUDA_SRC) was not compiled"; \
	fi

gpu-test:
	@case "$(CUDA)" in 12|13) ;; *) echo "gpu-test: CUDA must be 12 or 13 (the CuPy builds cupy-cuda12x / cupy-cuda13x), got '$(CUDA)'"; exit 2;; esac
	$(MAKE) install VENV=$(GPU_VENV) TORCH_SPEC="$(GPU_TORCH_SPEC)" EXTRAS=cpu,gpu$(CUDA),dev,text,dist
	$(GPU_VENV)/bin/python -c "import torch, cupy; assert torch.cuda.is_available(), 'torch sees no GPU'; print('[gpu-test] torch', torch.__version__, 'CUDA', torch.version.cuda, '| CuPy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
	WANDB_MODE=disabled $(GPU_VENV)/bin/python -m pytest -q -m gpu

bench:
	$(MAKE) install EXTRAS=cpu,dev,text,dist,ref
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-gpu12 .venv-gpu13 outputs multirun .pytest_cache $(CUDA_OUT)
