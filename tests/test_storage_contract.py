"""One contract suite for the Store protocol, run over SQLite (a file) and real PostgreSQL.

Each test gets a `store` and a `peer`: a second SqlStore with its own engine and connection
pool on the same database, standing in for another worker process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from bot.errors import StorageError
from bot.handoff.desk import CoreDesk
from bot.handoff.models import HandoffStateRow
from bot.handoff.note import NoteWriter
from bot.handoff.repo import HandoffRepository
from bot.handoff.types import HandoffError, HandoffState, Reason
from bot.storage.base import MessageKind, Recorded, Store
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import DELETED_STUB, SqlStore
from bot.types import ConversationKey, Incoming, Role, User

KEY = ConversationKey("console", "chat-1")
OTHER_KEY = ConversationKey("console", "chat-1", thread_id="t-9")
ALICE = User("console", "u-1", "Alice")
CHAT = MessageKind.CHAT
COMMAND = MessageKind.COMMAND


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/history/parley.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def pair(db_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    await upgrade(db_url)
    stores = SqlStore(create_engine(db_url)), SqlStore(create_engine(db_url))
    for store in stores:
        await store.start()
    yield stores
    for store in stores:
        await store.aclose()


@pytest.fixture
def store(pair: tuple[SqlStore, SqlStore]) -> Store:
    return pair[0]


def incoming(
    ikey: str, text: str = "hello", *, key: ConversationKey = KEY, user: User = ALICE
) -> Incoming:
    return Incoming(key=key, user=user, text=text, idempotency_key=ikey)


async def say(
    store: Store, ikey: str, text: str = "hello", kind: MessageKind = CHAT
) -> tuple[int, int]:
    """Record a user message in KEY's conversation; returns (conversation id, message id)."""
    recorded = await store.record_incoming(incoming(ikey, text), kind=kind, token_count=3)
    return recorded.conversation_id, recorded.message_id


async def turn(store: Store, ikey: str, question: str, answer: str) -> tuple[int, int, int]:
    """A user message and its reply: (conversation id, question id, reply id)."""
    cid, asked = await say(store, ikey, question)
    reply = await store.record_reply(cid, [asked], answer, kind=CHAT, token_count=2)
    assert reply is not None
    return cid, asked, reply.id


# record_incoming


async def test_record_incoming_creates_conversation_and_message(store: Store) -> None:
    sent = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    msg = Incoming(key=KEY, user=ALICE, text="hi", idempotency_key="k1", sent_at=sent)
    recorded = await store.record_incoming(msg, kind=CHAT, token_count=7)
    assert recorded.is_new
    state = await store.state(recorded.conversation_id)
    assert state.key == KEY
    assert (state.summary, state.summary_through_id, state.context_start_id) == ("", 0, 0)
    assert state.last_reply_id == 0
    [stored] = await store.pending(recorded.conversation_id, 10)
    assert (stored.id, stored.role, stored.kind, stored.content) == (
        recorded.message_id, Role.USER, CHAT, "hi",
    )  # fmt: skip
    assert (stored.token_count, stored.answered_by, stored.user_display_name) == (7, None, "Alice")
    assert stored.created_at == sent and stored.created_at.tzinfo is not None


async def test_repeated_key_writes_nothing_and_returns_first_id(store: Store) -> None:
    first = await store.record_incoming(incoming("k1", "one"), kind=CHAT, token_count=1)
    again = await store.record_incoming(incoming("k1", "changed"), kind=CHAT, token_count=1)
    assert again == Recorded(first.message_id, first.conversation_id, is_new=False)
    history = await store.history(first.conversation_id, 10)
    assert [m.content for m in history] == ["one"]


async def test_fifty_concurrent_duplicates_make_one_row(pair: tuple[SqlStore, SqlStore]) -> None:
    store, peer = pair
    msg = incoming("dup", "race")
    results = await asyncio.gather(
        *(s.record_incoming(msg, kind=CHAT, token_count=1) for s in [store, peer] * 25)
    )
    assert sum(r.is_new for r in results) == 1
    assert len({(r.message_id, r.conversation_id) for r in results}) == 1
    assert len(await store.history(results[0].conversation_id, 100)) == 1


