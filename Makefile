# Two entry points for a fresh machine with only Python 3.10+ and make:
#   make demo   creates .venv, installs nnxp with the demo extra, trains on the digits data
#   make test   creates .venv, installs the test extra, runs ruff, mypy and pytest
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch runs the torch oracles. It is installed only when pip finds it without
# an index (a local wheel, e.g. in PIP_FIND_LINKS; its small dependencies then come from the
# index); otherwise the torch tests skip rather than pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test docs lint typecheck pytest bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,demo,plot]'
	if $(BIN)/python -m pip install -q --no-index --no-deps '$(TORCH_SPEC)' 2>/dev/null; then \
	  $(BIN)/python -m pip install -q '$(TORCH_SPEC)'; \
	else echo "note: $(TORCH_SPEC) has no local wheel here; the torch oracles will skip"; fi
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/nnxp train

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed
	$(BIN)/python -m pytest

test: lint typecheck pytest

$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

# The documentation site, from docs/ and the numpydoc docstrings; warnings are errors.
docs: $(VENV)/.docs-installed
	$(BIN)/mkdocs build --strict -q

# Benchmarks (docs/benchmarks.md). Environment: NNXP_BENCH_BACKENDS=cupy,torch:cuda,numpy,
# NNXP_BENCH_SIZES=quick|default|full|32x128,..., NNXP_BENCH_OPTIMIZERS=sgd,adam, NNXP_BENCH_BUDGET.
BENCH_OUT ?= benchmarks/results/latest
bench: $(VENV)/.test-installed
	mkdir -p $(dir $(BENCH_OUT))
	$(BIN)/python -m pytest benchmarks -p no:cacheprovider --benchmark-only \
	  --benchmark-json=$(BENCH_OUT).json --benchmark-columns=median,min,rounds \
	  --benchmark-sort=name
	$(BIN)/python benchmarks/report.py $(BENCH_OUT).json

# The GPU check of issue 10 (docs/backends.md, "make gpu-check"): under 8 minutes on one NVIDIA GPU,
# results in benchmarks/results/gpu-<date>-<device>.{md,json}; installs the wheels carried in .whl/.
# Without a GPU: a dry run on torch CPU into a temporary directory. GPU_CHECK_ARGS: --quick,
# --dry-run, --budget SECONDS, --out DIR, --skip tests,bench,...; PYTHON: an interpreter with
# numpy and torch/cupy (the GPU machine's python3; here e.g. PYTHON=.venv/bin/python).
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache .benchmarks
