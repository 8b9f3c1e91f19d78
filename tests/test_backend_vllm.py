"""VllmEngineBackend with the real in-process engine on the tiny model.

One engine serves the whole module (start-up takes ~20 s), so its tests share the module's
event loop: the engine's output task lives on the loop that started it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from backends.base import Backend, Chunk, GenerationRequest
from backends.factory import build_backend
from backends.openai_compat import OpenAICompatBackend
from backends.vllm_engine import VllmEngineBackend
from bot.errors import BackendError, BackendUnavailable, ContextTooLong
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.fixtures_vllm import require

pytestmark = pytest.mark.asyncio(loop_scope="module")

SYSTEM = ChatMessage(Role.SYSTEM, "You are a test bot.")
# No max_model_len in the settings: the engine derives it from the model (2048 positions).
MODEL_MAX_LEN = 2048


def ask(text: str, max_tokens: int = 16, temperature: float = 0.7) -> GenerationRequest:
    return GenerationRequest([SYSTEM, ChatMessage(Role.USER, text)], max_tokens, temperature)


async def collect(backend: VllmEngineBackend, request: GenerationRequest) -> list[Chunk]:
    async with aclosing(backend.stream(request)) as chunks:
        return [chunk async for chunk in chunks]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(tiny_model_dir: Path, vllm_env: None) -> AsyncIterator[VllmEngineBackend]:
    require("vllm")
    settings = BackendSettings(
        kind="vllm", model=str(tiny_model_dir), gpu_memory_utilization=0.3, enforce_eager=True
    )
    backend = VllmEngineBackend(settings)
    await backend.start()
    yield backend
    await backend.aclose()


def unfinished(backend: VllmEngineBackend) -> int:
    return int(backend.engine.get_num_unfinished_requests())


async def test_capabilities_come_from_the_engine(backend: VllmEngineBackend) -> None:
    caps = backend.capabilities
    assert caps.max_model_len == MODEL_MAX_LEN
    assert caps.exact_token_counts and caps.name == "vllm"
    await backend.start()  # idempotent: the same engine
    assert backend.capabilities == caps


async def test_stream_yields_deltas_then_usage(backend: VllmEngineBackend) -> None:
    request = ask("hello world, tell me a story", max_tokens=24, temperature=1.0)
    *deltas, last = await collect(backend, request)
    assert len(deltas) >= 3 and all(c.text and c.usage is None for c in deltas)
    assert last.text == "" and last.usage is not None
    assert last.finish_reason in ("length", "stop")
    assert last.usage.prompt_tokens == await backend.count_chat_tokens(request.messages)
    assert 0 < last.usage.completion_tokens <= 24
    assert last.usage.cached_tokens is not None


async def test_count_tokens_matches_the_model_tokenizer(
    backend: VllmEngineBackend, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["hello world", "Ünïcode and emoji 🎉", "one two three " * 20]
    expected = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    assert await backend.count_tokens(texts) == expected


async def test_three_turn_conversation(backend: VllmEngineBackend) -> None:
    messages = [SYSTEM]
    prompt_sizes = []
    for question in ("hello there", "what is the weather", "thanks, and tomorrow?"):
        messages.append(ChatMessage(Role.USER, question))
        chunks = await collect(backend, GenerationRequest(list(messages), max_tokens=12))
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.prompt_tokens == await backend.count_chat_tokens(messages)
        prompt_sizes.append(usage.prompt_tokens)
        messages.append(ChatMessage(Role.ASSISTANT, "".join(c.text for c in chunks)))
    assert prompt_sizes == sorted(prompt_sizes) and len(set(prompt_sizes)) == 3


async def test_prompt_over_max_model_len_is_context_too_long(backend: VllmEngineBackend) -> None:
    with pytest.raises(ContextTooLong, match="max_model_len is 2048"):
        await collect(backend, ask("hello world " * 1500))
    assert unfinished(backend) == 0


async def test_closing_after_the_first_delta_aborts(backend: VllmEngineBackend) -> None:
    async with aclosing(backend.stream(ask("tell me everything", max_tokens=1500))) as chunks:
        assert (await anext(chunks)).text
        assert unfinished(backend) == 1
    assert unfinished(backend) == 0


async def test_cancelling_the_consumer_aborts(backend: VllmEngineBackend) -> None:
    first_delta = asyncio.Event()

    async def consume() -> None:
        async with aclosing(backend.stream(ask("go on", max_tokens=1500))) as chunks:
            async for _ in chunks:
                first_delta.set()

    task = asyncio.create_task(consume())
    await first_delta.wait()
    assert unfinished(backend) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unfinished(backend) == 0


async def test_an_error_in_the_consumer_aborts(backend: VllmEngineBackend) -> None:
    with pytest.raises(LookupError):
        async with aclosing(backend.stream(ask("go on", max_tokens=1500))) as chunks:
            async for _ in chunks:
                raise LookupError("the consumer failed")
    assert unfinished(backend) == 0


class FailingRequests:
    """The running engine, except that each request ends as vLLM ends one it failed (a
    KV-cache load, say): its last output's finish reason is "error"."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for out in self.engine.generate(*args, **kwargs):
            if out.finished:
                out.outputs[0].finish_reason = "error"
            yield out