async def test_concurrent_first_messages_share_user_and_conversation(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    store, peer = pair
    results = await asyncio.gather(
        *(s.record_incoming(incoming(f"k{i}"), kind=CHAT, token_count=1)
          for i, s in enumerate([store, peer] * 10))
    )  # fmt: skip
    assert all(r.is_new for r in results)
    assert len({r.conversation_id for r in results}) == 1
    history = await store.history(results[0].conversation_id, 100)
    assert len(history) == 20 and {m.user_display_name for m in history} == {"Alice"}


async def test_threads_are_separate_conversations(store: Store) -> None:
    a = await store.record_incoming(incoming("a"), kind=CHAT, token_count=1)
    b = await store.record_incoming(incoming("b", key=OTHER_KEY), kind=CHAT, token_count=1)
    assert a.conversation_id != b.conversation_id
    assert (await store.state(b.conversation_id)).key == OTHER_KEY


# pending and record_reply


async def test_pending_is_oldest_first_and_limited(store: Store) -> None:
    said = [await say(store, f"k{i}", f"m{i}") for i in range(5)]
    cid, ids = said[0][0], [message_id for _, message_id in said]
    assert [m.id for m in await store.pending(cid, 10)] == ids
    assert [m.id for m in await store.pending(cid, 2)] == ids[:2]


async def test_record_reply_answers_and_clears_pending(store: Store) -> None:
    cid, first = await say(store, "k1")
    _, second = await say(store, "k2")
    reply = await store.record_reply(cid, [first, second], "answer", kind=CHAT, token_count=4)
    assert reply is not None
    assert (reply.role, reply.kind, reply.content, reply.token_count) == (
        Role.ASSISTANT, CHAT, "answer", 4,
    )  # fmt: skip
    assert reply.id > second and reply.conversation_id == cid
    assert await store.pending(cid, 10) == []
    assert {m.answered_by for m in (await store.history(cid, 10))[:2]} == {reply.id}
    assert (await store.state(cid)).last_reply_id == reply.id


async def test_second_reply_to_same_messages_is_fenced(pair: tuple[SqlStore, SqlStore]) -> None:
    store, peer = pair
    cid, asked = await say(store, "k1")
    assert await store.record_reply(cid, [asked], "first", kind=CHAT, token_count=1)
    assert await peer.record_reply(cid, [asked], "second", kind=CHAT, token_count=1) is None
    assert [m.content for m in await store.history(cid, 10)] == ["hello", "first"]


async def test_partly_answered_batch_is_fenced_whole(store: Store) -> None:
    cid, a = await say(store, "k1")
    _, b = await say(store, "k2")
    assert await store.record_reply(cid, [a], "for a", kind=CHAT, token_count=1)
    assert await store.record_reply(cid, [a, b], "for both", kind=CHAT, token_count=1) is None
    assert [m.id for m in await store.pending(cid, 10)] == [b]
    assert len(await store.history(cid, 10)) == 3


async def test_racing_replies_write_exactly_one(pair: tuple[SqlStore, SqlStore]) -> None:
    store, peer = pair
    cid, asked = await say(store, "k1")
    replies = await asyncio.gather(
        *(s.record_reply(cid, [asked], f"r{i}", kind=CHAT, token_count=1)
          for i, s in enumerate([store, peer] * 5))
    )  # fmt: skip
    winners = [r for r in replies if r is not None]
    assert len(winners) == 1
    history = await store.history(cid, 20)
    assert [m.content for m in history] == ["hello", winners[0].content]


# context_messages


async def test_context_messages_newest_answered_chat_oldest_first(store: Store) -> None:
    turns = [await turn(store, f"k{i}", f"q{i}", f"a{i}") for i in range(4)]
    cid = turns[0][0]
    await say(store, "cmd", "/help", kind=COMMAND)  # a command: history only
    await say(store, "open", "still pending")  # unanswered: not context yet
    window = await store.context_messages(cid, after_id=0, limit=4)
    assert [m.content for m in window] == ["q2", "a2", "q3", "a3"]
    assert [m.id for m in window] == [*turns[2][1:], *turns[3][1:]]
    everything = await store.context_messages(cid, after_id=0, limit=100)
    assert len(everything) == 8
    after = await store.context_messages(cid, after_id=turns[1][2], limit=100)
    assert [m.content for m in after] == ["q2", "a2", "q3", "a3"]


async def test_command_replies_stay_out_of_context(store: Store) -> None:
    cid, asked = await say(store, "cmd", "/help", kind=COMMAND)
    assert await store.record_reply(cid, [asked], "usage", kind=COMMAND, token_count=1)
    assert await store.context_messages(cid, 0, 10) == []
    assert [m.kind for m in await store.history(cid, 10)] == [COMMAND, COMMAND]
    assert (await store.state(cid)).last_reply_id == 0


# state, summary, reset, history


async def test_fold_summary_is_kept_in_state(store: Store) -> None:
    cid, _, reply_id = await turn(store, "k1", "q", "a")
    assert (await store.state(cid)).summary_tokens == 0
    assert await store.fold_summary(cid, "they greeted", reply_id, 7, 0)
    state = await store.state(cid)
    assert (state.summary, state.summary_through_id) == ("they greeted", reply_id)
    assert state.summary_tokens == 7


async def test_a_summary_folded_before_a_redaction_is_not_written(store: Store) -> None:
    """A fold written over a redaction that landed while the model summarised (or since
    the window was built) would keep the deleted text in every later prompt: the write is
    conditional on the count of redactions the window was built at, in one statement."""
    cid, _, first_reply = await turn(store, "k1", "hello", "a")
    assert await store.fold_summary(cid, "first", first_reply, 5, 0)
    _, _, reply_id = await turn(store, "k2", "my secret", "b")  # after the fold point
    assert await store.redact("k2") == cid
    assert not await store.fold_summary(cid, "they said: my secret", reply_id, 7, 0)
    state = await store.state(cid)
    assert (state.summary, state.summary_tokens, state.redactions) == ("first", 5, 1)
    assert await store.fold_summary(cid, "they said: [deleted]", reply_id, 6, 1)
    assert (await store.state(cid)).summary == "they said: [deleted]"


async def test_a_redaction_of_a_folded_message_drops_the_summary(store: Store) -> None:
    """The running summary was folded from the deleted message and may hold its text: the
    redaction drops it in its transaction, so that the next window is built from the
    messages since the /reset boundary (the stub in place of the text) and folded again.
    A message after the fold point, or before the /reset, is in no summary: kept."""
    cid, _, _ = await turn(store, "k0", "before the reset", "a0")
    _, newest = await say(store, "reset", "/reset", kind=COMMAND)
    await store.reset_context(cid)
    await say(store, "kept", "a group message", kind=MessageKind.OBSERVED)  # never folded
    _, _, first_reply = await turn(store, "k1", "my secret", "a1")
    _, _, second_reply = await turn(store, "k2", "later", "a2")
    assert await store.fold_summary(cid, "they said: my secret", first_reply, 7, 0)
    assert await store.redact("k2") == cid  # after the fold point
    assert await store.redact("k0") == cid  # before the /reset
    assert await store.redact("kept") == cid  # kept for /summarize missed, never in context
    state = await store.state(cid)
    assert (state.summary, state.summary_through_id) == ("they said: my secret", first_reply)
    assert (state.context_start_id, state.redactions) == (newest, 3)
    assert await store.redact("k1") == cid
    state = await store.state(cid)
    assert (state.summary, state.summary_through_id, state.summary_tokens) == ("", 0, 0)
    assert (state.context_start_id, state.redactions) == (newest, 4)  # the /reset holds
    assert state.last_reply_id == second_reply
    rows = await store.context_messages(cid, state.context_start_id, 10)
    assert [m.content for m in rows] == [DELETED_STUB, "a1", DELETED_STUB, "a2"]


async def test_a_fold_covers_no_message_its_answers_leave_unanswered(store: Store) -> None:
    """A message sent while the answer before it streamed is recorded before that answer
    and answered after it: a fold through that answer covers the messages up to the one
    left (the id returned), so that the rows after the boundary still hold it, and its
    answer pairs with it. A fold over answered messages only covers them all."""
    cid, _, greeted = await turn(store, "k0", "hello", "hi")
    assert await store.fold_summary(cid, "they greeted", greeted, 4, 0) == greeted
    _, asked = await say(store, "k1", "the harbour?")
    _, sent_meanwhile = await say(store, "k2", "my cat is Biscuit")
    await say(store, "k3", "and my dog?")  # pending
    first = await store.record_reply(cid, [asked], "a1", kind=CHAT, token_count=2)
    second = await store.record_reply(cid, [sent_meanwhile], "a2", kind=CHAT, token_count=2)
    assert first is not None and second is not None
    assert await store.fold_summary(cid, "the harbour", first.id, 5, 0) == sent_meanwhile - 1
    state = await store.state(cid)
    assert (state.summary, state.summary_through_id) == ("the harbour", sent_meanwhile - 1)
    rows = await store.context_messages(cid, state.summary_through_id, 10)
    assert [(m.content, m.answered_by) for m in rows] == [
        ("my cat is Biscuit", second.id), ("a1", None), ("a2", None),
    ]  # fmt: skip


async def test_reset_context_starts_after_newest_message(store: Store) -> None:
    cid, _, reply_id = await turn(store, "k1", "q", "a")
    assert await store.fold_summary(cid, "old", reply_id, 3, 0)
    _, newest = await say(store, "reset", "/reset", kind=COMMAND)
    await store.reset_context(cid)
    state = await store.state(cid)
    assert (state.context_start_id, state.summary, state.summary_through_id) == (newest, "", 0)
    assert state.summary_tokens == 0
    assert await store.context_messages(cid, state.context_start_id, 10) == []


async def test_state_of_unknown_conversation_raises(store: Store) -> None:
    with pytest.raises(StorageError):
        await store.state(999_999)


async def test_history_is_newest_of_every_kind_oldest_first(store: Store) -> None:
    cid, _, _ = await turn(store, "k1", "q1", "a1")
    await say(store, "cmd", "/help", kind=COMMAND)
    await say(store, "k2", "q2")
    assert [m.content for m in await store.history(cid, 3)] == ["a1", "/help", "q2"]
    assert [m.role for m in await store.history(cid, 2)] == [Role.USER, Role.USER]


async def test_conversations_with_pending(store: Store) -> None:
    assert await store.conversations_with_pending() == []
    done = await store.record_incoming(incoming("a"), kind=CHAT, token_count=1)
    await store.record_reply(done.conversation_id, [done.message_id], "ok", kind=CHAT,
                             token_count=1)  # fmt: skip
    waiting = await store.record_incoming(incoming("b", key=OTHER_KEY), kind=CHAT, token_count=1)
    await store.record_incoming(incoming("c", key=OTHER_KEY), kind=CHAT, token_count=1)
    assert await store.conversations_with_pending() == [(waiting.conversation_id, OTHER_KEY)]


async def test_last_reply_id_is_the_newest_chat_reply_whoever_wrote_it(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    store, peer = pair
    cid, _, first = await turn(store, "k1", "q1", "a1")
    assert (await store.state(cid)).last_reply_id == first
    _, _, second = await turn(peer, "k2", "q2", "a2")  # another worker's reply
    assert (await store.state(cid)).last_reply_id == second
    _, asked = await say(store, "cmd", "/help", kind=COMMAND)
    assert await store.record_reply(cid, [asked], "usage", kind=COMMAND, token_count=1)
    assert (await peer.state(cid)).last_reply_id == second  # command replies do not count
    other = await store.record_incoming(incoming("o", key=OTHER_KEY), kind=CHAT, token_count=1)
    await store.record_reply(other.conversation_id, [other.message_id], "elsewhere", kind=CHAT,
                             token_count=1)  # fmt: skip
    assert (await store.state(cid)).last_reply_id == second  # newer replies elsewhere neither
    assert (await store.state(other.conversation_id)).last_reply_id > second


async def test_remembered_ids_agree_across_stores(pair: tuple[SqlStore, SqlStore]) -> None:
    # Each store remembers user and conversation ids; two stores must still agree on them,
    # whichever created the rows, and a new key is still created once.
    store, peer = pair
    bob = User("console", "u-2", "Bob")
    seen = []
    for i, (s, key, user) in enumerate(
        [(store, KEY, ALICE), (peer, KEY, bob), (peer, OTHER_KEY, ALICE), (store, OTHER_KEY, bob),
         (store, KEY, bob), (peer, KEY, ALICE), (store, OTHER_KEY, ALICE)]
    ):  # fmt: skip
        recorded = await s.record_incoming(
            incoming(f"k{i}", f"m{i}", key=key, user=user), kind=CHAT, token_count=1
        )
        seen.append((key, recorded.conversation_id))
    assert len({cid for _, cid in seen}) == 2
    assert all(cid == dict(seen)[key] for key, cid in seen)
    history = await peer.history(dict(seen)[KEY], 10)
    assert [(m.content, m.user_display_name) for m in history] == [
        ("m0", "Alice"), ("m1", "Bob"), ("m4", "Bob"), ("m5", "Alice"),
    ]  # fmt: skip


async def test_a_senders_platform_language_is_kept_and_follows_changes(
    pair: tuple[SqlStore, SqlStore], db_url: str
) -> None:
    # The first message upserts sender and conversation; the language the platform reports is
    # written when it changes (by any worker), kept when a message has none, and the display
    # name stays the first one's.
    store, peer = pair
    said = [(store, "de", "Alice"), (peer, "", "Renamed"), (store, "fr", "Alice"), (peer, "", "")]
    for i, (s, language, name) in enumerate(said):
        user = User("console", "u-7", name, language=language)
        await s.record_incoming(incoming(f"l{i}", user=user), kind=CHAT, token_count=1)
        if i == 0:
            assert await language_of(store, "u-7") == ("de", "Alice")
    assert await language_of(store, "u-7") == ("fr", "Alice")


async def language_of(store: SqlStore, external_id: str) -> tuple[str | None, str]:
    async with store.engine.connect() as conn:
        row = (
            await conn.exec_driver_sql(
                "SELECT language_code, display_name FROM users WHERE external_id = "
                + ("$1" if store.engine.dialect.name == "postgresql" else "?"),
                (external_id,),
            )
        ).one()
    return row[0], row[1]


async def test_start_opens_the_whole_pool_before_traffic(db_url: str) -> None:
    await upgrade(db_url)
    store = SqlStore(create_engine(db_url, pool_size=4))
    try:
        await store.start()
        pool = store.engine.pool
        assert isinstance(pool, QueuePool)
        assert (pool.checkedin(), pool.checkedout()) == (4, 0)
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_connections_killed_by_the_server_are_replaced(postgres_url: str) -> None:
    # No pre-ping: a pooled connection the server dropped fails its first statement, and the
    # store retries once on a fresh connection.
    await upgrade(postgres_url)
    store, admin = SqlStore(create_engine(postgres_url)), create_engine(postgres_url)
    try:
        cid, _, _ = await turn(store, "k1", "q", "a")
        await asyncio.gather(*(store.history(cid, 10) for _ in range(3)))  # several pooled
        async with admin.connect() as conn:
            await conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert len(await store.history(cid, 10)) == 2
        await turn(store, "k2", "q2", "a2")
        assert len(await store.history(cid, 10)) == 4
    finally:
        await store.aclose()
        await admin.dispose()


# failures


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_unreachable_database_raises_storage_error_without_password() -> None:
    store = SqlStore(create_engine("postgresql+asyncpg://parley:s3cret-pw@127.0.0.1:1/parley"))
    try:
        with pytest.raises(StorageError) as caught:
            await store.ping()
        with pytest.raises(StorageError):
            await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)
    finally:
        await store.aclose()
    message = str(caught.value)
    assert "s3cret-pw" not in message and "127.0.0.1:1/parley" not in message
    assert len(message) < 300


@pytest.mark.postgres
async def test_rejected_login_raises_storage_error(postgres_url: str) -> None:
    # asyncpg raises its own error types while connecting; they must surface as StorageError.
    url = postgres_url.replace("://postgres@", "://no_such_role:s3cret-pw@", 1)
    store = SqlStore(create_engine(url))
    try:
        with pytest.raises(StorageError) as caught:
            await store.ping()
    finally:
        await store.aclose()
    assert "s3cret-pw" not in str(caught.value)


# observed messages (a group's chatter, kept for summaries) and platform fields


async def test_an_observed_message_is_never_pending_nor_in_context_or_history(
    store: Store,
) -> None:
    cid, _, _ = await turn(store, "k-1", "question", "answer")
    kept = await store.record_incoming(
        incoming("k-2", "chatter"), kind=MessageKind.OBSERVED, token_count=1
    )
    assert kept.is_new and kept.conversation_id == cid
    again = await store.record_incoming(
        incoming("k-2", "chatter"), kind=MessageKind.OBSERVED, token_count=1
    )
    assert not again.is_new and again.message_id == kept.message_id
    assert await store.pending(cid, 10) == []
    assert await store.conversations_with_pending() == []
    assert [m.content for m in await store.context_messages(cid, 0, 10)] == ["question", "answer"]
    assert [m.content for m in await store.history(cid, 10)] == ["question", "answer"]


async def test_conversation_id_finds_existing_conversations_only(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    store, peer = pair
    assert await peer.conversation_id(KEY) is None
    cid, _ = await say(store, "k-1")
    assert await peer.conversation_id(KEY) == cid  # written by another worker
    assert await peer.conversation_id(OTHER_KEY) is None


async def test_platform_message_id_is_kept(store: Store) -> None:
    message = Incoming(KEY, ALICE, "hi", idempotency_key="k-1", platform_message_id="4711")
    recorded = await store.record_incoming(message, kind=CHAT, token_count=1)
    (pending,) = await store.pending(recorded.conversation_id, 10)
    assert pending.platform_message_id == "4711"


async def test_failed_attempts_are_counted_on_pending_messages_only(store: Store) -> None:
    cid, first = await say(store, "att-1")
    _, second = await say(store, "att-2")
    assert await store.count_attempt([first]) == 1
    assert await store.count_attempt([first, second]) == 2  # the most any of them has
    await store.record_reply(cid, [first], "answered", kind=CHAT, token_count=1)
    assert await store.count_attempt([first]) == 0  # answered: nothing pending to count
    assert await store.count_attempt([second]) == 2


# --- the one locker: turn leases with a fencing epoch, and deliveries ------------------------


async def test_a_lease_is_held_by_one_worker_and_each_take_is_a_new_epoch(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    store, peer = pair
    cid = (await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)).conversation_id
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1) as first:
        with pytest.raises(TimeoutError):
            async with peer.turn_lease(cid, "worker-b", ttl_s=5, wait_s=0.2):
                pass
    async with peer.turn_lease(cid, "worker-b", ttl_s=5, wait_s=1) as second:
        assert second.epoch == first.epoch + 1


async def test_a_lease_brings_the_first_page_of_pending_messages(store: Store) -> None:
    said = [await say(store, f"k{i}", f"m{i}") for i in range(4)]
    cid, ids = said[0][0], [message_id for _, message_id in said]
    await store.record_reply(cid, [ids[1]], "answered", kind=CHAT, token_count=1)
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1, pending_limit=2) as lease:
        assert lease.pending is not None
        assert [m.id for m in lease.pending] == [ids[0], ids[2]]  # oldest first, limited
        assert list(lease.pending) == list(await store.pending(cid, 2))  # the same rows
        assert lease.state is not None and lease.state.last_reply_id > ids[1]
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1) as plain:
        assert plain.pending is None  # not asked for
    await store.record_reply(cid, [ids[0], ids[2], ids[3]], "all", kind=CHAT, token_count=1)
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1, pending_limit=2) as idle:
        assert idle.pending == []  # nothing pending: an empty page, not a missing one


