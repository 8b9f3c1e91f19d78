"""Retention (`parley data`): `Store.forget_user` and `Store.prune`, on SQLite and
PostgreSQL. A dry run counts and writes nothing; summaries that may quote what was deleted
are cleared."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bot.errors import StorageError
from bot.storage import sql_store
from bot.storage.base import Erasure, MessageKind
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.prefs import PrefsRepository
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User, utcnow

GROUP, PRIVATE = ConversationKey("telegram", "-100"), ConversationKey("telegram", "12345")
ADA, BOB = User("telegram", "12345", "Ada"), User("telegram", "678", "Bob")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    from bot.storage.migrate import upgrade

    await upgrade(database_url)
    store = SqlStore(create_engine(database_url))
    await store.start()
    yield store
    await store.aclose()


async def _said(store: SqlStore, key: ConversationKey, user: User, text: str, **kw: object) -> int:
    asked = Incoming(key, user, text, idempotency_key=f"{key.chat_id}:{text}", **kw)  # type: ignore[arg-type]
    recorded = await store.record_incoming(asked, kind=MessageKind.CHAT, token_count=1)
    reply = f"reply to {text}"
    assert await store.record_reply(
        recorded.conversation_id, [recorded.message_id], reply, kind=MessageKind.CHAT, token_count=1
    )
    return recorded.message_id


async def _texts(store: SqlStore, conversation_id: int) -> list[str]:
    return [m.content for m in await store.history(conversation_id, 50)]


async def test_forgetting_a_user_deletes_their_words_and_whatever_quoted_them(
    store: SqlStore,
) -> None:
    ada_said = await _said(store, GROUP, ADA, "ada's secret")
    await _said(store, GROUP, BOB, "bob's news")
    await _said(store, PRIVATE, ADA, "ada alone")
    group = await store.conversation_id(GROUP)
    private = await store.conversation_id(PRIVATE)
    assert group is not None and private is not None
    await store.fold_summary(group, "Ada said: ada's secret", ada_said + 1, 5)
    ada_ref = (await store.turn_prefs(ada_said)).user_ref
    assert ada_ref is not None
    await PrefsRepository(store.engine, store, MemoryCache()).set_language(ada_ref, "de")

    expected = Erasure(messages=4, cleared=(group,), deleted=(private,), users=1)
    assert await store.forget_user("telegram", "12345", apply=False) == expected
    assert len(await _texts(store, group)) == 4  # a dry run writes nothing
    assert await store.forget_user("telegram", "12345", apply=True) == expected

    assert await _texts(store, group) == ["bob's news", "reply to bob's news"]
    assert (await store.state(group)).summary == ""
    with pytest.raises(StorageError):
        await store.state(private)  # her own chat, whole
    back = await store.record_incoming(
        Incoming(GROUP, ADA, "hi again", idempotency_key="again"), kind=MessageKind.CHAT,
        token_count=1,
    )  # fmt: skip
    again = await store.turn_prefs(back.message_id)
    assert again.user_ref != ada_ref and again.language is None  # a new user, no preferences
    assert await store.forget_user("telegram", "nobody", apply=True) == Erasure()


async def test_pruning_deletes_old_messages_in_batches_and_clears_their_summaries(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_store, "DELETE_BATCH", 2)
    old = utcnow() - timedelta(days=100)
    for n in range(3):
        asked = Incoming(GROUP, ADA, f"old {n}", idempotency_key=f"old{n}", sent_at=old)
        await store.record_incoming(asked, kind=MessageKind.OBSERVED, token_count=1)
    await _said(store, GROUP, BOB, "recent")
    await _said(store, PRIVATE, ADA, "also recent")
    group = await store.conversation_id(GROUP)
    private = await store.conversation_id(PRIVATE)
    assert group is not None and private is not None
    await store.fold_summary(group, "Ada said: old 0", 1, 5)
    await store.fold_summary(private, "Ada: also recent", 1, 5)

    cutoff = utcnow() - timedelta(days=90)
    assert await store.prune(cutoff, apply=False) == Erasure(messages=3, cleared=(group,))
    assert (await store.state(group)).summary  # a dry run writes nothing
    assert await store.prune(cutoff, apply=True) == Erasure(messages=3, cleared=(group,))

    assert await _texts(store, group) == ["recent", "reply to recent"]
    state = await store.state(group)
    assert (state.summary, state.summary_through_id, state.summary_tokens) == ("", 0, 0)
    assert (await store.state(private)).summary == "Ada: also recent"
    assert await store.prune(cutoff, apply=True) == Erasure()
