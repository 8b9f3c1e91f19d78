"""The turn leases' keeper (bot.storage.lease_keeper): every lease a store holds renewed in one
statement on a connection of its own, so that a lease outlives a burst of turns that takes
every pooled connection; a lease another worker took is reported lost; the keeper stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, suppress
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.errors import StorageError
from bot.storage.base import MessageKind, TurnLease
from bot.storage.database import create_engine, create_keeper_engine, create_relaxed_engine
from bot.storage.lease_keeper import Held, LeaseKeeper
from bot.storage.migrate import upgrade
from bot.storage.models import ConversationRow
from bot.storage.runners import pool_size
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User

TTL_S = 0.6  # renewed every 0.2 s


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """A worker's store as the app builds it (a small pool, the relaxed pool, the keeper's
    connection), and a peer worker's."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/history/parley.db"
    else:
        url = request.getfixturevalue("postgres_url")
    await upgrade(url)
    engine = create_engine(url, pool_size=2)
    worker = SqlStore(
        engine, create_relaxed_engine(engine, pool_size=1), create_keeper_engine(engine)
    )
    peer = SqlStore(create_engine(url))
    for store in (worker, peer):
        await store.start()
    yield worker, peer
    for store in (worker, peer):
        await store.aclose()


async def _conversation(store: SqlStore, chat: str) -> int:
    message = Incoming(ConversationKey("console", chat), User("console", "u-1"), "hello", chat)
    recorded = await store.record_incoming(message, kind=MessageKind.CHAT, token_count=1)
    return recorded.conversation_id


