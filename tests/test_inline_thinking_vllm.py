"""The in-process engine on a model whose chat template opens the reasoning itself (as
DeepSeek-R1's, QwQ's and Qwen3-Thinking-2507's do: the generation prompt ends in `<think>`).
The reply begins inside the reasoning; the engine showed it as the answer."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
import pytest_asyncio

from backends.base import GenerationRequest
from backends.vllm_engine import VllmEngineBackend
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.fixtures_vllm import require
from tests.tinymodel import CHAT_TEMPLATE

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def opening(
    tiny_model_dir: Path, vllm_env: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VllmEngineBackend]:
    """The tiny model, its template's generation prompt ending in `<think>`."""
    require("vllm")
    from transformers import AutoTokenizer

    model = tmp_path_factory.mktemp("opening") / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|assistant|>\n", "<|assistant|>\n<think>\n")
    tokenizer.save_pretrained(model)
    settings = BackendSettings(
        kind="vllm", model=str(model), gpu_memory_utilization=0.3, enforce_eager=True
    )
    backend = VllmEngineBackend(settings)
    await backend.start()
    yield backend
    await backend.aclose()


async def test_reasoning_the_template_opened_is_not_the_answer(
    opening: VllmEngineBackend,
) -> None:
    """The tiny model never writes `</think>`: all it writes is reasoning that never ends,
    passed on as chunks without text (the model at work), and no answer."""
    request = GenerationRequest([ChatMessage(Role.USER, "hello world")], 16, 0.0)
    async with aclosing(opening.stream(request)) as stream:
        *deltas, last = [chunk async for chunk in stream]
    assert deltas and not any(chunk.text for chunk in deltas)
    assert last.finish_reason == "length" and last.usage is not None
    assert last.usage.completion_tokens == 16
