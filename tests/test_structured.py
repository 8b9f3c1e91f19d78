"""generate_json over the in-process vLLM engine and vLLM's server (the tiny model's random
weights still give schema-valid JSON under constrained decoding), and its error paths."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import pytest
import pytest_asyncio
from pydantic import BaseModel

from backends.base import Backend
from backends.factory import build_resilient_backend
from backends.openai_compat import OpenAICompatBackend
from backends.structured import InvalidStructuredOutput, StructuredOutputUnsupported, generate_json
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.doubles import ScriptedBackend
from tests.fault_server import MODEL, Faults, fault_server
from tests.fixtures_vllm import (
    SERVED_MODEL,
    _server_command,
    free_port,
    require,
    stop_server,
    wait_until_healthy,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Intent(BaseModel):
    intent: Literal["chat", "question", "summary", "translation"]
    urgent: bool


MESSAGES = [
    ChatMessage(Role.SYSTEM, "Classify the user's message. Answer in JSON."),
    ChatMessage(Role.USER, "please summarise our conversation"),
]


@pytest.fixture(scope="module")
def compact_json_server(
    tiny_model_dir: Path, vllm_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """vLLM's server as docs/resilience.md says to run it for structured outputs: JSON without
    free whitespace (an engine-wide setting in vLLM 0.32, not a request field)."""
    require("vllm")
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-json") / "server.log"
    compact = {"backend": "xgrammar", "disable_any_whitespace": True}
    extra = ["--structured-outputs-config", json.dumps(compact)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*_server_command(tiny_model_dir, port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}", log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["vllm-engine", "vllm-http"])
async def vllm_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    tiny = str(request.getfixturevalue("tiny_model_dir"))
    request.getfixturevalue("vllm_env")
    require("vllm")
    if request.param == "vllm-engine":
        values = {"kind": "vllm", "model": tiny, "gpu_memory_utilization": 0.3}
        settings = BackendSettings.model_validate({**values, "enforce_eager": True})
    else:
        url = request.getfixturevalue("compact_json_server")
        settings = BackendSettings(kind="openai", base_url=url, model=SERVED_MODEL)
    backend = build_resilient_backend(settings)
    assert backend is not None
    await backend.start()
    yield backend
    await backend.aclose()


async def test_generate_json_is_schema_valid(vllm_backend: Backend) -> None:
    for temperature in (0.0, 1.0):  # random weights: any sampled path must still validate
        result = await generate_json(vllm_backend, MESSAGES, Intent, temperature=temperature)
        assert isinstance(result, Intent)


async def test_a_server_without_structured_outputs_is_a_clear_error() -> None:
    with fault_server("plain", Faults(structured=False)) as server:
        settings = BackendSettings(kind="openai", base_url=server.base_url, model=MODEL)
        backend = OpenAICompatBackend(settings)
        with pytest.raises(StructuredOutputUnsupported, match="response_format"):
            await generate_json(backend, MESSAGES, Intent)
        await backend.aclose()


async def test_invalid_json_is_asked_for_once_more(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda request: "not json at all")
    with pytest.raises(InvalidStructuredOutput, match="Intent after 2 tries"):
        await generate_json(backend, MESSAGES, Intent)
    assert len(backend.requests) == 2
    schema = backend.requests[0].json_schema
    assert schema is not None and schema["additionalProperties"] is False
    assert schema["properties"] == Intent.model_json_schema()["properties"]


async def test_a_second_try_that_validates_is_returned() -> None:
    answers = iter(['{"intent": "chat"', '{"intent": "question", "urgent": true}'])
    backend = ScriptedBackend(lambda request: next(answers))
    result = await generate_json(backend, MESSAGES, Intent)
    assert result == Intent(intent="question", urgent=True)
