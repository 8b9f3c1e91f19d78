"""`/keep delete` deletes a chat's kept messages in batches (issue 19's review): one DELETE of
a channel kept for months could outrun database.timeout_s and roll back, and the user's
deletion request then failed after the opt-out was already written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event

from bot.storage import sql_store
from bot.storage.base import MessageKind
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User

KEY, USER = ConversationKey("test", "kept-group"), User("test", "u1", "Ada")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    from bot.storage.migrate import upgrade

    await upgrade(database_url)
    store = SqlStore(create_engine(database_url))
    await store.start()
    yield store
    await store.aclose()


async def test_kept_messages_are_deleted_in_batches_and_nothing_else(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_store, "DELETE_BATCH", 2)
    for n in range(5):
        kept = Incoming(KEY, USER, f"chatter {n}", idempotency_key=f"o{n}")
        await store.record_incoming(kept, kind=MessageKind.OBSERVED, token_count=1)
    asked = Incoming(KEY, USER, "a question", idempotency_key="c1")
    recorded = await store.record_incoming(asked, kind=MessageKind.CHAT, token_count=1)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await store.delete_observed(recorded.conversation_id) == 5
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", seen)
    assert sum(s.lstrip().upper().startswith("DELETE") for s in statements) == 3  # 2 + 2 + 1
    left = [m.content for m in await store.pending(recorded.conversation_id, 10)]
    assert left == ["a question"]
    assert await store.delete_observed(recorded.conversation_id) == 0


async def test_answers_quoting_kept_messages_go_with_them(store: SqlStore) -> None:
    """A "what did I miss" summary (DIGEST) quotes the kept chatter: /keep delete deletes it
    and the message that asked for it; the chat's other answers stay."""
    kept = Incoming(KEY, USER, "the launch code is 1234", idempotency_key="o1")
    cid = (
        await store.record_incoming(kept, kind=MessageKind.OBSERVED, token_count=1)
    ).conversation_id
    for n, (text, kind) in enumerate(
        [("/summarize missed", MessageKind.DIGEST), ("/help", MessageKind.COMMAND)]
    ):
        asked = Incoming(KEY, USER, text, idempotency_key=f"c{n}")
        mid = (
            await store.record_incoming(asked, kind=MessageKind.COMMAND, token_count=1)
        ).message_id
        answer = f"- Ada: the launch code is 1234 ({n})" if kind is MessageKind.DIGEST else "help"
        assert await store.record_reply(cid, [mid], answer, kind=kind, token_count=0)

    assert await store.delete_observed(cid) == 1
    assert [m.content for m in await store.history(cid, 10)] == ["/help", "help"]