async def test_a_dead_holders_lease_lapses_and_its_renewal_then_fails(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    store, peer = pair
    cid = (await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)).conversation_id
    taken = await store._take_lease(cid, "dead-worker", ttl_s=0.2)  # a worker that then died
    assert taken is not None
    await asyncio.sleep(0.3)
    async with peer.turn_lease(cid, "worker-b", ttl_s=5, wait_s=1) as lease:
        assert lease.epoch == taken.epoch + 1


async def test_an_answer_is_recorded_only_under_its_own_delivery(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    store, peer = pair
    rec = await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)
    cid, mid = rec.conversation_id, rec.message_id
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1) as lease:
        assert await store.begin_delivery(lease, cid, mid, mid)
        await store.note_delivery(cid, lease.epoch, {0: 4242})
        # A second delivery may not begin while this one is under way.
        assert not await store.begin_delivery(lease, cid, mid, mid)
    state = await peer.delivery(cid)
    assert state is not None
    assert (state.first_id, state.last_id, state.owner, state.shown) == (
        mid,
        mid,
        "worker-a",
        {0: 4242},
    )
    # Another worker takes it over (its worker died): the shown piece is kept for editing.
    async with peer.turn_lease(cid, "worker-b", ttl_s=5, wait_s=1) as other:
        assert other.unfinished == state  # read with the lease, in the same statement
        assert await peer.begin_delivery(other, cid, mid, mid, replacing=state)
        # The first worker's record is refused now: the answer is the taker's to record.
        late = await store.record_reply(
            cid, [mid], "old", kind=CHAT, token_count=1, epoch=lease.epoch
        )
        assert late is None
        taken = await peer.delivery(cid)
        assert taken is not None and taken.shown == {0: 4242} and taken.owner == "worker-b"
        stored = await peer.record_reply(
            cid, [mid], "new", kind=CHAT, token_count=1, epoch=other.epoch
        )
        assert stored is not None
    assert await store.pending(cid, 10) == []
    assert await store.delivery(cid) is None


