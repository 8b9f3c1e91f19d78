"""Poison text is made storable where it enters storage: a NUL or a lone surrogate in a user
message, a reply, a display name or a summary is recorded (as U+FFFD), on SQLite and on
PostgreSQL, which refused the NUL and failed the whole write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.storage.base import MessageKind
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from bot.text.storable import REPLACEMENT, storable
from bot.types import ConversationKey, Incoming, User

KEY = ConversationKey("test", "poison")
POISON = "a\x00b\ud800c\udfffd"  # NUL, a lone high and a lone low surrogate
CLEAN = f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}d"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    from bot.storage.migrate import upgrade

    await upgrade(database_url)  # SQLite's file is migrated here; PostgreSQL's already is
    store = SqlStore(create_engine(database_url))
    await store.start()
    yield store
    await store.aclose()


def test_storable_replaces_only_what_a_database_refuses() -> None:
    assert storable(POISON) == CLEAN
    text = "Grüße 🎉 \t\n\r\x01 ✓"  # other control characters and astral emoji are fine
    assert storable(text) == text


@given(st.text())
def test_storable_text_always_encodes_as_utf8_without_nul(text: str) -> None:
    kept = storable(text)
    assert "\x00" not in kept and len(kept) == len(text)
    kept.encode("utf-8")  # raises on a lone surrogate


async def test_a_poisoned_message_and_reply_are_recorded(store: SqlStore) -> None:
    user = User("test", "u1", display_name="Eve\x00")
    incoming = Incoming(KEY, user, POISON, idempotency_key="poison-1")
    recorded = await store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=3)
    again = await store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=3)
    assert again.message_id == recorded.message_id and not again.is_new  # re-delivery: once
    cid = recorded.conversation_id
    reply = await store.record_reply(
        cid, [recorded.message_id], "ok\x00" + POISON, kind=MessageKind.CHAT, token_count=2
    )
    assert reply is not None and reply.content == "ok" + REPLACEMENT + CLEAN
    assert await store.pending(cid, 10) == []  # answered: never re-run at the next start
    assert [m.content for m in await store.history(cid, 10)] == [CLEAN, reply.content]


async def test_a_poisoned_summary_is_recorded(store: SqlStore) -> None:
    incoming = Incoming(KEY, User("test", "u1"), "hello", idempotency_key="poison-2")
    recorded = await store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=1)
    cid = recorded.conversation_id
    await store.fold_summary(cid, POISON, recorded.message_id, tokens=4, redactions=0)
    assert (await store.state(cid)).summary == CLEAN
