"""Every skill end to end on the real vLLM engine (in-process, tiny model): routing, prompt,
streaming and storage for /ask, /summarize, /translate, a model-classified plain message and
chat. The model's words are random; the tests assert on the path they took.

One engine and one app serve the module (start-up ~30 s), on the module's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
import sqlalchemy as sa

from backends.base import Capabilities, Chunk, GenerationRequest
from bot.app import Parley
from bot.settings import BackendSettings, Settings
from bot.text.storable import storable
from bot.types import ChatMessage, ConversationKey
from tests.doubles import CollectingSink
from tests.fixtures_vllm import require
from tests.skills_helpers import REDIS_DOC, incoming, system_of, user_of

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]


class Recording:
    """The real backend, with every request kept; closing it is left to the module."""

    def __init__(self, backend: object) -> None:
        self.inner = backend
        self.requests: list[GenerationRequest] = []

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities  # type: ignore[attr-defined,no-any-return]

    async def start(self) -> None:
        await self.inner.start()  # type: ignore[attr-defined]

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        async for chunk in self.inner.stream(request):  # type: ignore[attr-defined]
            yield chunk

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self.inner.count_tokens(texts)  # type: ignore[attr-defined,no-any-return]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.inner.count_chat_tokens(messages)  # type: ignore[attr-defined,no-any-return]

    async def aclose(self) -> None:
        return None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir: Path, vllm_env: None) -> AsyncIterator[Recording]:
    require("vllm")
    from backends.vllm_engine import VllmEngineBackend

    backend = VllmEngineBackend(_backend_settings(tiny_model_dir))
    await backend.start()
    yield Recording(backend)
    await backend.aclose()


def _backend_settings(model: Path) -> BackendSettings:
    return BackendSettings(
        kind="vllm", model=str(model), gpu_memory_utilization=0.3, enforce_eager=True,
        max_model_len=1024, max_tokens=16,
    )  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(
    engine: Recording, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Parley, CollectingSink]]:
    folder = tmp_path_factory.mktemp("skills-vllm")
    (folder / "redis.md").write_text(REDIS_DOC)
    settings = Settings(
        database={"url": f"sqlite+aiosqlite:///{folder}/parley.db"},  # type: ignore[arg-type]
        backend=_backend_settings(tiny_model_dir),
        conversation={"context_tokens": 600, "summary_tokens": 48},  # type: ignore[arg-type]
        skills={"summary_short_tokens": 16, "summary_long_tokens": 24},  # type: ignore[arg-type]
    )
    async with Parley(settings, backend=engine) as parley:  # type: ignore[arg-type]
        await parley.kb.add([folder / "redis.md"])
        sink = CollectingSink()
        parley.manager.attach("test", sink)
        yield parley, sink


async def _rows(app: Parley, key: ConversationKey) -> list[tuple[str, str, str]]:
    async with app.store.engine.connect() as conn:
        result = await conn.execute(
            sa.text(
                "SELECT m.role, m.kind, m.content FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id WHERE c.chat_id = :chat ORDER BY m.id"
            ),
            {"chat": key.chat_id},
        )
        return [(r[0], r[1], r[2]) for r in result.all()]


async def _turn(
    app: tuple[Parley, CollectingSink], engine: Recording, chat: str, text: str
) -> tuple[str, list[GenerationRequest], list[tuple[str, str, str]]]:
    parley, sink = app
    key = ConversationKey("test", chat)
    before = len(engine.requests)
    await parley.manager.handle(incoming(text, key=key))
    (reply,) = sink.replies[key]
    return reply, engine.requests[before:], await _rows(parley, key)


async def test_ask(app: tuple[Parley, CollectingSink], engine: Recording) -> None:
    reply, requests, rows = await _turn(app, engine, "ask", "/ask how long does a lock live?")
    (request,) = requests
    assert "[1] Redis > Locks" in user_of(request) and "thirty seconds" in user_of(request)
    assert "thirty seconds" not in system_of(request)  # passages are quoted data, not orders
    assert "\n\nSources:\n[1] Redis > Locks" in reply and len(reply) > 40
    assert rows[-1] == ("assistant", "command", storable(reply))
    assert app[1].chunks[-1] > 2  # streamed: model deltas, then the sources


async def test_summarize_in_parts(app: tuple[Parley, CollectingSink], engine: Recording) -> None:
    text = "\n\n".join(
        f"Paragraph {n}: the harbour crane moved {n} crates of tea and coffee beans to the ship "
        "before noon, while the night shift counted the barrels twice." * 3
        for n in range(40)
    )
    reply, requests, rows = await _turn(app, engine, "summarize", "/summarize " + text)
    maps = [r for r in requests if "is part " in system_of(r)]
    assert len(maps) >= 2 and reply.startswith(f"Summarising part 1 of {len(maps)}…")
    assert any("partial summaries" in system_of(r) for r in requests)
    for request in requests:
        tokens = await engine.count_chat_tokens(request.messages)
        assert tokens + request.max_tokens <= 1024
    assert rows[-1] == ("assistant", "command", storable(reply))


async def test_translate(app: tuple[Parley, CollectingSink], engine: Recording) -> None:
    command = "/translate to German read https://example.org/a and ask @marta today"
    reply, requests, rows = await _turn(app, engine, "translate", command)
    (request,) = requests
    assert "into German" in system_of(request)
    assert "example.org" not in user_of(request) and "⟦0⟧" in user_of(request)
    # The tiny model drops placeholders at random; restore() puts back what it dropped.
    assert "https://example.org/a" in reply and "@marta" in reply
    assert rows[-1] == ("assistant", "command", storable(reply))


async def test_plain_message_classified_then_answered(
    app: tuple[Parley, CollectingSink], engine: Recording
) -> None:
    # "translation" hints at a task that no pattern matches: the model classifies it.
    text = "could I get a translation of good morning, friends?"
    reply, requests, rows = await _turn(app, engine, "chat", text)
    assert requests[0].json_schema is not None  # the model classified it first
    assert reply
    # The random model picks any intent; an /ask that finds nothing answers without a call.
    kind = rows[-1][1]
    assert rows[-1] == ("assistant", kind, storable(reply)) and kind in ("chat", "command")
    if kind == "chat":
        operator = app[0].settings.conversation.system_prompt
        assert len(requests) >= 2 and system_of(requests[-1]) == operator
    assert rows[0] == ("user", "chat", text)
