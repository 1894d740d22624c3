# Two commands on a fresh machine:  `make run` (set up + main job)  and  `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; a GPU machine can override, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,dev
# `make nvcc`: compile the CUDA kernel ahead of time (compile only, no GPU needed); skipped without nvcc.
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
# The options lwgpu/kernels/cupy_mmd.py passes to cupy.RawModule at run time.
NVCC_FLAGS ?= -std=c++14
CUDA_SRC := lwgpu/kernels/cuda/mmd.cu
CUDA_OUT := build/nvcc

.PHONY: install run test bench nvcc clean

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

bench:
	$(MAKE) install EXTRAS=cpu,dev,ref
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache $(CUDA_OUT)