async def test_a_merged_answer_settles_every_message_it_answered(store: Store) -> None:
    first = await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)
    second = await store.record_incoming(incoming("k2"), kind=CHAT, token_count=1)
    cid = first.conversation_id
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1) as lease:
        assert await store.begin_delivery(lease, cid, first.message_id, second.message_id)
        ids = [first.message_id, second.message_id]
        assert await store.record_reply(
            cid, ids, "both", kind=CHAT, token_count=1, epoch=lease.epoch
        )
    assert await store.pending(cid, 10) == []


async def test_a_delivery_that_showed_nothing_is_cleared_one_that_did_is_abandoned(
    store: Store,
) -> None:
    rec = await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)
    cid, mid = rec.conversation_id, rec.message_id
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1) as lease:
        assert await store.begin_delivery(lease, cid, mid, mid)
        await store.end_delivery(cid, lease.epoch, abandon=False)
        assert await store.delivery(cid) is None
        assert await store.begin_delivery(lease, cid, mid, mid)
        await store.end_delivery(cid, lease.epoch, abandon=True)
    abandoned = await store.delivery(cid)
    assert abandoned is not None and abandoned.owner is None


async def test_the_sweep_finds_old_pending_work_with_no_live_lease(store: Store) -> None:
    rec = await store.record_incoming(incoming("k1"), kind=CHAT, token_count=1)
    cid = rec.conversation_id
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert (
        await store.conversations_with_pending(older_than=datetime.now(UTC) - timedelta(seconds=60))
        == []
    )
    assert await store.conversations_with_pending(older_than=later) == [(cid, KEY)]
    async with store.turn_lease(cid, "worker-a", ttl_s=5, wait_s=1):
        assert await store.conversations_with_pending(older_than=later) == []


