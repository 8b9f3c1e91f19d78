"""An answer a moderator deletes while it streams is recorded as a deleted message is.

In a Telegram group and a Discord server channel the bot streams an answer by sending one
message and editing it. A moderator who deleted that message while it streamed stopped the
stream (Telegram's "message to edit not found", Discord's 404 Unknown Message), but the
model's whole answer was recorded in SQL: later prompts, /history and summaries carried text
nobody saw and a moderator removed. It is now recorded as the stub a deleted message gets, the
question answered by it (never answered again, nothing sent again), on SQLite and PostgreSQL,
with the windows in process and in Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.telegram import stream as telegram_stream
from backends.base import Chunk, GenerationRequest, Usage
from bot.app import Parley
from bot.storage.base import ANSWER_DELETED_STUB, MessageKind
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import WITHDRAWN_STUB, SqlStore
from bot.types import ConversationKey, Incoming, Role, User
from tests import discord_events as ev
from tests.adapter_harness import discord_harness, telegram_harness
from tests.doubles import ScriptedBackend
from tests.telegram_updates import feed, message, person

GROUP, ADA = -100778, 7
MENTION = "@parley_bot "
REMOVED = "the-removed-part"
WAIT_S = 10


class HeldAnswer(ScriptedBackend):
    """Answers "Noted."; the first answer streams its first half, then waits for `release`
    before the half with REMOVED in it."""

    FIRST = "The first half."

    def __init__(self) -> None:
        super().__init__(lambda request: "Noted.")
        self.release = asyncio.Event()
        self._held = False

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if self._held:
            async for chunk in super().stream(request):
                yield chunk
            return
        self._held = True
        self.requests.append(request)
        yield Chunk(text=self.FIRST)
        await self.release.wait()
        yield Chunk(text=f" The second half: {REMOVED}.")
        yield Chunk(usage=Usage(0, 12), finish_reason="stop")


def prompt(backend: ScriptedBackend) -> list[tuple[Role, str]]:
    return [(m.role, m.content) for m in backend.requests[-1].messages if m.role is not Role.SYSTEM]


@pytest.fixture(params=["in-process", "redis"])
def redis(request: pytest.FixtureRequest, key_prefix: str) -> dict[str, Any] | None:
    """Where the windows are kept: in process (None), or in Redis (its settings)."""
    if request.param == "in-process":
        return None
    request.applymarker(pytest.mark.redis)
    url: str = request.getfixturevalue("redis_url")
    return {"url": url, "key_prefix": key_prefix}


def asked(update_id: int, text: str) -> dict[str, Any]:
    entities = [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]
    body = message(
        GROUP, MENTION + text, user_id=ADA, entities=entities, **{"from": person(ADA, "Ada")}
    )
    return {"update_id": update_id, "message": body}


async def history(app: Parley, key: ConversationKey) -> list[tuple[Role, str]]:
    conversation = await app.store.conversation_id(key)
    assert conversation is not None
    assert await app.store.pending(conversation, 10) == []  # answered, not to be answered again
    return [(m.role, m.content) for m in await app.store.history(conversation, 10)]


async def test_a_telegram_group_answer_deleted_while_it_streams_is_recorded_as_deleted(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(telegram_stream, "GROUP_INTERVAL_S", 0.05)  # quicker, the same path
    backend = HeldAnswer()
    harness = telegram_harness(tmp_path, backend, database_url=database_url, redis=redis)
    async with harness as h:
        app, adapter, api = h.app, h.adapter, h.api
        await feed(adapter, asked(1, "what is new?"))
        async with asyncio.timeout(WAIT_S):
            await api.wait_for_messages(GROUP, 1)
        (shown,) = api.messages[GROUP]
        del api.messages[GROUP][shown]  # an admin deletes it: Telegram tells the bot nothing
        backend.release.set()
        await adapter.idle()
        assert api.texts(GROUP) == []  # nothing sent again
        assert len(api.sent("sendMessage", GROUP)) == 1
        assert len(backend.requests) == 1  # answered once
        key = ConversationKey("telegram", str(GROUP))
        assert (await history(app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)
        await feed(adapter, asked(2, "and then?"))
        await adapter.idle()
        turns = prompt(backend)
        assert not [text for _, text in turns if REMOVED in text or "first half" in text]
        assert (Role.ASSISTANT, ANSWER_DELETED_STUB) in turns
        assert api.texts(GROUP) == ["Noted."]


class LongAnswer(ScriptedBackend):
    """Answers "Noted."; the first answer is WORDS words, one every few milliseconds, and
    notes how many it gave and whether its stream was closed before the end."""

    WORDS = 2000

    def __init__(self) -> None:
        super().__init__(lambda request: "Noted.")
        self.given = 0
        self.closed_early = False
        self._long = True

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if not self._long:
            async for chunk in super().stream(request):
                yield chunk
            return
        self._long = False
        self.requests.append(request)
        try:
            for n in range(self.WORDS):
                yield Chunk(text=f"{REMOVED}-{n} ")
                self.given += 1
                await asyncio.sleep(0.005)
            yield Chunk(usage=Usage(0, self.WORDS), finish_reason="stop")
        except (GeneratorExit, asyncio.CancelledError):
            self.closed_early = True
            raise


async def test_the_model_stops_once_its_answer_is_deleted_in_the_chat(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of an answer deleted while it streams is kept: its model request is aborted
    there (a 10 s answer no longer runs to its end on the model's server)."""
    monkeypatch.setattr(telegram_stream, "GROUP_INTERVAL_S", 0.05)
    backend = LongAnswer()
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        app, adapter, api = h.app, h.adapter, h.api
        await feed(adapter, asked(1, "tell me everything"))
        async with asyncio.timeout(WAIT_S):
            await api.wait_for_messages(GROUP, 1)
        (shown,) = api.messages[GROUP]
        del api.messages[GROUP][shown]  # a moderator deletes it
        await adapter.idle()
        assert backend.closed_early and backend.given < LongAnswer.WORDS
        assert api.texts(GROUP) == []  # nothing sent again
        key = ConversationKey("telegram", str(GROUP))
        assert (await history(app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)
        await feed(adapter, asked(2, "and then?"))
        await adapter.idle()
        assert not [text for _, text in prompt(backend) if REMOVED in text]
        assert api.texts(GROUP) == ["Noted."]


async def test_a_discord_channel_answer_deleted_while_it_streams_is_recorded_as_deleted(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    backend = HeldAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        await h.deliver_event(ev.message_create("what is new?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            await h.api.until(lambda: bool(h.api.messages[ev.CHANNEL]))
        (shown,) = h.api.messages[ev.CHANNEL]
        h.api.delete(ev.CHANNEL, shown, ev.GUILD)  # a moderator, with Manage Messages
        async with asyncio.timeout(WAIT_S):
            await h.adapter.deleted(1)
        backend.release.set()
        await h.idle()
        assert h.api.texts(ev.CHANNEL) == []  # nothing sent again
        assert len(backend.requests) == 1  # answered once
        key = ConversationKey("discord", str(ev.CHANNEL))
        assert (await history(h.app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)
        await h.deliver_event(ev.message_create("and then?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        await h.idle()
        turns = prompt(backend)
        assert not [text for _, text in turns if REMOVED in text or "first half" in text]
        assert (Role.ASSISTANT, ANSWER_DELETED_STUB) in turns
        assert h.api.texts(ev.CHANNEL) == ["Noted."]


async def test_the_model_stops_once_its_discord_answer_is_deleted_in_the_channel(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """The same in a Discord channel (its own surface, typing and rate gate around the
    kit's streamer): the edit Discord refuses with Unknown Message aborts the model."""
    backend = LongAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        await h.deliver_event(ev.message_create("tell me everything", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            await h.api.until(lambda: bool(h.api.messages[ev.CHANNEL]))
        (shown,) = h.api.messages[ev.CHANNEL]
        h.api.delete(ev.CHANNEL, shown, ev.GUILD)  # a moderator, with Manage Messages
        await h.idle()
        assert backend.closed_early and backend.given < LongAnswer.WORDS
        assert h.api.texts(ev.CHANNEL) == []  # nothing sent again
        key = ConversationKey("discord", str(ev.CHANNEL))
        assert (await history(h.app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)


async def test_a_discord_answer_deleted_once_complete_is_redacted(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """Discord tells the bot when its own message is deleted: a complete answer a moderator
    deletes later is redacted as a member's deleted message is (the stub in the history, the
    cached window stale), and its question stays answered."""
    answers = iter([f"Noted, {REMOVED}.", "Noted."])
    backend = ScriptedBackend(lambda request: next(answers))
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        await h.deliver_event(ev.message_create("what is new?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        await h.idle()
        (shown,) = h.api.messages[ev.CHANNEL]
        h.api.delete(ev.CHANNEL, shown, ev.GUILD)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.deleted(1)
        key = ConversationKey("discord", str(ev.CHANNEL))
        assert (await history(h.app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)
        await h.deliver_event(ev.message_create("and then?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        await h.idle()
        assert len(backend.requests) == 2  # the first question was not answered again
        turns = prompt(backend)
        assert not [text for _, text in turns if REMOVED in text]
        assert (Role.ASSISTANT, ANSWER_DELETED_STUB) in turns
        assert h.api.texts(ev.CHANNEL) == ["Noted."]


async def test_an_answer_redacted_by_its_key_leaves_the_summary_folded_from_it(
    database_url: str,
) -> None:
    """The store's half of a deletion event: an answer recorded under its first message's
    key is redacted once (its stub, the count of redactions raised), and a summary folded
    through it is dropped in the same transaction, as a member's deleted message's is."""
    await ensure_schema(database_url, True)
    store = SqlStore(create_engine(database_url))
    await store.start()
    try:
        chat = MessageKind.CHAT
        asked = Incoming(ConversationKey("test", "moderated"), User("test", "u1", "Ada"), "hi",
                         idempotency_key="q1")  # fmt: skip
        question = await store.record_incoming(asked, kind=chat, token_count=1)
        cid = question.conversation_id
        text = f"Noted, {REMOVED}."
        answer = await store.record_reply(
            cid, [question.message_id], text, kind=chat, token_count=5, idempotency_key="a1"
        )
        assert answer is not None
        assert await store.fold_summary(cid, f"They said {REMOVED}.", answer.id, 5, 0)
        assert await store.redact("a1") == cid
        assert await store.redact("a1") is None  # once
        state = await store.state(cid)
        assert (state.summary, state.redactions) == ("", 1)
        stored = await store.history(cid, 10)
        assert [(m.role, m.content) for m in stored][-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)
        assert await store.pending(cid, 10) == []
    finally:
        await store.aclose()


class HeldLongAnswer(HeldAnswer):
    """The first answer fills its first message (a paragraph near Discord's 2,000 characters)
    and starts a second one, then waits for `release` before the part with REMOVED in it."""

    FIRST = "The first half. " * 118 + "\n\n" + "The second message. " * 10


async def _deleted_while_the_second_streams(
    h: Any, backend: HeldAnswer, pick: Callable[[list[int]], list[int]]
) -> None:
    """A long answer's two messages shown, then those `pick` chooses deleted by a moderator
    (with Manage Messages) while the second still streams; the answer then finishes."""
    await h.deliver_event(ev.message_create("what is new?", channel=ev.CHANNEL,
                                            mentions_bot=True))  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_S):
            await h.api.until(lambda: len(h.api.messages[ev.CHANNEL]) == 2)
        chosen = pick(sorted(h.api.messages[ev.CHANNEL]))
        for message_id in chosen:
            h.api.delete(ev.CHANNEL, message_id, ev.GUILD)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.deleted(len(chosen))
    finally:
        backend.release.set()
    await h.idle()


async def test_a_discord_answer_whose_first_message_is_deleted_while_the_rest_streams(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """A moderator deletes the first message of a long answer while its second still streams:
    the first is never edited again (no Unknown Message), and its deletion event arrives
    before the answer is recorded (nothing to redact yet). The answer must not be recorded
    whole under the key of a message that is gone: the deletion leaves a mark (in Redis, or
    in process), which the turn reads once the answer is recorded, and redacts it."""
    backend = HeldLongAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        await _deleted_while_the_second_streams(h, backend, lambda shown: shown[:1])
        key = ConversationKey("discord", str(ev.CHANNEL))
        recorded = (await history(h.app, key))[-1]
        assert recorded[0] is Role.ASSISTANT
        assert REMOVED not in recorded[1] and "first half" not in recorded[1], recorded


async def test_a_discord_answer_whose_later_message_is_deleted_keeps_what_the_chat_shows(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """A moderator deletes the second message of a long answer while it streams: its next
    edit is refused (Unknown Message), the first message stays in the channel. The answer is
    recorded as what the channel still shows, then the stub (it was the stub alone, though
    its first message stayed visible), so the next prompt has the first message's text and
    none of the rest."""
    backend = HeldLongAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        await _deleted_while_the_second_streams(h, backend, lambda shown: shown[1:])
        (shown,) = h.api.texts(ev.CHANNEL)  # the first message, as it was
        assert shown.startswith("The first half.") and "second message" not in shown
        key = ConversationKey("discord", str(ev.CHANNEL))
        role, recorded = (await history(h.app, key))[-1]
        assert role is Role.ASSISTANT and recorded == f"{shown}\n\n{ANSWER_DELETED_STUB}"
        await h.deliver_event(ev.message_create("and then?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        await h.idle()
        turns = prompt(backend)
        assert (Role.ASSISTANT, recorded) in turns
        assert not [text for _, text in turns if REMOVED in text or "second message" in text]


async def test_a_discord_answer_whose_first_and_later_messages_are_deleted_keeps_nothing(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """Both messages deleted while the second streams (a purge): what the second's refusal
    says is still shown (the first message's text) is gone too, and its deletion mark
    redacts the answer to the stub alone."""
    backend = HeldLongAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        await _deleted_while_the_second_streams(h, backend, lambda shown: shown)
        assert h.api.texts(ev.CHANNEL) == []
        key = ConversationKey("discord", str(ev.CHANNEL))
        assert (await history(h.app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)


class HeldTelegramLongAnswer(HeldAnswer):
    """HeldLongAnswer at Telegram's limit: a first message near 4,096 characters, a second
    one started."""

    FIRST = "The first half. " * 250 + "\n\n" + "The second message. " * 10


async def test_a_telegram_answer_whose_later_message_is_deleted_is_the_stub_alone(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Telegram tells a bot of no deletion: had the moderator deleted the first message too,
    nothing would ever say so, so its text is not kept (a review: it was kept, before the
    stub, as what the chat still showed)."""
    monkeypatch.setattr(telegram_stream, "GROUP_INTERVAL_S", 0.05)
    backend = HeldTelegramLongAnswer()
    harness = telegram_harness(tmp_path, backend, database_url=database_url, redis=redis)
    async with harness as h:
        await feed(h.adapter, asked(1, "what is new?"))
        try:
            async with asyncio.timeout(WAIT_S):
                await h.api.wait_for_messages(GROUP, 2)
            del h.api.messages[GROUP][max(h.api.messages[GROUP])]  # an admin deletes it
        finally:
            backend.release.set()
        await h.adapter.idle()
        key = ConversationKey("telegram", str(GROUP))
        assert (await history(h.app, key))[-1] == (Role.ASSISTANT, ANSWER_DELETED_STUB)


async def test_a_slash_command_answer_deleted_while_it_streams_is_not_sent_again(
    tmp_path: Path, database_url: str
) -> None:
    """A slash command's answer grows in its deferred response, edited through the
    interaction's token. A moderator deletes it: the next edit is 404 Unknown Message (10008),
    which the token's guard took for an expired token (401, 404 Unknown Webhook), so the rest
    of the answer went on in a new channel message and the whole answer was recorded."""
    backend = HeldAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url) as h:
        await h.command(ev.interaction_create("summarize", "The tea. " * 40, channel=ev.CHANNEL))
        try:
            async with asyncio.timeout(WAIT_S):
                await h.api.until(lambda: bool(h.api.messages[ev.CHANNEL]))
            (shown,) = h.api.messages[ev.CHANNEL]
            h.api.delete(ev.CHANNEL, shown, ev.GUILD)  # a moderator, with Manage Messages
        finally:
            backend.release.set()
        await h.idle()
        assert h.api.texts(ev.CHANNEL) == []  # nothing sent again
        key = ConversationKey("discord", str(ev.CHANNEL))
        recorded = (await history(h.app, key))[-1]
        assert REMOVED not in recorded[1], recorded


class CharTokenizedLongAnswer(HeldLongAnswer):
    """HeldLongAnswer on a model whose tokenizer counts more than the bytes/4 estimate (one
    token a character: code, digits, hex are often near that)."""

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) for t in texts]


async def test_a_partly_deleted_answer_is_counted_by_the_models_tokenizer(
    tmp_path: Path, database_url: str
) -> None:
    """What the chat still shows of a partly deleted answer goes into later prompts: its
    token count must be at least what the model's tokenizer makes of it (as every chat
    message's and the stubs'), or windows built from SQL overrun their budget."""
    backend = CharTokenizedLongAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url) as h:
        await h.deliver_event(ev.message_create("what is new?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        try:
            async with asyncio.timeout(WAIT_S):
                await h.api.until(lambda: len(h.api.messages[ev.CHANNEL]) == 2)
            second = max(h.api.messages[ev.CHANNEL])
            h.api.delete(ev.CHANNEL, second, ev.GUILD)
            async with asyncio.timeout(WAIT_S):
                await h.adapter.deleted(1)
        finally:
            backend.release.set()
        await h.idle()
        key = ConversationKey("discord", str(ev.CHANNEL))
        cid = await h.app.store.conversation_id(key)
        assert cid is not None
        last = (await h.app.store.history(cid, 10))[-1]
        assert last.role is Role.ASSISTANT and last.content.endswith(ANSWER_DELETED_STUB)
        (counted,) = await backend.count_tokens([last.content])
        assert last.token_count >= counted, (last.token_count, counted)


async def test_a_discord_document_deleted_while_it_is_read_is_never_answered(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """The question's side: a message deleted before it was recorded (its document still
    downloading and being read, a question still being counted) was not found by its
    deletion event, and was then recorded, answered, and kept in the history and the model's
    context: the sender who sent the wrong file and deleted it at once had it read and
    answered. The deletion's mark is read once the message is recorded, and it is withdrawn
    then, never answered."""
    await _withdrawn_while_read(tmp_path, database_url, redis, ("payroll.txt",))


async def test_a_discord_message_of_documents_deleted_while_it_is_read_gets_no_notice(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None
) -> None:
    """The same with two documents: the message was withdrawn, never answered, and still
    got "only the first document was read", a notice about a message its sender had
    deleted. A withdrawn message gets nothing."""
    await _withdrawn_while_read(tmp_path, database_url, redis, ("payroll.txt", "bonus.txt"))


async def _withdrawn_while_read(
    tmp_path: Path, database_url: str, redis: dict[str, Any] | None, names: tuple[str, ...]
) -> None:
    """A message of documents `names` deleted while the first is downloading: withdrawn,
    nothing sent to the chat (no answer, no notice), no model asked."""
    backend = ScriptedBackend(lambda request: "It is about the payroll.")
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        docs = []
        for n, name in enumerate(names):
            content = f"{name}: Ada 9,000; Bo 7,500.\n".encode()
            url = h.api.cdn_url(name)
            h.api.files[name] = content
            docs.append({"id": str(n + 1), "filename": name, "size": len(content),
                         "content_type": "text/plain", "url": url, "proxy_url": url})  # fmt: skip
        h.api.held[names[0]] = release = asyncio.Event()
        question = ev.message_create("summarize this", attachments=docs)
        h.api.push("MESSAGE_CREATE", question)
        async with asyncio.timeout(WAIT_S):
            await h.api.until(lambda: any(c.path.endswith(f"/{names[0]}") for c in h.api.calls))
            h.api.delete(ev.DM, int(question["id"]))
            await h.adapter.deleted(1)
            release.set()
            await h.adapter.handled(1)
            await h.idle()
        assert h.api.texts(ev.DM) == []
        assert not backend.requests
        key = ConversationKey("discord", str(ev.DM))
        assert await history(h.app, key) == [(Role.USER, WITHDRAWN_STUB)]