async def test_a_lease_outlives_a_burst_that_takes_every_pooled_connection(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    """Every connection of the worker's pools is busy for five lease periods (a burst of
    turns on a loaded host); its lease is still renewed, so the peer cannot take it."""
    worker, peer = stores
    cid = await _conversation(worker, "busy")
    async with worker.turn_lease(cid, "worker-a", ttl_s=TTL_S, wait_s=1) as lease:
        async with AsyncExitStack() as busy:
            for engine in {worker.engine, worker.relaxed_engine}:
                for _ in range(pool_size(engine)):
                    await busy.enter_async_context(engine.connect())
            with pytest.raises(TimeoutError):
                async with peer.turn_lease(cid, "worker-b", ttl_s=TTL_S, wait_s=5 * TTL_S):
                    pass
        assert not lease.lost.is_set()
    async with peer.turn_lease(cid, "worker-b", ttl_s=TTL_S, wait_s=1) as taken:
        assert taken.epoch == lease.epoch + 1  # released at the block's end


async def test_a_lease_runs_from_its_take_not_from_when_the_take_got_a_connection(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    """The take queues for a pooled connection for most of the lease's time: its first
    renewal is due a third of the lease after the take was sent, so it is renewed at once
    rather than lapsing before its first renewal."""
    worker, peer = stores
    cid = await _conversation(worker, "queued")
    ttl_s = 2.0
    held, done = asyncio.Event(), asyncio.Event()

    async def hold() -> TurnLease:
        async with worker.turn_lease(cid, "worker-a", ttl_s=ttl_s, wait_s=10) as lease:
            held.set()
            await done.wait()
        return lease

    async with AsyncExitStack() as busy:
        for _ in range(pool_size(worker.engine)):
            await busy.enter_async_context(worker.engine.connect())
        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.75 * ttl_s)  # the take waits for a connection meanwhile
    await asyncio.wait_for(held.wait(), timeout=10)
    with pytest.raises(TimeoutError):
        async with peer.turn_lease(cid, "worker-b", ttl_s=ttl_s, wait_s=1.5 * ttl_s):
            pass
    done.set()
    assert not (await holder).lost.is_set()


async def test_a_lease_another_worker_took_is_reported_lost(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    worker, peer = stores
    kept, taken = await _conversation(worker, "kept"), await _conversation(worker, "taken")
    async with (
        worker.turn_lease(kept, "worker-a", ttl_s=TTL_S, wait_s=1) as stays,
        worker.turn_lease(taken, "worker-a", ttl_s=TTL_S, wait_s=1) as goes,
    ):
        # What a peer's take does once the lease lapsed (its worker was cut off meanwhile).
        row = ConversationRow
        async with peer.engine.begin() as conn:
            await conn.execute(
                sa.update(row)
                .where(row.id == taken)
                .values(lease_owner="worker-b", lease_epoch=row.lease_epoch + 1)
            )
        await asyncio.wait_for(goes.lost.wait(), timeout=10)
        await asyncio.sleep(2 * TTL_S)  # the other lease goes on being renewed
        assert not stays.lost.is_set()
    async with peer.turn_lease(kept, "worker-b", ttl_s=TTL_S, wait_s=1) as next_lease:
        assert next_lease.epoch == stays.epoch + 1


class _Renewals:
    """The keeper's seam: records each call; says which leases were still held."""

    def __init__(self, *, lost: frozenset[Held] = frozenset(), fail: int = 0) -> None:
        self.calls: list[list[Held]] = []
        self.lost = lost
        self.fail = fail
        self.called = asyncio.Event()

    async def __call__(self, owner: str, ttl_s: float, held: list[Held]) -> list[Held]:
        self.calls.append(sorted(held))
        self.called.set()
        if self.fail:
            self.fail -= 1
            raise StorageError("database error: ConnectionRefusedError")
        return [key for key in held if key not in self.lost]


async def test_the_leases_held_are_renewed_together_in_one_call() -> None:
    renewals = _Renewals(lost=frozenset({(3, 1)}))
    keeper = LeaseKeeper(renewals)
    leases = [TurnLease(1, "worker-a") for _ in range(10)]
    try:
        with ExitStack() as stack:
            for cid, lease in enumerate(leases):
                stack.enter_context(keeper.keeping(cid, lease, 0.3, since=time.monotonic()))
            await asyncio.wait_for(renewals.called.wait(), timeout=10)
            assert renewals.calls[0] == [(cid, 1) for cid in range(10)]
            await asyncio.wait_for(leases[3].lost.wait(), timeout=10)
            assert [lease.lost.is_set() for lease in leases].count(True) == 1
    finally:
        await keeper.aclose()


async def test_a_lease_due_sooner_than_the_keeper_sleeps_wakes_it() -> None:
    """The keeper sleeps until the next renewal due; a lease taken meanwhile with a shorter
    period is renewed on its own time, not at the end of that sleep."""
    renewals = _Renewals()
    keeper = LeaseKeeper(renewals)
    try:
        with keeper.keeping(1, TurnLease(1, "worker-a"), 60, since=time.monotonic()):
            await asyncio.sleep(0.05)  # the keeper now sleeps for 20 s
            with keeper.keeping(2, TurnLease(1, "worker-a"), 0.3, since=time.monotonic()):
                await asyncio.wait_for(renewals.called.wait(), timeout=10)
        assert renewals.calls[0] == [(2, 1)]
    finally:
        await keeper.aclose()


async def test_a_failed_renewal_is_tried_again_and_loses_nothing() -> None:
    renewals = _Renewals(fail=2)
    keeper = LeaseKeeper(renewals)
    lease = TurnLease(1, "worker-a")
    try:
        with keeper.keeping(7, lease, 0.15, since=time.monotonic()):
            while len(renewals.calls) < 4:
                await asyncio.wait_for(renewals.called.wait(), timeout=10)
                renewals.called.clear()
            assert not lease.lost.is_set()  # a database error is not a lease taken
    finally:
        await keeper.aclose()


async def test_the_keeper_stops_even_when_a_renewal_swallows_the_cancellation() -> None:
    """On Python 3.11 a cancellation arriving as a driver's wait_for finishes can be lost
    (CPython gh-86296); the keeper is told to stop by an event too, and renews nothing more."""
    calls = 0
    entered = asyncio.Event()

    async def renew(owner: str, ttl_s: float, held: list[Held]) -> list[Held]:
        nonlocal calls
        calls += 1
        entered.set()
        with suppress(asyncio.CancelledError):  # swallowed, as the driver's wait_for may do
            await asyncio.sleep(0.05)
        return held

    keeper = LeaseKeeper(renew)
    with keeper.keeping(1, TurnLease(1, "worker-a"), 0.03, since=time.monotonic()):
        await asyncio.wait_for(entered.wait(), timeout=10)
        await asyncio.wait_for(keeper.aclose(), timeout=10)
        seen = calls
        await asyncio.sleep(0.1)
        assert calls == seen
