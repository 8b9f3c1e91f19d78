"""A worker paused past its lease (SIGSTOP, a frozen VM, a long stall) must not show more of
an answer that another worker took over meanwhile: before each change the chat sees, the
turn's delivery says whether the answer is still this worker's (`TurnDelivery.may_show`).

The pause is real: the worker's event loop is blocked (nothing of it runs, its lease keeper
included) while a peer worker, in a thread of its own with its own loop and store, takes the
lapsed lease and the delivery over, as `ConversationManager` does. tests/test_crash_suite.py
does the same to real `parley run` workers with SIGSTOP and SIGCONT."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.conversation.delivery import Superseded, TurnDelivery, holder_alive
from bot.storage.base import MessageKind, TurnLease
from bot.storage.database import create_engine, create_keeper_engine, create_relaxed_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User

TTL_S = 0.6  # renewed every 0.2 s


class Statements:
    """The statements an engine runs, counted through SQLAlchemy's public event hook."""

    def __init__(self, engine: sa.ext.asyncio.AsyncEngine) -> None:
        self.count = 0
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: object) -> None:
        self.count += 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        found = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    else:
        found = request.getfixturevalue("postgres_url")
    await upgrade(found)
    yield found


async def _worker(url: str) -> tuple[SqlStore, Statements]:
    """A worker's store as bot.app builds it, and the statements of its relaxed engine (where
    a delivery's heartbeat and confirmation go)."""
    engine = create_engine(url, pool_size=2)
    relaxed = create_relaxed_engine(engine, pool_size=1)
    store = SqlStore(engine, relaxed, create_keeper_engine(engine, timeout_s=5))
    await store.start()
    return store, Statements(relaxed)


async def _take_over(url: str, conversation_id: int) -> int:
    """A peer worker's takeover, as its manager does it once the worker's lease lapsed and
    the worker is not alive: take the lease, find the unfinished delivery, begin its own in
    its place. The new delivery's epoch."""
    peer = SqlStore(create_engine(url))
    await peer.start()
    try:
        async with peer.turn_lease(conversation_id, "worker-b", ttl_s=60, wait_s=10) as lease:
            old = lease.unfinished
            assert old is not None and old.owner == "worker-a"
            assert await peer.begin_delivery(
                lease, conversation_id, old.first_id, old.last_id, replacing=old
            )
            return lease.epoch
    finally:
        await peer.aclose()


def _paused(seconds: float, meanwhile: threading.Thread | None = None) -> None:
    """Block this event loop (the worker is paused) for `seconds`, or while `meanwhile`
    runs: none of its tasks, the lease keeper included, runs until it returns."""
    if meanwhile is None:
        time.sleep(seconds)
        return
    meanwhile.start()
    meanwhile.join(timeout=30)
    assert not meanwhile.is_alive()


async def _conversation(store: SqlStore) -> int:
    message = Incoming(ConversationKey("console", "c1"), User("console", "u1"), "hello", "m1")
    recorded = await store.record_incoming(message, kind=MessageKind.CHAT, token_count=1)
    return recorded.conversation_id


@dataclass
class Shown:
    worker: SqlStore
    statements: Statements
    cid: int
    lease: TurnLease
    turn: TurnDelivery


@asynccontextmanager
async def _answer_shown(url: str) -> AsyncIterator[Shown]:
    """worker-a holds the conversation's lease and shows an answer: its delivery begun, its
    first piece on the platform."""
    worker, statements = await _worker(url)
    try:
        cid = await _conversation(worker)
        async with worker.turn_lease(cid, "worker-a", ttl_s=TTL_S, wait_s=1) as lease:
            batch = list(await worker.pending(cid, 10))
            turn = TurnDelivery(worker, lease, cid, batch, retry_s=5)
            await turn.begin()
            await turn.showed(0, 101)
            yield Shown(worker, statements, cid, lease, turn)
    finally:
        await worker.aclose()


