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

.PHONY: demo test docs lint typecheck pytest bench gpu-check gpu-install gpu-test clean

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

# NVIDIA GPU set-up (docs/backends.md), never part of demo or test: installs CuPy with its CUDA
# libraries (the nnxp[cuda12] or nnxp[cuda13] extra; GPU= picks one, by default the one matching
# the CUDA version nvidia-smi reports) and checks it with nnxp doctor. TORCH_INDEX=<a PyTorch
# wheel index URL, e.g. https://download.pytorch.org/whl/cu128> also installs a CUDA build of
# torch. gpu-test runs the suite on GPU_BACKENDS only, and fails if one of them does not work.
GPU          ?=
TORCH_INDEX  ?=
GPU_BACKENDS ?= cupy,torch:cuda

gpu-install: $(VENV)/.test-installed
	@gpu='$(GPU)'; \
	if [ -z "$$gpu" ]; then \
	  command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu-install: nvidia-smi not found:" \
	    "install the NVIDIA driver first (docs/backends.md), or set GPU=cuda12|cuda13" >&2; exit 1; }; \
	  major=$$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1); \
	  case "$$major" in \
	    ''|*[!0-9]*) echo "gpu-install: nvidia-smi shows no CUDA version; set GPU=cuda12|cuda13" >&2; exit 1;; \
	  esac; \
	  if [ "$$major" -ge 13 ]; then gpu=cuda13; elif [ "$$major" -eq 12 ]; then gpu=cuda12; else \
	    echo "gpu-install: the driver supports CUDA $$major; nnxp[cuda12] needs a driver for" \
	      "CUDA 12 or newer: update the driver" >&2; exit 1; fi; \
	  echo "gpu-install: the driver supports CUDA $$major: GPU=$$gpu"; \
	fi; \
	case "$$gpu" in cuda12|cuda13) ;; \
	  *) echo "gpu-install: GPU=$$gpu is not an extra; use GPU=cuda12 or GPU=cuda13" >&2; exit 2;; \
	esac; \
	echo "$(BIN)/python -m pip install -e '.[test,demo,plot,$$gpu]'"; \
	$(BIN)/python -m pip install -q -e ".[test,demo,plot,$$gpu]"
	if [ -n '$(TORCH_INDEX)' ]; then \
	  $(BIN)/python -m pip install -q torch --index-url '$(TORCH_INDEX)'; fi
	$(BIN)/nnxp doctor --require cupy

gpu-test: gpu-install
	NNXP_TEST_BACKENDS=$(GPU_BACKENDS) $(BIN)/python -m pytest

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
# --dry-run, --budget SECONDS, --out DIR, --skip tests,bench,..., --test-workers N; PYTHON: an interpreter with
# numpy and torch/cupy (the GPU machine's python3; here e.g. PYTHON=.venv/bin/python).
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache .benchmarks
