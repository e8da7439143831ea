# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STORE  ?= esgd-runs
# A CPU build of torch is installed first where no torch is present and no NVIDIA GPU is visible
# (CI, laptops); elsewhere pip resolves torch from pyproject.toml (the CUDA build on a GPU box).
# Off PyPI's Linux wheels, a CPU-only build comes from PyTorch's own index:
#   make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_CPU      ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: install demo test lint format smoke bench results clean constraints

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null && ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then \
		echo "no torch and no NVIDIA GPU: installing the CPU build ($(TORCH_CPU))"; \
		$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# ESGD and the population baseline on the bundled digits task, same spec and budget: a progress
# line per generation, the side-by-side table, plots of both, then the ESGD run's own report.
# The runs are <RUN_ID>-population and <RUN_ID>-esgd: the same command resumes them, and raising
# `generations` in the example extends them; after any other edit of the example, new runs need
# another id (the error says which is free): make demo RUN_ID=demo-2.
RUN_ID ?= demo
DEMO_AGAIN = make demo$(if $(filter command line,$(origin STORE)), STORE=$(STORE)) RUN_ID={}
demo: install
	ESGD_RUN_ID_HINT='$(DEMO_AGAIN)' $(VENV)/bin/esgd compare examples/digits.yaml --store $(STORE) \
		--run-id $(RUN_ID) --modes population,esgd --out demo-out/compare
	$(VENV)/bin/esgd report $(STORE)/runs/$(RUN_ID)-esgd --out demo-out/esgd

# The linter and the formatter (both ruff, configured in pyproject.toml) first, then the tests.
test: lint
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The cluster path end to end on a local kind cluster: Argo Workflows v4, MinIO, the chart, a
# 2-generation CPU run with `argo submit --wait`. Needs docker, kind, kubectl, helm, argo (not on CI).
smoke:
	scripts/kind-smoke.sh

# The image's pinned runtime dependencies (constraints.txt, read by the Dockerfile), from this venv.
constraints: install
	$(PY) scripts/constraints.py

# Packed training vs the sequential loop (docs/PERFORMANCE.md); --quick fits a short GPU lease.
bench: install
	$(PY) bench/packing.py --quick

# The benchmark suite and the knob study (hours on a laptop CPU; resumable): they write
# docs/RESULTS.md and docs/KNOBS.md from what they measure. RESULTS_STORE keeps their runs.
RESULTS_STORE ?= esgd-results
results: install
	$(PY) bench/results.py --out docs/RESULTS.md --store $(RESULTS_STORE) --jobs 2
	$(PY) bench/knobs.py --out docs/KNOBS.md --store $(RESULTS_STORE) --jobs 2

clean:
	rm -rf $(STORE) demo-out esgd-report-* esgd-compare-*