async def test_a_worker_paused_past_its_lease_shows_nothing_more_once_its_answer_was_taken_over(
    url: str,
) -> None:
    async with _answer_shown(url) as shown:
        statements, cid, lease, turn = shown.statements, shown.cid, shown.lease, shown.turn
        before = statements.count
        await turn.may_show()  # the lease is valid: nothing to ask
        assert statements.count == before

        taken: list[int] = []
        peer = threading.Thread(target=lambda: taken.append(asyncio.run(_take_over(url, cid))))
        _paused(0, meanwhile=peer)  # the peer takes it over while this worker is stopped

        with pytest.raises(Superseded):
            await turn.may_show()
        assert taken and taken[0] > lease.epoch
        # And what it would still record is refused (the delivery's fence, as before).
        assert await turn.record("late", kind=MessageKind.CHAT, token_count=1, retry_s=1) is None


async def test_a_worker_paused_past_its_lease_that_nobody_took_over_goes_on_showing(
    url: str,
) -> None:
    async with _answer_shown(url) as shown:
        worker, statements, cid, turn = shown.worker, shown.statements, shown.cid, shown.turn
        seen_before = (await worker.delivery(cid)).seen  # type: ignore[union-attr]
        _paused(2 * TTL_S)  # longer than the lease: a peer could have taken it

        before = statements.count
        await turn.may_show()  # confirmed in SQL: still this worker's
        assert statements.count == before + 1
        await turn.may_show()  # and no second round trip right after the confirmation
        assert statements.count == before + 1
        delivery = await worker.delivery(cid)
        assert delivery is not None and delivery.owner == "worker-a"
        assert seen_before is not None and delivery.seen is not None
        assert delivery.seen > seen_before  # the confirmation is a heartbeat too
        stored = await turn.record("answer", kind=MessageKind.CHAT, token_count=1, retry_s=1)
        assert stored is not None


class _NoLivenessKeys:
    """A shared cache that answers and holds no liveness key (the paused worker's lapsed)."""

    async def ping(self) -> None:
        return None

    async def get(self, key: str) -> None:
        return None


async def test_a_takeover_decided_before_the_paused_worker_confirmed_fails(url: str) -> None:
    """A peer judges the paused worker dead (no liveness key, heartbeat over 3 s old), then
    prepares its turn; meanwhile the worker runs again and confirms its answer in SQL. The
    peer's takeover went through anyway, and the worker, trusting its confirmation for 3 s,
    went on editing what the peer now showed (a helper's review). The takeover is fenced on
    the heartbeat the peer judged: it fails, and the worker's answer stands."""
    async with _answer_shown(url) as shown:
        cid, turn = shown.cid, shown.turn
        _paused(3.3)  # the lease lapsed, the heartbeat is over 3 s old
        decided, go = threading.Event(), threading.Event()
        seen: list[object] = []

        async def peer_turn() -> None:
            peer = SqlStore(create_engine(url))
            await peer.start()
            try:
                async with peer.turn_lease(cid, "worker-b", ttl_s=60, wait_s=10) as taken:
                    old = taken.unfinished
                    assert old is not None
                    liveness = _NoLivenessKeys()
                    seen.append(await holder_alive(liveness, old, grace_s=15))  # type: ignore[arg-type]
                    decided.set()
                    await asyncio.to_thread(go.wait, 20)  # context, budget, model...
                    seen.append(
                        await peer.begin_delivery(
                            taken, cid, old.first_id, old.last_id, replacing=old
                        )
                    )
            finally:
                await peer.aclose()

        peer = threading.Thread(target=lambda: asyncio.run(peer_turn()))
        peer.start()
        assert decided.wait(20)  # judged dead while still paused
        assert seen == [False]
        await turn.may_show()  # running again: confirmed, the heartbeat refreshed
        go.set()
        await asyncio.to_thread(peer.join, 20)
        assert seen == [False, False]  # the takeover met the newer heartbeat
        await turn.may_show()
        assert await turn.record("mine", kind=MessageKind.CHAT, token_count=1, retry_s=1)