# --- the reads and the erasure of the support API, the handoff desk and the metrics -----------


async def test_a_page_is_oldest_first_with_what_each_answer_answers(store: Store) -> None:
    shown = [CHAT, COMMAND]
    cid, first, first_answer = await turn(store, "p-1", "one", "answer one")
    _, second = await say(store, "p-2", "two")
    _, third = await say(store, "p-3", "three")
    reply = await store.record_reply(cid, [second, third], "both", kind=CHAT, token_count=1)
    assert reply is not None
    await say(store, "p-4", "kept", kind=MessageKind.OBSERVED)  # not of the kinds asked for
    page = await store.message_page(KEY, kinds=shown, before=None, limit=10)
    assert [(m.role, m.content) for m in page] == [
        (Role.USER, "one"), (Role.ASSISTANT, "answer one"), (Role.USER, "two"),
        (Role.USER, "three"), (Role.ASSISTANT, "both"),
    ]  # fmt: skip
    assert [m.reply_to for m in page] == [None, first, None, None, third]  # the newest answered
    assert all(m.agent is None and m.created_at.tzinfo is not None for m in page)
    older = await store.message_page(KEY, kinds=shown, before=second, limit=1)
    assert [m.id for m in older] == [first_answer]
    assert await store.message_page(OTHER_KEY, kinds=shown, before=None, limit=10) == []


