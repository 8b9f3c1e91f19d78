"""A group that becomes a supergroup whose conversation exists already: a webhook handled
the supergroup's first message before either service message (migrate_to_chat_id in the
old group, migrate_from_chat_id in the new one) told of the move. The move was skipped, and
the group lost its history, its settings and what it kept; now the old conversation is
merged into the supergroup's, under the old one's turn lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from adapters.kit.runner import host_for
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.settings import TelegramSettings
from backends.base import Chunk, GenerationRequest
from bot.app import Parley
from bot.settings import load_settings
from bot.storage.base import MessageKind
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import ScriptedBackend
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import feed, mention_update, message, text_update, update

OLD, NEW = -4567, -1004567
BASIC = {"id": OLD, "type": "group", "title": "Team"}
ADA, ADMIN = 7, 9


class GatedBackend(ScriptedBackend):
    """Echoes; an answer to a question with "slowly" in it waits for `gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if "slowly" in request.messages[-1].content:
            self.asked.set()
            await self.gate.wait()
        async for chunk in super().stream(request):
            yield chunk


@asynccontextmanager
async def _stack(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str, backend: object
) -> AsyncIterator[tuple[Parley, TelegramAdapter, FakeBotApi]]:
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            database={"url": database_url},
            redis={"url": redis_url, "key_prefix": key_prefix},
            telegram={"token": TOKEN, "base_url": base_url, "stream_interval_s": 0.05},
        )
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("telegram")
            assert isinstance(section, TelegramSettings)
            adapter = TelegramAdapter(host_for(app), section)
            app.intake.register("telegram", adapter, section.access)
            async with adapter:
                yield app, adapter, api
                await adapter.idle()


def _in_old(payload: dict[str, Any]) -> dict[str, Any]:
    payload["message"]["chat"] = BASIC
    return payload


async def _migrate(adapter: TelegramAdapter, first_update: int) -> None:
    """Both service messages, as Telegram sends them."""
    upgraded = message(OLD, user_id=ADMIN, migrate_to_chat_id=NEW)
    upgraded["chat"] = BASIC
    await feed(adapter, update(first_update, "message", **upgraded))
    came = message(NEW, user_id=ADMIN, migrate_from_chat_id=OLD)
    await feed(adapter, update(first_update + 1, "message", **came))


async def _answers(app: Parley) -> list[tuple[int, int | None, str]]:
    """Every user message's (id, answered_by, kind) in the database."""
    async with app.store.engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT id, answered_by, kind FROM messages WHERE role = 'user' ORDER BY id"
        )
        return [(r[0], r[1], r[2]) for r in rows.all()]


async def _ids(app: Parley) -> tuple[int, int]:
    old = await app.store.conversation_id(ConversationKey("telegram", str(OLD)), fresh=True)
    new = await app.store.conversation_id(ConversationKey("telegram", str(NEW)), fresh=True)
    assert old is not None and new is not None and old != new
    return old, new


async def test_a_supergroup_with_a_conversation_gets_the_old_groups_merged_into_it(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """History in order, the old group's settings (/keep on), and its message left pending
    (its worker died before answering) answered once, in the supergroup."""
    backend = ScriptedBackend()
    async with _stack(tmp_path, database_url, redis_url, key_prefix, backend) as (app, ad, api):
        api.admins.update({(OLD, ADMIN), (NEW, ADMIN)})
        await feed(ad, _in_old(mention_update(1, OLD, "@parley_bot the word is banana", ADA)))
        await feed(ad, _in_old(text_update(2, OLD, "/keep on", user_id=ADMIN)))
        await ad.idle()
        await feed(ad, mention_update(3, NEW, "@parley_bot hello from the supergroup", ADA))
        await ad.idle()
        old, new = await _ids(app)
        left = Incoming(
            ConversationKey("telegram", str(OLD)), User("telegram", str(ADA), "Ada"),
            "which fruit was it?", "left-pending", group=True,
        )  # fmt: skip
        await app.store.record_incoming(left, kind=MessageKind.CHAT, token_count=5)

        await _migrate(ad, 4)
        await ad.idle()
        await app.manager.wait_idle()
        await feed(ad, text_update(6, NEW, "/keep", user_id=ADA))
        await ad.idle()

        merged = await app.store.history(new, 50)
        chat = [(m.role, m.content) for m in merged if m.kind is MessageKind.CHAT]
        assert chat == [
            (Role.USER, "the word is banana"),
            (Role.ASSISTANT, "echo: Ada: the word is banana"),
            (Role.USER, "hello from the supergroup"),
            (Role.ASSISTANT, "echo: Ada: hello from the supergroup"),
            (Role.USER, "which fruit was it?"),
            (Role.ASSISTANT, "echo: Ada: which fruit was it?"),
        ]
        assert not await app.store.history(old, 50)
        # Answered once, in the supergroup, with the old group's history in its context.
        assert api.texts(NEW).count("echo: Ada: which fruit was it?") == 1
        asked = [r for r in backend.requests if "which fruit" in r.messages[-1].content]
        assert len(asked) == 1
        assert "Ada: the word is banana" in [m.content for m in asked[0].messages]
        assert "is on" in api.texts(NEW)[-1]  # /keep on, set in the old group
        answers = await _answers(app)
        assert all(by is not None for _, by, _ in answers)
        chat_answers = [by for _, by, kind in answers if kind == MessageKind.CHAT]
        assert len(set(chat_answers)) == len(chat_answers) == 3


async def test_a_turn_in_flight_in_the_old_group_ends_before_the_merge(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The merge waits for the old conversation's turn lease: the answer being written as
    the group is upgraded is recorded once, with its question, and the question asked behind
    it is answered once, in the supergroup; nothing is answered twice."""
    backend = GatedBackend()
    async with _stack(tmp_path, database_url, redis_url, key_prefix, backend) as (app, ad, api):
        await feed(ad, _in_old(mention_update(1, OLD, "@parley_bot the word is banana", ADA)))
        await ad.idle()
        await feed(ad, mention_update(2, NEW, "@parley_bot hello from the supergroup", ADA))
        await ad.idle()
        await feed(ad, _in_old(mention_update(3, OLD, "@parley_bot answer slowly", ADA)))
        try:
            async with asyncio.timeout(60):
                await backend.asked.wait()  # its turn holds the old conversation's lease now
            await feed(ad, _in_old(mention_update(4, OLD, "@parley_bot and then?", ADA)))
            await _migrate(ad, 5)
            old, new = await _ids(app)
            # Not merged while the turn runs: both questions still the old conversation's.
            pending = [m.content for m in await app.store.pending(old, 10)]
            assert pending == ["answer slowly", "and then?"]
        finally:
            backend.gate.set()
        await ad.idle()
        await app.manager.wait_idle()

        history = [(m.role, m.content) for m in await app.store.history(new, 50)]
        assert history == [
            (Role.USER, "the word is banana"),
            (Role.ASSISTANT, "echo: Ada: the word is banana"),
            (Role.USER, "hello from the supergroup"),
            (Role.ASSISTANT, "echo: Ada: hello from the supergroup"),
            (Role.USER, "answer slowly"),
            (Role.USER, "and then?"),  # asked while the answer was written
            (Role.ASSISTANT, "echo: Ada: answer slowly"),
            (Role.ASSISTANT, "echo: Ada: and then?"),
        ]
        assert not await app.store.history(old, 50)
        assert not await app.store.pending(new, 10)
        assert api.texts(OLD).count("echo: Ada: answer slowly") == 1
        assert "echo: Ada: answer slowly" not in api.texts(NEW)
        assert api.texts(NEW).count("echo: Ada: and then?") == 1
        lasts = [r.messages[-1].content for r in backend.requests]
        assert sum("answer slowly" in c for c in lasts) == 1
        assert sum("and then?" in c for c in lasts) == 1
        answers = await _answers(app)
        assert len({by for _, by, _ in answers}) == len(answers) == 4


async def test_the_merge_waits_for_another_workers_turn_on_the_old_group(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Another worker holds the old conversation's lease (its turn runs) as the migrate
    service messages come here: the merge waits for it, that worker's answer is recorded
    with its question, and nothing is answered again here."""
    backend = ScriptedBackend()
    async with _stack(tmp_path, database_url, redis_url, key_prefix, backend) as (app, ad, api):
        await feed(ad, _in_old(mention_update(1, OLD, "@parley_bot the word is banana", ADA)))
        await ad.idle()
        await feed(ad, mention_update(2, NEW, "@parley_bot hello from the supergroup", ADA))
        await ad.idle()
        old, new = await _ids(app)
        asked = Incoming(
            ConversationKey("telegram", str(OLD)), User("telegram", str(ADA), "Ada"),
            "which fruit was it?", "asked-elsewhere", group=True,
        )  # fmt: skip
        question = await app.store.record_incoming(asked, kind=MessageKind.CHAT, token_count=5)
        async with app.store.turn_lease(old, "worker-b", ttl_s=5, wait_s=5) as lease:
            mid = question.message_id
            assert await app.store.begin_delivery(lease, old, mid, mid)  # shown there
            await _migrate(ad, 3)
            assert [m.id for m in await app.store.pending(old, 10)] == [mid]
            answer = await app.store.record_reply(
                old, [question.message_id], "banana", kind=MessageKind.CHAT, token_count=1,
                epoch=lease.epoch,
            )  # fmt: skip
            assert answer is not None
        await app.manager.wait_idle()

        history = [(m.role, m.content) for m in await app.store.history(new, 50)]
        assert history[-2:] == [(Role.USER, "which fruit was it?"), (Role.ASSISTANT, "banana")]
        assert len(history) == 6
        assert not await app.store.history(old, 50)
        assert not any("which fruit" in r.messages[-1].content for r in backend.requests)
        assert not any("which fruit" in text for text in api.texts(NEW))


async def test_a_merge_that_failed_is_tried_again(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str, monkeypatch: Any
) -> None:
    """The merge's transaction refused at each service message's try (an IntegrityError: a
    setting of the supergroup written by another worker beside it), the old group with
    nothing pending, so that no sweep ever runs its conversation: the merge is tried again,
    and its history is there."""
    backend = ScriptedBackend()
    async with _stack(tmp_path, database_url, redis_url, key_prefix, backend) as (app, ad, _api):
        await feed(ad, _in_old(mention_update(1, OLD, "@parley_bot the word is banana", ADA)))
        await ad.idle()
        await feed(ad, mention_update(2, NEW, "@parley_bot hello from the supergroup", ADA))
        await ad.idle()
        old, new = await _ids(app)
        merge_chat = app.store.merge_chat
        refused: list[int] = []

        async def once_refused(lease: Any, old_id: int, new_id: int) -> bool:
            if len(refused) < 2:  # a try for each service message
                refused.append(old_id)
                raise sa.exc.IntegrityError("UPDATE chat_prefs", {}, Exception("duplicate key"))
            return await merge_chat(lease, old_id, new_id)

        monkeypatch.setattr(app.store, "merge_chat", once_refused)
        await _migrate(ad, 3)
        await ad.idle()
        await app.manager.wait_idle()
        for _ in range(100):  # BUSY_RETRY_S apart
            if not await app.store.history(old, 50):
                break
            await asyncio.sleep(0.1)
        assert refused == [old, old]
        assert not await app.store.history(old, 50)
        merged = [m.content for m in await app.store.history(new, 50)]
        assert merged[:2] == ["the word is banana", "echo: Ada: the word is banana"]
