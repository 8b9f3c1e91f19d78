"""Hostile input through the conversation core, found by a trial as an attacker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from backends.base import Chunk, GenerationRequest, Usage
from bot import phrases
from bot.app import Parley
from bot.conversation.manager import CUT_OFF_NOTE, STOPPED_NOTE
from bot.settings import Settings
from bot.storage import migrate
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.skills_helpers import StructuredBackend

# 32 connections at the peak measured here, a third of PostgreSQL's 100 (tests/conftest.py).
pytestmark = pytest.mark.many_connections

GROUP = ConversationKey("test", "group-1")
ADA = User("test", "u1", "Ada")
BOB = User("test", "u2", "Bob")
_ids = itertools.count()


def said(text: str, user: User, *, key: ConversationKey = GROUP, group: bool = True) -> Incoming:
    return Incoming(key, user, text, idempotency_key=f"abuse{next(_ids)}", group=group)


class GatedBackend(ScriptedBackend):
    """Streams its answer's first word, then waits for `gate` before the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        yield Chunk(text="first")
        await self.gate.wait()
        yield Chunk(text=" and the rest")
        yield Chunk(usage=Usage(0, 4), finish_reason="stop")


class FirstChunkSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.first_chunk = asyncio.Event()

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        async def watched() -> AsyncIterator[str]:
            async for chunk in chunks:
                self.first_chunk.set()
                yield chunk

        await super().deliver(key, watched(), reply_to=reply_to)


def settings_for(tmp_path: Path) -> Settings:
    return Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"})  # type: ignore[arg-type]


async def test_a_members_stop_in_a_group_leaves_another_members_answer_alone(
    tmp_path: Path,
) -> None:
    """Bob's /stop in a group cut the answer Ada was being given (and aborted its request):
    any member could silence the bot's answers to everyone else, as /reset could before it
    was made the admins'. Now /stop stops the answer to the sender's own message only."""
    backend = GatedBackend()
    async with Parley(settings_for(tmp_path), backend=backend) as app:
        sink = FirstChunkSink()
        app.manager.attach("test", sink)
        asked = await app.manager.submit(said("tell me a long story", ADA))
        await sink.first_chunk.wait()
        await app.manager.submit(said("/stop", BOB))
        backend.gate.set()
        await app.manager.wait_idle(asked.conversation_id)
        answer, _ = sink.replies[GROUP]
        assert answer == "first and the rest"
        assert not answer.endswith(STOPPED_NOTE)

        # Her own /stop still stops it.
        backend.gate = asyncio.Event()
        sink.first_chunk = asyncio.Event()
        await app.manager.submit(said("another story, please", ADA))
        await sink.first_chunk.wait()
        await app.manager.submit(said("/stop", ADA))
        await app.manager.wait_idle(asked.conversation_id)
        history = await app.store.history(asked.conversation_id, 10)
    stopped = [m.content for m in history if m.role is Role.ASSISTANT][2]
    assert stopped == "first" + STOPPED_NOTE
    assert sink.replies[GROUP][2] == stopped


async def test_a_long_language_tag_from_the_platform_does_not_lose_the_message(
    postgres_url: str,
) -> None:
    """A sender whose app reports a language tag longer than the 16 characters the database
    keeps (Telegram's language_code is "an IETF language tag", and BCP 47 allows
    "zh-Hant-TW-u-nu-hanidec") had every message refused by PostgreSQL ("value too long"):
    Telegram was answered 503 until the update was set aside, and the message never answered.
    Now the tag is cut at a subtag to fit (and NUL, which PostgreSQL refuses, replaced)."""
    await migrate.upgrade(postgres_url)
    settings = Settings(database={"url": postgres_url})  # type: ignore[arg-type]
    private = ConversationKey("test", "private-1")
    async with Parley(settings, backend=ScriptedBackend()) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        tagged = dataclasses.replace(ADA, language="zh-Hant-TW-u-nu-hanidec")
        first = await app.manager.handle(said("hello", tagged, key=private, group=False))
        nul = dataclasses.replace(BOB, language="de\x00")
        second = await app.manager.handle(said("good day", nul, key=private, group=False))
        prefs = [await app.prefs.for_message(r.message_id) for r in (first, second)]
    assert sink.replies[private] == ["echo: hello", "echo: good day"]
    assert [p.platform_language for p in prefs] == ["zh-Hant-TW-u-nu", "de\ufffd"]