async def test_messages_are_found_by_platform_id_key_and_id(store: Store) -> None:
    message = Incoming(KEY, ALICE, "hi", idempotency_key="k-1", platform_message_id="4711")
    recorded = await store.record_incoming(message, kind=CHAT, token_count=1)
    mid = recorded.message_id
    assert await store.message_by_platform_id(KEY, "4711") == mid
    assert await store.message_by_platform_id(KEY, "4712") is None
    assert await store.message_text(KEY, mid) == "hi"
    assert await store.message_text(OTHER_KEY, mid) is None  # not that conversation's
    found = await store.message_by_key("k-1")
    assert found is not None and (found.id, found.content, found.user_id) == (mid, "hi", "u-1")
    assert await store.message_by_key("k-2") is None


async def test_pending_stats_count_every_conversations_pending_messages(store: Store) -> None:
    assert await store.pending_stats() == (0, None)
    await say(store, "s-1")
    await store.record_incoming(incoming("s-2", key=OTHER_KEY), kind=CHAT, token_count=1)
    count, oldest = await store.pending_stats()
    assert count == 2 and oldest is not None


async def test_erase_leaves_no_message_and_keeps_the_conversations_id(store: Store) -> None:
    cid, _, _ = await turn(store, "e-1", "secret", "answer")
    await store.record_incoming(incoming("e-2", key=OTHER_KEY), kind=CHAT, token_count=1)
    erased = await store.erase(KEY, ALICE.user_id, [("user", "console:u-1")])
    assert cid in erased and len(erased) == 2  # every thread of the chat
    assert await store.message_page(KEY, kinds=[CHAT], before=None, limit=10) == []
    assert await store.message_by_key("e-1") is None
    assert await store.pending_stats() == (0, None)
    state = await store.state(cid)  # the row stays, renamed and emptied
    assert state.key.chat_id.startswith("erased:") and state.summary == ""
    assert await store.erase(KEY, ALICE.user_id, []) == []  # nothing left to erase