async def test_a_request_the_engine_failed_is_not_a_reply(backend: VllmEngineBackend) -> None:
    """vLLM's server answers such a request with a 500; in process it ended as a reply, so a
    failed generation was recorded as a whole (maybe empty) answer."""
    failing = backend.with_settings(BackendSettings(kind="vllm", model=backend.capabilities.model))
    failing._engine = FailingRequests(backend.engine)  # the seam: the engine's outputs
    with pytest.raises(BackendUnavailable, match="finish reason: error"):
        await collect(failing, ask("hello world", max_tokens=4))
    assert unfinished(backend) == 0
    assert (await collect(backend, ask("hello world", max_tokens=4)))[-1].finish_reason


class ThinkingInline:
    """The running engine, except that a request's text is a thinking model's that no
    reasoning parser takes apart: `<think>` and its reasoning first, split over the real
    outputs (the first four get the tag and the reasoning, the rest the answer)."""

    DELTAS = ("<th", "ink>The user greets", " me.</thi", "nk>\n\n")

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        n = 0
        async for out in self.engine.generate(*args, **kwargs):
            completion = out.outputs[0]
            completion.text = self.DELTAS[n] if n < len(self.DELTAS) else "Hi"
            n += 1
            yield out


async def test_reasoning_the_engine_writes_inline_is_not_the_answer(
    backend: VllmEngineBackend,
) -> None:
    """The engine has no reasoning parser: a thinking model's `<think> ... </think>` came
    as the reply's text, shown and stored. It is taken out (backends.inline_thinking), and
    passed on as chunks without text (the model at work)."""
    thinking = backend.with_settings(BackendSettings(kind="vllm", model=backend.capabilities.model))
    thinking._engine = ThinkingInline(backend.engine)  # the seam: the engine's outputs
    got = await collect(thinking, ask("hello world", max_tokens=8, temperature=0.0))
    answer = "".join(c.text for c in got)
    assert answer and answer == "Hi" * (len(answer) // 2)
    assert [c.text for c in got[:3]] == ["", "", ""]  # "<th" held; three of reasoning
    assert got[-1].usage is not None and got[-1].finish_reason
    assert unfinished(backend) == 0


async def test_a_backend_not_started_says_so(tiny_model_dir: Path) -> None:
    backend = VllmEngineBackend(BackendSettings(kind="vllm", model=str(tiny_model_dir)))
    with pytest.raises(BackendError, match="not started"):
        await collect(backend, ask("hi"))


async def test_factory_builds_the_configured_kind() -> None:
    assert build_backend(BackendSettings()) is None
    engine = build_backend(BackendSettings(kind="vllm", model="/models/x"))
    remote = build_backend(BackendSettings(kind="openai", base_url="http://x:8000", model="m"))
    assert isinstance(engine, VllmEngineBackend) and isinstance(engine, Backend)
    assert isinstance(remote, OpenAICompatBackend) and isinstance(remote, Backend)
