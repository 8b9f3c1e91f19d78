"""The model path of sentiment: the intent router's one structured-output call also reads the
message's sentiment and a request for a person, into the turn's signals (no extra request).

The real app on PostgreSQL and Redis; the backend is scripted at its seam and claims vLLM's
structured output, answering the schema request with the JSON a model would write.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from backends.base import Backend
from backends.factory import build_backend
from backends.structured import closed_schema, generate_json
from bot.app import Parley
from bot.handoff.phrases import asks_for_person
from bot.handoff.types import HandoffState, Reason
from bot.sentiment.classifier import classify
from bot.sentiment.types import Label, Sentiment
from bot.settings import BackendSettings, load_settings
from bot.skills.intents import TASK_HINT, choice_model, model_sentiment
from bot.skills.prompts import Prompts
from bot.skills.router import Intent, TurnContext
from bot.storage import migrate
from bot.types import ChatMessage, Role
from tests.doubles import AnyDesk, CollectingSink
from tests.fixtures_vllm import require
from tests.skills_helpers import KEY, StructuredBackend, incoming, shout

# Ends in a task hint ("documentation"), so the router asks the model; offline it is neutral.
HINTED = "Where in the documentation is the export described?"


def choice(intent: str = "chat", **sentiment: Any) -> str:
    return json.dumps({"intent": intent, "text": "", "language": "", **sentiment})


@pytest.fixture
async def pg(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


@asynccontextmanager
async def running(
    url: str, redis_url: str, prefix: str, backend: StructuredBackend
) -> AsyncIterator[tuple[Parley, CollectingSink]]:
    settings = load_settings(
        None, database={"url": url}, redis={"url": redis_url, "key_prefix": prefix}
    )
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        sink = CollectingSink()
        app.manager.attach("test", sink)
        app.desk.attach(AnyDesk())  # a help desk reaches these conversations
        yield app, sink


async def recorded(app: Parley) -> list[Sentiment]:
    """The sentiments stored with the conversation's customer messages, oldest first."""
    cid = await app.store.conversation_id(KEY)
    assert cid is not None
    return [s.sentiment for s in reversed(await app.desk.repo.recent_signals(cid, 10))]


def test_the_intent_schema_asks_for_the_sentiment() -> None:
    model = choice_model([])
    schema = closed_schema(model.model_json_schema())
    assert {"intent", "sentiment", "score", "angry"} <= set(schema["required"])
    assert schema["properties"]["sentiment"]["enum"] == ["negative", "neutral", "positive"]
    assert schema["properties"]["score"]["enum"] == [0.25, 0.5, 0.75, 1.0]
    stated = model.model_validate_json(choice(sentiment="positive", score=0.8, angry=False))
    assert list(schema["properties"])[:4] == ["intent", "sentiment", "score", "angry"]
    assert model_sentiment(stated) == Sentiment(Label.POSITIVE, 0.8, False, "model")
    # A reply without the fields still routes; its sentiment is left to the offline reading.
    assert model_sentiment(model.model_validate_json('{"intent": "chat"}')) is None
    with pytest.raises(ValueError):
        model.model_validate_json(choice(sentiment="furious", score=2, angry=True))


def test_requests_for_a_person_reach_the_model_call() -> None:
    for text in ("Is anybody real there?", "Ich brauche einen Mitarbeiter", "人工客服"):
        assert TASK_HINT.search(text), text
    assert not TASK_HINT.search("how are you today")


async def test_the_routing_call_fills_the_turns_sentiment(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    assert classify(HINTED).label is Label.NEUTRAL
    backend = StructuredBackend(choice(sentiment="negative", score=0.9, angry=False), shout)
    async with running(pg, redis_url, key_prefix, backend) as (app, sink):
        await app.manager.handle(incoming(HINTED))
        await app.manager.wait_idle()
        (stored,) = await recorded(app)
        assert stored == Sentiment(Label.NEGATIVE, 0.9, False, "model")
        assert sink.replies[KEY] == [HINTED.upper()]  # routed to chat: one classification call
        assert [r.json_schema is not None for r in backend.requests] == [True, False]
        assert (await app.desk.status(KEY)).state is HandoffState.BOT  # one negative: no rule


async def test_without_the_call_the_offline_classifier_reads_it(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    backend = StructuredBackend(choice(sentiment="positive", score=1.0, angry=False), shout)
    async with running(pg, redis_url, key_prefix, backend) as (app, _):
        await app.manager.handle(incoming("thanks, this is great"))
        await app.manager.wait_idle()
        (stored,) = await recorded(app)
        assert stored.source == "offline" and stored.label is Label.POSITIVE
        assert all(r.json_schema is None for r in backend.requests)  # chat only


async def test_an_angry_reading_from_the_model_escalates(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    backend = StructuredBackend(choice(sentiment="negative", score=0.95, angry=True), shout)
    async with running(pg, redis_url, key_prefix, backend) as (app, _):
        await app.manager.handle(incoming(HINTED))
        await app.manager.wait_idle()
        status = await app.desk.status(KEY)
        assert status.state is HandoffState.WAITING
        assert status.reason is Reason.SENTIMENT and status.detail == "angry"
        assert (await recorded(app))[0].source == "model"


async def test_the_model_choosing_human_hands_off(pg: str, redis_url: str, key_prefix: str) -> None:
    text = "Is anybody real there? I keep getting the same canned text."
    assert not asks_for_person(text)  # the phrase list misses it: only the model can tell
    backend = StructuredBackend(choice("human", sentiment="neutral", score=0.7, angry=False), shout)
    async with running(pg, redis_url, key_prefix, backend) as (app, _):
        await app.manager.handle(incoming(text))
        await app.manager.wait_idle()
        status = await app.desk.status(KEY)
        assert status.state is HandoffState.WAITING and status.reason is Reason.ASKED
        await app.desk.idle()  # the note for the agent is written (its summary: a model call)
        schemas = [r.json_schema is not None for r in backend.requests]
        # The one routing call (structured); no chat answer, only the note's summary after it.
        assert schemas == [True, False] and "summar" in str(backend.requests[1].messages).lower()


@pytest_asyncio.fixture(loop_scope="module")
async def vllm_engine(tiny_model_dir: Path, vllm_env: None) -> AsyncIterator[Backend]:
    require("vllm")
    values = {"kind": "vllm", "model": str(tiny_model_dir), "gpu_memory_utilization": 0.3}
    backend = build_backend(BackendSettings.model_validate({**values, "enforce_eager": True}))
    assert backend is not None
    await backend.start()
    yield backend
    await backend.aclose()


@pytest.mark.vllm
@pytest.mark.asyncio(loop_scope="module")
async def test_the_real_engine_writes_the_sentiment_under_constrained_decoding(
    vllm_engine: Backend,
) -> None:
    """xgrammar compiles the schema (a refusal would turn model intents off) and, with the
    tiny model's random weights, every sampled reply still carries a usable sentiment."""
    intents = [Intent("human", "the customer asks for a person", _no_answer, lambda _: None)]
    prompts = Prompts()
    for temperature in (0.0, 1.0):
        system = prompts.render("intent", intents=intents)
        messages = [ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, HINTED)]
        reply = await generate_json(
            vllm_engine, messages, choice_model(intents), max_tokens=160, temperature=temperature
        )
        found = model_sentiment(reply)
        assert found is not None and found.source == "model"
        assert found.score in (0.25, 0.5, 0.75, 1.0)


async def _no_answer(ctx: TurnContext) -> str:
    return ""