async def test_an_erased_message_id_is_never_given_to_another_message(store: Store) -> None:
    """The newest message of all erased (DELETE /v1/visitor): on SQLite the next message
    would take its id, and a public id or a cached message id of the erased one would point
    at another's message. It stays as a stub out of every page, as forget_user keeps it."""
    _, _, answer = await turn(store, "n-1", "secret", "answer")
    await store.erase(KEY, ALICE.user_id, [])
    bob = User("console", "u-2", "Bob")
    other = await store.record_incoming(
        incoming("n-2", key=ConversationKey("console", "chat-9"), user=bob),
        kind=CHAT, token_count=1,
    )  # fmt: skip
    assert other.message_id > answer
    assert await store.message_page(KEY, kinds=[CHAT], before=None, limit=10) == []
    assert (await store.pending_stats())[0] == 1  # the stub is no question


async def test_a_chat_moved_to_a_new_id_takes_its_conversation_along(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    """A Telegram group that became a supergroup: its history is the new chat's, on every
    worker; a new id that has a conversation already keeps it (nothing is merged)."""
    store, peer = pair
    cid, _ = await say(store, "k1", "the word is banana")
    new_key = ConversationKey("console", "chat-2")
    assert await peer.conversation_id(KEY) == cid  # the peer knows the old id
    assert await store.move_chat("console", "chat-1", "chat-2") == 1
    assert await store.move_chat("console", "chat-1", "chat-2") == 0  # said twice: once
    for worker in (store, peer):
        assert await worker.conversation_id(new_key) == cid
    assert await store.conversation_id(KEY) is None
    assert [m.content for m in await store.history(cid, 10)] == ["the word is banana"]
    other = await store.record_incoming(incoming("k2", key=KEY), kind=CHAT, token_count=1)
    assert await store.move_chat("console", "chat-1", "chat-2") == 0
    assert await store.conversation_id(KEY) == other.conversation_id != cid


async def test_a_merge_into_the_new_ids_conversation_is_fenced_on_the_old_ones_lease(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    """The new id has a conversation: the old one is merged into it only under its current
    turn lease; a lease another worker took since merges nothing. The messages keep their
    order (ids), and a pending one stays pending."""
    store, peer = pair
    old, _, _ = await turn(store, "k1", "the word is banana", "answer")
    new_key = ConversationKey("console", "chat-2")
    came = await store.record_incoming(incoming("k2", key=new_key), kind=CHAT, token_count=1)
    new = came.conversation_id
    left = await store.record_incoming(incoming("k3", "which fruit?"), kind=CHAT, token_count=1)
    async with store.turn_lease(old, "worker-a", ttl_s=5, wait_s=1) as lapsed:
        pass
    async with peer.turn_lease(old, "worker-b", ttl_s=5, wait_s=1):
        assert not await store.merge_chat(lapsed, old, new)  # not its lease any more
    assert [m.content for m in await store.history(new, 10)] == ["hello"]
    async with store.turn_lease(old, "worker-a", ttl_s=5, wait_s=1) as lease:
        assert await store.merge_chat(lease, old, new)
    merged = [m.content for m in await store.history(new, 10)]
    assert merged == ["the word is banana", "answer", "hello", "which fruit?"]
    assert [m.id for m in await store.pending(new, 10)] == [came.message_id, left.message_id]
    assert await store.history(old, 10) == []


async def test_after_an_erase_the_same_visitor_starts_a_conversation_an_erase_finds(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    """DELETE /v1/visitor on one worker: every worker that remembers the conversation's and
    the user's ids (the one that erased and another) records the visitor's next message in a
    new conversation, not the tombstone, so that a later erase finds it; also when another
    user was recorded since (SQLite gives a deleted row's id to the next user)."""
    store, peer = pair
    cid, _ = await say(store, "x-1", "secret")
    assert await peer.conversation_id(KEY) == cid
    await peer.record_incoming(incoming("x-2", "more"), kind=CHAT, token_count=1)
    assert await store.erase(KEY, ALICE.user_id, []) == [cid]
    bob = User("console", "u-2", "Bob")
    await store.record_incoming(
        incoming("x-0", key=ConversationKey("console", "chat-9"), user=bob),
        kind=CHAT, token_count=1,
    )  # fmt: skip
    for worker, ikey in ((store, "x-3"), (peer, "x-4")):
        again = await worker.record_incoming(incoming(ikey, "again"), kind=CHAT, token_count=1)
        assert again.conversation_id != cid
        found = await worker.message_by_key(ikey)
        assert found is not None and found.user_id == ALICE.user_id
    assert await peer.conversation_id(KEY) != cid
    new = await store.conversation_id(KEY)
    assert new is not None and new != cid
    assert await store.erase(KEY, ALICE.user_id, []) == [new]
    assert await store.message_by_key("x-3") is None and await store.message_by_key("x-4") is None


async def test_a_handoff_after_an_erase_on_another_worker_is_found_by_a_later_erase(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    """DELETE /v1/visitor on one worker; the other remembered the conversation's id and its
    desk then hands the visitor's conversation to a person (status/request/take name it by
    key). The handoff lands on the visitor's new conversation, not on the tombstone, where a
    later erase would not find it; with no new conversation there is none to hand off."""
    store, peer = pair
    repo = HandoffRepository(peer.engine, MemoryCache())
    notes = NoteWriter(peer, repo, None, agent_language="en", history_messages=10)
    desk = CoreDesk(peer, repo, notes, lambda c, k: None)
    cid, _ = await say(store, "h-1", "secret")
    assert (await desk.status(KEY)).state is HandoffState.BOT  # the peer remembers the id
    assert await store.erase(KEY, ALICE.user_id, []) == [cid]
    with pytest.raises(HandoffError):
        await desk.request(KEY, Reason.ASKED)
    new, _ = await say(store, "h-2", "again")  # the visitor's next message, on the first
    assert (await desk.request(KEY, Reason.ASKED)).state is HandoffState.WAITING
    assert (await desk.take(KEY, "Dana")).state is HandoffState.HUMAN
    assert (await desk.status(KEY)).state is HandoffState.HUMAN
    assert await store.erase(KEY, ALICE.user_id, []) == [new]
    async with store.engine.connect() as conn:
        left = await conn.scalar(sa.select(sa.func.count()).select_from(HandoffStateRow))
    assert left == 0


async def test_a_withdrawal_after_an_erase_on_another_worker_finds_the_new_conversation(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    """A worker that remembers an erased conversation's id withdraws a message deleted on its
    platform from the visitor's new conversation, not from the tombstone."""
    store, peer = pair
    cid, _ = await say(store, "w-1", "secret")
    assert await peer.conversation_id(KEY) == cid
    assert await store.erase(KEY, ALICE.user_id, []) == [cid]
    again = Incoming(KEY, ALICE, "oops", idempotency_key="w-2", platform_message_id="77")
    await store.record_incoming(again, kind=CHAT, token_count=1)
    assert await peer.withdraw(KEY, "77") is True
    assert await store.pending_stats() == (0, None)


async def test_a_status_after_an_erase_on_another_worker_reads_the_new_conversation(
    pair: tuple[SqlStore, SqlStore],
) -> None:
    """The visitor's new conversation, after DELETE /v1/visitor, was taken by a person on the
    worker that erased; the other worker, which remembered the erased conversation's id, reads
    the handoff state of the new conversation (the agent API's status and its check before a
    take, the Chatwoot bridge's), not the tombstone's: the bot's."""
    store, peer = pair
    desks = []
    for worker in (store, peer):
        repo = HandoffRepository(worker.engine, MemoryCache())
        notes = NoteWriter(worker, repo, None, agent_language="en", history_messages=10)
        desks.append(CoreDesk(worker, repo, notes, lambda c, k: None))
    here, there = desks
    cid, _ = await say(store, "s-1", "secret")
    assert (await there.status(KEY)).state is HandoffState.BOT  # the peer remembers the id
    assert await store.erase(KEY, ALICE.user_id, []) == [cid]
    await say(store, "s-2", "again")  # the visitor's next message, on the first worker
    assert (await here.take(KEY, "Dana")).state is HandoffState.HUMAN
    now = await there.status(KEY)
    assert (now.state, now.agent) == (HandoffState.HUMAN, "Dana")