class SlowToClassify(StructuredBackend):
    """Claims structured output; its classification call (the turn's first model call, before
    anything streams) waits for `gate`."""

    def __init__(self) -> None:
        super().__init__('{"intent": "chat"}', lambda r: "a long answer nobody wants now")
        self.classifying = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if request.json_schema is not None:
            self.classifying.set()
            await self.gate.wait()
        async for chunk in super().stream(request):
            yield chunk


async def test_a_stop_before_the_answer_streams_is_not_lost(tmp_path: Path) -> None:
    """A /stop sent while the turn made its first model calls (the intent check, the summary
    of older turns) found no answer streaming and was lost: the whole answer was generated
    and shown, and then "Stopped." was said under it. Now it stops the turn's answer before it
    begins: the model is not asked for it, and the answer is the stopped note."""
    backend = SlowToClassify()
    private = ConversationKey("test", "private-2")
    async with Parley(settings_for(tmp_path), backend=backend) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        question = "is there a person who can read the docs for me?"  # a task hint: classified
        asked = await app.manager.submit(said(question, ADA, key=private, group=False))
        await backend.classifying.wait()
        await app.manager.submit(said("/stop", ADA, key=private, group=False))
        backend.gate.set()
        await app.manager.wait_idle(asked.conversation_id)
    stopped, told = sink.replies[private]
    assert stopped == STOPPED_NOTE.strip()
    assert told.startswith("Stopped.")
    assert [r.json_schema is not None for r in backend.requests] == [True]  # no answer asked


async def test_a_run_of_backticks_longer_than_the_context_is_still_summarised(
    tmp_path: Path,
) -> None:
    """A text to summarise is sent between fence lines one backtick longer than its longest
    run: a pasted run of 20,000 backticks made the two fence lines alone longer than a
    4,096-token model's context. The summary raised ValueError before its first line, taken
    for the platform failing: the user got no answer at all (and the record said "[The reply
    was cut off.]"). Now such a run is cut to 8 backticks, as a partial summary's are."""
    backend = ScriptedBackend(lambda r: "The meeting agreed on the budget.", max_model_len=4096)
    text = "We met about the budget. " * 20 + "`" * 20_000 + " It was agreed. " * 20
    private = ConversationKey("test", "private-3")
    async with Parley(settings_for(tmp_path), backend=backend) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        await app.manager.handle(said("/summarize " + text, ADA, key=private, group=False))
    assert sink.replies[private] == ["The meeting agreed on the budget."]
    (request,) = backend.requests
    assert await backend.count_chat_tokens(request.messages) + request.max_tokens <= 4096
    assert "`" * 10 not in request.messages[-1].content  # 8 in the text, 9 in its fence


class FailsUnexpectedly(ScriptedBackend):
    """A model client with a bug: its stream raises an error that is no BotError, before any
    text or after `after` words."""

    def __init__(self, after: int = 0) -> None:
        super().__init__(lambda r: "the answer goes on and on")
        self.after = after

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        words = 0
        async for chunk in super().stream(request):
            if words == self.after:
                raise KeyError("choices")
            words += 1
            yield chunk


@pytest.mark.parametrize("text", ["hello there", "/translate to de good morning"])
async def test_an_unexpected_failure_of_the_answer_is_said_not_left_unanswered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    """An error that is no BotError (a bug in a model client or a skill, as the ValueError a
    run of backticks made in /summarize) before the answer's first piece went through the
    platform's delivery and was taken for the platform failing: the user got no answer at
    all, the history said "[The reply was cut off.]" and the log blamed the platform. Now the
    answer is the sentence for a failure on the bot's side, logged whole as the answer's."""
    private = ConversationKey("test", "private-4")
    async with Parley(settings_for(tmp_path), backend=FailsUnexpectedly()) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        asked = await app.manager.handle(said(text, ADA, key=private, group=False))
        history = await app.store.history(asked.conversation_id, 10)
    assert sink.replies[private] == [phrases.GENERIC]
    assert [m.content for m in history if m.role is Role.ASSISTANT] == [phrases.GENERIC]
    assert "the platform failed" not in caplog.text
    assert "KeyError" in caplog.text


@pytest.mark.parametrize("text", ["hello there", "/translate to de good morning"])
async def test_an_unexpected_failure_after_text_ends_the_answer_cut_off(
    tmp_path: Path, text: str
) -> None:
    """The chat relay's and a skill's stream alike: what was shown is kept, with the note."""
    private = ConversationKey("test", "private-5")
    async with Parley(settings_for(tmp_path), backend=FailsUnexpectedly(after=2)) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        asked = await app.manager.handle(said(text, ADA, key=private, group=False))
        history = await app.store.history(asked.conversation_id, 10)
    (shown,) = sink.replies[private]
    assert shown.endswith(CUT_OFF_NOTE) and shown != CUT_OFF_NOTE.lstrip()
    assert [m.content for m in history if m.role is Role.ASSISTANT] == [shown]


