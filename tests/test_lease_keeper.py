"""The turn leases' keeper (bot.storage.lease_keeper): every lease a store holds renewed in one
statement on a connection of its own, so that a lease outlives a burst of turns that takes
every pooled connection, or a take that queued for one; a lease another worker took is
reported lost; the keeper stops. And what a hostile review added: a row lock on one
conversation, a second event loop, one prepared statement for any number of leases, a thousand
leases, a keeper connection cut by the server, the keeper after aclose, a lease taken again by
its own worker, the keeper's log context, the database out of reach."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, suppress
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.errors import StorageError
from bot.logcontext import TurnFieldsFilter, turn_scope
from bot.storage.base import MessageKind, TurnLease
from bot.storage.database import create_engine, create_keeper_engine, create_relaxed_engine
from bot.storage.lease_keeper import Held, LeaseKeeper
from bot.storage.migrate import upgrade
from bot.storage.models import ConversationRow
from bot.storage.runners import pool_size
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User

TTL_S = 0.6  # renewed every 0.2 s
_row = ConversationRow


async def _worker_and_peer(
    url: str, peer_url: str = "", *, keeper_timeout_s: float = 5.0
) -> tuple[SqlStore, SqlStore]:
    """A worker's store as bot.app builds it, and a peer worker's (on `peer_url` if given)."""
    await upgrade(url)
    engine = create_engine(url, pool_size=2)
    worker = SqlStore(
        engine,
        create_relaxed_engine(engine, pool_size=1),
        create_keeper_engine(engine, timeout_s=keeper_timeout_s),
    )
    peer = SqlStore(create_engine(peer_url or url))
    for store in (worker, peer):
        await store.start()
    return worker, peer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/history/parley.db"
    else:
        url = request.getfixturevalue("postgres_url")
    worker, peer = await _worker_and_peer(url)
    yield worker, peer
    for store in (worker, peer):
        await store.aclose()


@pytest.fixture
async def pg_pair(postgres_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    worker, peer = await _worker_and_peer(postgres_url)
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

    async def __call__(self, owner: str, ttl_s: float, held: list[Held]) -> dict[Held, bool]:
        self.calls.append(sorted(held))
        self.called.set()
        if self.fail:
            self.fail -= 1
            raise StorageError("database error: ConnectionRefusedError")
        return {key: True for key in held if key not in self.lost}


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

    async def renew(owner: str, ttl_s: float, held: list[Held]) -> dict[Held, bool]:
        nonlocal calls
        calls += 1
        entered.set()
        with suppress(asyncio.CancelledError):  # swallowed, as the driver's wait_for may do
            await asyncio.sleep(0.05)
        return dict.fromkeys(held, True)

    keeper = LeaseKeeper(renew)
    with keeper.keeping(1, TurnLease(1, "worker-a"), 0.03, since=time.monotonic()):
        await asyncio.wait_for(entered.wait(), timeout=10)
        await asyncio.wait_for(keeper.aclose(), timeout=10)
        seen = calls
        await asyncio.sleep(0.1)
        assert calls == seen


async def _lease_until(store: SqlStore, ids: list[int]) -> dict[int, datetime]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(_row.id, _row.lease_until).where(_row.id.in_(ids)))
        return {int(cid): until for cid, until in rows}


async def _renewed(store: SqlStore, taken: dict[int, datetime], within_s: float = 20) -> None:
    """Wait until every lease of `taken` (its lease_until at the take) was renewed."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        now = await _lease_until(store, list(taken))
        if all(now[cid] > until for cid, until in taken.items()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not every lease was renewed")


# -- A row lock on one conversation holds back the renewal of every other ------------------


@pytest.mark.postgres
async def test_a_row_locked_on_one_conversation_does_not_hold_back_the_other_leases(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    """A transaction holds one conversation's row (its lease is not in question: the row is
    still the worker's). The renewal of the worker's *other* lease must not wait for it (the
    per-lease renewals before c2dd6f7 did not, on a relaxed pool of 2 or more). One UPDATE
    over every lease waits for the locked row: the other lease lapses under its running turn
    and the peer takes it over."""
    worker, peer = pg_pair
    locked, other = await _conversation(worker, "locked"), await _conversation(worker, "other")
    async with (
        worker.turn_lease(locked, "worker-a", ttl_s=TTL_S, wait_s=1) as waited_for,
        worker.turn_lease(other, "worker-a", ttl_s=TTL_S, wait_s=1) as running,
    ):
        async with peer.engine.begin() as conn:  # e.g. a slow transaction, an operator's
            await conn.execute(
                sa.update(_row).where(_row.id == locked).values(summary=_row.summary)
            )
            taken_over = True
            try:
                async with peer.turn_lease(other, "worker-b", ttl_s=TTL_S, wait_s=4 * TTL_S):
                    pass
            except TimeoutError:
                taken_over = False
        assert not taken_over, "a lease lapsed under its running turn"
        await _renewed(worker, await _lease_until(worker, [locked]))  # once the row is free
        assert not running.lost.is_set()
        assert not waited_for.lost.is_set()  # its row was busy, not taken


# -- A keeper used on a second event loop -----------------------------------------------------


def test_a_keeper_used_again_on_a_new_event_loop_still_renews() -> None:
    """A store outlives one `asyncio.run` (a CLI, a test fixture, a restarted loop). The
    per-lease renewers it replaced had no state across loops; the keeper's events are bound
    to the first loop that waited on them, so its task on the second loop dies at once and
    no lease is renewed there (nor reported lost)."""
    renewed: dict[int, asyncio.Event] = {}

    async def renew(owner: str, ttl_s: float, held: list[Held]) -> dict[Held, bool]:
        for cid, _ in held:
            renewed[cid].set()
        return dict.fromkeys(held, True)

    keeper = LeaseKeeper(renew)

    async def hold(cid: int) -> bool:
        renewed[cid] = asyncio.Event()
        try:
            with keeper.keeping(cid, TurnLease(1, "worker-a"), 0.15, since=time.monotonic()):
                await asyncio.wait_for(renewed[cid].wait(), timeout=2)
                return True
        except TimeoutError:
            return False
        finally:
            await keeper.aclose()

    assert asyncio.run(hold(1))
    assert asyncio.run(hold(2)), "the keeper renewed nothing on the second loop"


# -- The statement's text grows with the number of leases -------------------------------------


@pytest.mark.postgres
async def test_the_renewal_is_one_prepared_statement_whatever_the_number_of_leases(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    """An expanding IN list renders one SQL text per number of leases: asyncpg prepares each
    (a Parse round trip more on the renewal, the latency the keeper exists to cut) and the
    keeper's connection keeps up to 100 server-side prepared statements. record_reply's fence
    avoids this on PostgreSQL with `= ANY(array)`; the renewal should too."""
    worker, _ = pg_pair
    ids = [await _conversation(worker, f"c{n}") for n in range(6)]
    async with AsyncExitStack() as held:
        for cid in ids:
            await held.enter_async_context(
                worker.turn_lease(cid, "worker-a", ttl_s=TTL_S, wait_s=1)
            )
            await _renewed(worker, await _lease_until(worker, ids[: ids.index(cid) + 1]))
        async with worker.keeper_engine.connect() as conn:  # the keeper's one connection
            prepared = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_prepared_statements "
                    "WHERE statement LIKE '%SET lease_until%' "
                    "AND statement NOT LIKE '%pg_prepared_statements%'"
                )
            )
    assert prepared == 1, f"{prepared} prepared renewal statements for 1..6 leases"


# -- A thousand leases in one statement ---------------------------------------------------------


async def test_a_thousand_leases_are_renewed_and_none_is_lost(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    worker, peer = stores
    ids = [await _conversation(worker, f"k{n}") for n in range(1000)]
    async with AsyncExitStack() as held:
        leases = [
            await held.enter_async_context(worker.turn_lease(cid, "worker-a", ttl_s=6.0, wait_s=5))
            for cid in ids
        ]
        await _renewed(worker, await _lease_until(worker, ids), within_s=30)
        assert not any(lease.lost.is_set() for lease in leases)
        with pytest.raises(TimeoutError):
            async with peer.turn_lease(ids[-1], "worker-b", ttl_s=6.0, wait_s=0.3):
                pass


# -- The keeper's connection cut by the server --------------------------------------------------


@pytest.mark.postgres
async def test_a_keeper_connection_the_server_closed_is_replaced_and_nothing_is_lost(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    worker, peer = pg_pair
    cid = await _conversation(worker, "cut")
    async with worker.turn_lease(cid, "worker-a", ttl_s=TTL_S, wait_s=1) as lease:
        await _renewed(worker, await _lease_until(worker, [cid]))
        async with peer.engine.connect() as conn:
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await peer.engine.dispose()  # its pooled connections were cut as well
        await _renewed(peer, await _lease_until(peer, [cid]))
        assert not lease.lost.is_set()


# -- The keeper after aclose --------------------------------------------------------------------


async def test_a_store_closed_and_used_again_renews_its_new_leases(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    worker, _ = stores
    first, second = await _conversation(worker, "first"), await _conversation(worker, "second")
    async with worker.turn_lease(first, "worker-a", ttl_s=TTL_S, wait_s=1):
        await _renewed(worker, await _lease_until(worker, [first]))
    await worker.aclose()
    async with worker.turn_lease(second, "worker-a", ttl_s=TTL_S, wait_s=1) as lease:
        await _renewed(worker, await _lease_until(worker, [second]))
        assert not lease.lost.is_set()


# -- The same worker takes a conversation again, with a renewal in flight ----------------------


async def test_a_lease_released_and_taken_again_is_neither_lost_nor_kept_after_release(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    """Turn after turn on one conversation (release, take again under a new epoch) while the
    keeper renews: no lease is reported lost, and the last release leaves the row free."""
    worker, _ = stores
    cid = await _conversation(worker, "again")
    ttl_s = 0.09  # a renewal every 30 ms: many of them in flight across the takes
    deadline = time.monotonic() + 2
    epochs: list[int] = []
    while time.monotonic() < deadline:
        async with worker.turn_lease(cid, "worker-a", ttl_s=ttl_s, wait_s=1) as lease:
            await asyncio.sleep(0.04)  # a turn of about one renewal period
        assert not lease.lost.is_set(), f"epoch {lease.epoch} reported lost"
        epochs.append(lease.epoch)
    async with worker.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(_row.lease_owner, _row.lease_epoch).where(_row.id == cid))
        ).one()
    assert row == (None, epochs[-1])


# -- The keeper's task inherits the context of the turn that first took a lease ----------------


async def test_the_keeper_logs_a_lost_lease_outside_the_turn_that_started_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The keeper's task is created in whichever context first takes a lease, and keeps that
    context for ever: its lines about every other conversation then carry the first turn's
    fields (bot.logcontext), as if that turn, long finished, had logged them."""

    async def renew(owner: str, ttl_s: float, held: list[Held]) -> dict[Held, bool]:
        return {key: True for key in held if key[0] != 2}  # conversation 2 was taken over

    keeper = LeaseKeeper(renew)
    caplog.handler.addFilter(TurnFieldsFilter())
    first, second = TurnLease(1, "worker-a"), TurnLease(1, "worker-a")
    try:
        with (
            turn_scope(ConversationKey("console", "first"), 11),
            keeper.keeping(1, first, TTL_S, since=time.monotonic()),
        ):
            pass  # the turn that starts the keeper ends here
        with (
            caplog.at_level(logging.WARNING, logger="bot.storage.lease_keeper"),
            keeper.keeping(2, second, 0.15, since=time.monotonic()),
        ):
            await asyncio.wait_for(second.lost.wait(), timeout=10)
    finally:
        await keeper.aclose()
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert lost
    assert [getattr(r, "turn", None) for r in lost] == [None]


async def test_a_failed_renewal_marks_the_lease_unreachable_until_one_succeeds() -> None:
    """While the database cannot be reached a turn may not show what it could not note
    (TurnDelivery.may_show confirms first): the keeper says so on the lease, the lease still
    held, and clears it with the next renewal that reaches the database."""
    answers: list[bool] = [False, False, True]  # fail, fail, then renew
    seen: list[bool] = []
    renewed = asyncio.Event()

    async def renew(owner: str, ttl_s: float, held: list[Held]) -> dict[Held, bool]:
        seen.append(lease.unreachable)
        reached = answers.pop(0) if answers else True
        if not reached:
            raise StorageError("database error: ConnectionRefusedError")
        renewed.set()
        return dict.fromkeys(held, True)

    keeper = LeaseKeeper(renew)
    lease = TurnLease(1, "worker-a")
    try:
        with keeper.keeping(1, lease, TTL_S, since=time.monotonic()):
            await asyncio.wait_for(renewed.wait(), timeout=10)
            await asyncio.sleep(0)  # the keeper applies the renewal's answer
            assert not lease.unreachable
    finally:
        await keeper.aclose()
    # Before the first renewal: reachable; after each failure: unreachable, the lease kept.
    assert seen == [False, True, True]
    assert not lease.lost.is_set()


# -- The database out of reach, then back ---------------------------------------------------------


@pytest.mark.postgres
async def test_renewals_resume_after_the_database_was_out_of_reach_and_nothing_is_lost(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection of the worker cut and refused for longer than a renewal period: the
    failed renewals lose nothing, and renewing resumes once the database answers again."""
    from tests.crash_cluster import TcpProxy

    await upgrade(postgres_url)
    target = sa.make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    through = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    worker, peer = await _worker_and_peer(through, postgres_url)
    try:
        cid = await _conversation(peer, "outage")
        ttl_s = 1.5  # a renewal every 0.5 s
        async with worker.turn_lease(cid, "worker-a", ttl_s=ttl_s, wait_s=1) as lease:
            await _renewed(peer, await _lease_until(peer, [cid]))
            with caplog.at_level(logging.WARNING, logger="bot.storage.lease_keeper"):
                proxy.cut(0.7)  # at least one renewal fails
                before = await _lease_until(peer, [cid])
                await _renewed(peer, before)
            assert any("not renewed" in r.getMessage() for r in caplog.records)
            assert not lease.lost.is_set()
    finally:
        for store in (worker, peer):
            await store.aclose()
        await proxy.aclose()


# -- The store closed while a renewal is in flight -------------------------------------------------


@pytest.mark.postgres
async def test_a_store_closes_promptly_while_a_renewal_waits_in_the_database(
    pg_pair: tuple[SqlStore, SqlStore],
) -> None:
    worker, peer = pg_pair
    cid = await _conversation(worker, "closing")
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with (
        worker.turn_lease(cid, "worker-a", ttl_s=TTL_S, wait_s=1),
        peer.engine.begin() as conn,  # the renewal waits for this lock (a migration's)
        peer.engine.connect() as watch,
    ):
        await conn.execute(sa.text("LOCK TABLE conversations IN EXCLUSIVE MODE"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the keeper's statement waits on the lock
            if await watch.scalar(waiting):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("no renewal waited for the lock")
        await asyncio.wait_for(worker.aclose(), timeout=5)


@pytest.mark.postgres
async def test_a_renewal_held_back_by_a_lock_gives_up_after_its_timeout(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The keeper's statement waits for a table lock (a migration's) no longer than its
    timeout: the renewal fails, is logged, and the next one renews once the lock is gone."""
    worker, peer = await _worker_and_peer(postgres_url, keeper_timeout_s=0.3)
    try:
        cid = await _conversation(worker, "locked")
        async with worker.turn_lease(cid, "worker-a", ttl_s=1.5, wait_s=1) as lease:
            with caplog.at_level(logging.WARNING, logger="bot.storage.lease_keeper"):
                async with peer.engine.begin() as conn:
                    await conn.execute(sa.text("LOCK TABLE conversations IN EXCLUSIVE MODE"))
                    deadline = time.monotonic() + 10
                    while not any("not renewed" in r.getMessage() for r in caplog.records):
                        assert time.monotonic() < deadline, "the renewal kept waiting"
                        await asyncio.sleep(0.05)
                await _renewed(peer, await _lease_until(peer, [cid]))
            assert not lease.lost.is_set()
    finally:
        for store in (worker, peer):
            await store.aclose()
