# Two commands on a fresh machine:  `make run` (set up + main job)  and  `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; a GPU machine can override, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,dev

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

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q

bench:
	$(MAKE) install EXTRAS=cpu,dev,ref
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