@dataclasses.dataclass
class TwoWorkers:
    """Two workers on one PostgreSQL and Redis: `first` streams through the gated model."""

    first: Parley
    second: Parley
    backend: GatedBackend
    sink: FirstChunkSink

    async def streaming(self, incoming: Incoming) -> int:
        """Submit `incoming` to the first worker; its conversation, once its answer shows."""
        asked = await self.first.manager.submit(incoming)
        async with asyncio.timeout(10):
            await self.sink.first_chunk.wait()
        return asked.conversation_id


@contextlib.asynccontextmanager
async def two_workers(
    postgres_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[TwoWorkers]:
    await migrate.upgrade(postgres_url)
    redis = {"url": redis_url, "key_prefix": key_prefix}
    settings = Settings(database={"url": postgres_url}, redis=redis)  # type: ignore[arg-type]
    backend = GatedBackend()
    async with (
        Parley(settings, backend=backend) as first,
        Parley(settings, backend=ScriptedBackend()) as second,
    ):
        sink = FirstChunkSink()
        first.manager.attach("test", sink)
        second.manager.attach("test", CollectingSink())
        try:
            yield TwoWorkers(first, second, backend, sink)
        finally:
            backend.gate.set()


@pytest.mark.parametrize("group", [False, True])
async def test_a_stop_that_reaches_another_worker_stops_the_answer(
    postgres_url: str, redis_url: str, key_prefix: str, group: bool
) -> None:
    """Two workers behind one webhook: a /stop that a load balancer gave to the worker where
    the turn does not run did nothing there, and the whole answer came, then "Stopped.". It
    now leaves a mark in Redis that the turn finds within a second. In a group, another
    member's /stop still leaves the answer alone (the rule of one worker)."""
    key = ConversationKey("test", f"two-workers-{group}")
    async with two_workers(postgres_url, redis_url, key_prefix) as w:
        cid = await w.streaming(said("tell me a story", ADA, key=key, group=group))
        if group:  # Bob's /stop is no stop of Ada's answer, on any worker
            await w.second.manager.submit(said("/stop", BOB, key=key, group=group))
            await asyncio.sleep(2.5)  # two looks of the turn
            assert key not in w.sink.replies  # still streaming
        await w.second.manager.submit(said("/stop", ADA, key=key, group=group))
        async with asyncio.timeout(10):  # the gate stays shut: only the stop ends it
            await w.first.manager.wait_idle(cid)
        await w.second.manager.wait_idle(cid)  # the /stop's own answer
        # The mark stays for a minute; a later turn that looks for it is not stopped.
        w.backend.gate, w.sink.first_chunk = asyncio.Event(), asyncio.Event()
        await w.streaming(said("and then?", ADA, key=key, group=group))
        await asyncio.sleep(1.5)  # a look of the later turn
        w.backend.gate.set()
        await w.first.manager.wait_idle(cid)
        history = await w.first.store.history(cid, 20)
    answers = [m.content for m in history if m.role is Role.ASSISTANT]
    assert answers[0] == "first" + STOPPED_NOTE
    assert answers[-1] == "first and the rest"


async def test_an_agent_taking_over_at_another_worker_stops_the_bots_answer(
    postgres_url: str, redis_url: str, key_prefix: str
) -> None:
    """An agent's takeover that the help desk's webhook brought to a worker other than the
    one writing the bot's answer stopped nothing there: the bot went on answering over the
    agent until its answer was done. It stops as a /stop from elsewhere does; the
    conversation's next turn, once the agent gives it back, is not stopped by the mark."""
    key = ConversationKey("test", "taken-elsewhere")
    async with two_workers(postgres_url, redis_url, key_prefix) as w:
        cid = await w.streaming(said("tell me a story", ADA, key=key, group=False))
        await w.second.desk.take(key, "Grace")
        async with asyncio.timeout(10):  # the gate stays shut: only the stop ends it
            await w.first.manager.wait_idle(cid)
        await w.second.desk.give_back(key, "Grace")
        w.backend.gate.set()
        await w.first.manager.handle(said("and another", ADA, key=key, group=False))
        history = await w.first.store.history(cid, 10)
    answers = [m.content for m in history if m.role is Role.ASSISTANT]
    assert answers[0] == "first" + STOPPED_NOTE
    assert answers[-1] == "first and the rest"
