"""SqlStore: the `Store` protocol over SQLAlchemy Core, one implementation for SQLite and
PostgreSQL.

Concurrency comes from the database, not from locks in this process: inserts that may race
are upserts (user and conversation: INSERT ... ON CONFLICT DO UPDATE ... RETURNING id) or
INSERT ... ON CONFLICT DO NOTHING followed by a SELECT (a message by its idempotency key),
and `record_reply` fences a second answer with a conditional UPDATE in the same
transaction as the answer itself. Every database failure surfaces as `StorageError`.

Statements are built once, at import, with bound parameters; SQLAlchemy caches their compiled
form. User and conversation ids never change once written, so each store remembers them and a
known sender's message is one INSERT; a new one is one upsert of user and conversation first.

Each call's work is one synchronous function over `Queries`, run whole on one connection by
`Runner` (runners.py: SQLAlchemy's AsyncEngine, the same path on SQLite and PostgreSQL). Rows
are read by position.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from bot.errors import StorageError
from bot.handoff.models import HandoffEventRow, HandoffStateRow, MessageSignalRow
from bot.lru import Lru
from bot.storage.base import (
    ANSWER_DELETED_STUB,
    ChatFacts,
    ContextRow,
    ConversationState,
    DeliveryState,
    Forgotten,
    LoggedMessage,
    MessageKind,
    PageMessage,
    Pruned,
    PruneInterrupted,
    Recorded,
    RecordedReply,
    StoredMessage,
    TurnLease,
    TurnPrefs,
)
from bot.storage.conflicts import insert_on_conflict
from bot.storage.database import (
    database_error,
    database_errors,
    lock_sqlite_file,
    retry_dead_connection,
)
from bot.storage.lease_keeper import Held, LeaseKeeper
from bot.storage.models import ConversationRow, MessageRow, TokenUsageRow, UserRow
from bot.storage.prefs_models import ChatPrefsRow, MessageReplyRow, UserPrefsRow
from bot.storage.runners import Queries, Runner, pool_size
from bot.text.storable import storable
from bot.types import ConversationKey, Incoming, Role, as_utc, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")

# Ids remembered per store; far more than the conversations active at once.
ID_CACHE_SIZE = 10_000
# How often a worker asks again for a conversation's lease that another one holds.
LEASE_POLL_S = 0.05
_USER, _ASSISTANT = Role.USER.value, Role.ASSISTANT.value


class _AlreadyAnswered(Exception):
    """Rolls back a reply whose messages another worker answered first."""


class SqlStore:
    """The history store. It owns `engine`: `aclose()` disposes of it."""

    def __init__(
        self,
        engine: AsyncEngine,
        relaxed: AsyncEngine | None = None,
        keeper: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        # Writes that need not wait for the disk (database.create_relaxed_engine): the lease's
        # release and the delivery's progress notes.
        self._relaxed = relaxed if relaxed is not None else engine
        # The lease keeper's own connection (database.create_keeper_engine): renewals never
        # queue behind the turns' statements.
        self._keeper_engine = keeper if keeper is not None else self._relaxed
        self._keeper = LeaseKeeper(self._renew_leases)
        # Each engine once (SQLite and tests share them), with its runner: warmed at start,
        # disposed of at close, reported by name (Metrics.watch_store).
        named = (("main", engine), ("relaxed", self._relaxed), ("keeper", self._keeper_engine))
        by_engine: dict[int, Runner] = {}
        self.pools: dict[str, AsyncEngine] = {}
        self._runners: dict[str, Runner] = {}
        for name, each in named:
            if id(each) not in by_engine:
                by_engine[id(each)] = self._runners[name] = Runner(each)
                self.pools[name] = each
        self._runner = by_engine[id(engine)]
        self._relaxed_runner = by_engine[id(self._relaxed)]
        self._keeper_runner = by_engine[id(self._keeper_engine)]
        self._errors = database_errors(engine.url)
        # On PostgreSQL, work that is one statement (every read, and a write that is atomic
        # by itself) runs in autocommit mode: no BEGIN and COMMIT/ROLLBACK round trips around
        # it. On SQLite a read never opens a transaction, but a write must be committed.
        postgresql = engine.dialect.name == "postgresql"
        self._autocommit = postgresql
        self._reads = _READS[postgresql]
        self._user_ids: Lru[int] = Lru(ID_CACHE_SIZE)
        self._conversation_ids: Lru[int] = Lru(ID_CACHE_SIZE)
        self._user_languages: Lru[str] = Lru(ID_CACHE_SIZE)
        # Group conversations whose row this process marked shared: an id found otherwise
        # (conversation_id) may be of a row recorded before the mark (migration 0019).
        self._marked_shared: Lru[bool] = Lru(ID_CACHE_SIZE)
        self._file_lock: int | None = None  # SQLite: see lock_sqlite_file

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def keeper_engine(self) -> AsyncEngine:
        """The lease keeper's engine (`relaxed_engine` where it has none of its own)."""
        return self._keeper_engine

    @property
    def relaxed_engine(self) -> AsyncEngine:
        """The engine for advisory writes (`engine` itself where there is no other)."""
        return self._relaxed

    async def start(self) -> None:
        await self.ping()  # a wrong URL or a stopped server fails start-up, not the first turn
        try:  # the whole pool opened before traffic: no turn waits for a connection to open
            for name, each in self.pools.items():
                await self._runners[name].warm(pool_size(each))
        except self._errors as exc:
            raise database_error(exc, self._engine.url) from exc
        if self._file_lock is None:  # SQLite: `parley data forget` refuses while it is held
            url = self._engine.url
            self._file_lock = await asyncio.to_thread(lock_sqlite_file, url, exclusive=False)

    async def aclose(self) -> None:
        await self._keeper.aclose()
        for each in self.pools.values():
            await each.dispose()
        if self._file_lock is not None:
            os.close(self._file_lock)
            self._file_lock = None

    async def ping(self) -> None:
        """Does the database answer? Asked on the lease keeper's own connection: a main pool
        that every turn holds is a busy worker, not a database that is down (the outage
        check; /readyz asks `schema_revision`, which answers this too)."""
        await self._run(lambda q: q.rows(_PING), on=self._keeper_runner)

    async def schema_revision(self) -> str | None:
        """The database's schema revision, read on the lease keeper's connection as `ping`
        asks (it answers that question too)."""
        rows = await self._run(lambda q: q.rows(_SCHEMA_REVISION), on=self._keeper_runner)
        return str(rows[0][0]) if rows else None

    async def record_incoming(
        self, incoming: Incoming, *, kind: MessageKind, token_count: int
    ) -> Recorded:
        user_key = (incoming.user.platform, incoming.user.user_id)
        created: dict[str, int] = {}  # ids looked up or inserted in this transaction
        # The platform's language for the user, written when it differs from the last one
        # this process wrote (once per user per process, and when the user changes it).
        language = incoming.user.language or None
        language_changed = language is not None and self._user_languages.get(user_key) != language
        unmarked = incoming.group and incoming.key not in self._marked_shared

        def run(q: Queries) -> Recorded:
            created.clear()
            user_id = self._user_ids.get(user_key)
            conversation_id = self._conversation_ids.get(incoming.key)
            if user_id is None or conversation_id is None or language_changed or unmarked:
                # One upsert (two statements on SQLite, which has no DML in WITH): each row
                # inserted or found, the user's language updated when the platform gave one.
                key = incoming.key
                user_id, conversation_id = self._upsert(q, {
                    "platform": incoming.user.platform,
                    "external_id": incoming.user.user_id,
                    "display_name": storable(incoming.user.display_name),  # the first only
                    "language_code": language,
                    "c_platform": key.platform, "chat_id": key.chat_id,
                    "thread_id": key.thread_id, "shared": incoming.group,
                })  # fmt: skip
                created["user"], created["conversation"] = user_id, conversation_id
            values = {
                "conversation_id": conversation_id,
                "user_id": user_id,
                "role": _USER,
                "kind": kind.value,
                # NUL or a lone surrogate would fail this insert at every re-delivery.
                "content": storable(incoming.text),
                "token_count": token_count,
                # The platform's time, never later than now: a platform's clock ahead of
                # this worker's would date a question after its answer, and retention
                # (prune), which keeps a turn whole by its answer's time, split it.
                "created_at": min(as_utc(incoming.sent_at), utcnow()),
                "idempotency_key": incoming.idempotency_key,
                "platform_message_id": incoming.platform_message_id or None,
                # An observed message needs no answer: never pending (see models.MessageRow).
                "answered_by": 0 if kind is MessageKind.OBSERVED else None,
            }
            new_id = _scalar(q.rows(_INSERT_MESSAGE, values))
            if new_id is not None:
                return Recorded(new_id, conversation_id, is_new=True)
            params = {"idempotency_key": incoming.idempotency_key}
            first_id, first_conversation_id = _one(q.rows(_SELECT_BY_IDEMPOTENCY_KEY, params))
            return Recorded(first_id, first_conversation_id, is_new=False)

        # Both ids known (nearly always): one INSERT. Either way each statement is atomic by
        # itself, and none needs another's: a user and conversation upserted by a call whose
        # message insert then failed are harmless, and found by the next.
        known = (
            user_key in self._user_ids
            and incoming.key in self._conversation_ids
            and not language_changed
            and not unmarked
        )
        try:
            recorded = await self._run(run, write=True, one_statement=True)
        except StorageError as exc:
            if not known or not isinstance(exc.__cause__, sa_exc.IntegrityError):
                raise
            # A remembered id whose row is gone (a foreign key failed): forget, look up again.
            self._user_ids.discard(user_key)
            self._conversation_ids.discard(incoming.key)
            recorded = await self._run(run, write=True, one_statement=True)
        # Remembered only once committed: a rolled-back insert leaves no id behind.
        if "user" in created:
            self._user_ids.put(user_key, created["user"])
        if language_changed and language is not None:
            self._user_languages.put(user_key, language)
        if "conversation" in created:
            self._conversation_ids.put(incoming.key, created["conversation"])
            if incoming.group:
                self._marked_shared.put(incoming.key, True)
        return recorded

    async def conversation_id(self, key: ConversationKey, *, fresh: bool = False) -> int | None:
        found = None if fresh else self._conversation_ids.get(key)
        if found is not None:
            return found

        def run(q: Queries) -> int | None:
            params = {"platform": key.platform, "chat_id": key.chat_id, "thread_id": key.thread_id}
            found: int | None = _scalar(q.rows(_SELECT_CONVERSATION_ID, params))
            return found

        found = await self._run(run)
        if found is not None:
            self._conversation_ids.put(key, found)
        else:  # erased on another worker since: nothing of it is remembered here either
            self._conversation_ids.discard(key)
        return found

    async def pending(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        return await self._messages(_PENDING, {"conversation_id": conversation_id, "limit": limit})

    async def move_chat(self, platform: str, old_chat_id: str, new_chat_id: str) -> int:
        params = {"on_platform": platform, "old": old_chat_id, "new": new_chat_id}
        moved = await self._run(lambda q: q.rowcount(_MOVE_CHAT, params), write=True)
        if moved:
            # This worker's ids of the old chat's conversations: a late message of the old
            # chat starts a conversation of its own, as on every other worker.
            self._conversation_ids.discard(ConversationKey(platform, old_chat_id))
        return moved

    async def merge_chat(self, lease: TurnLease, old_id: int, new_id: int) -> bool:
        params = {"old": old_id, "new": new_id, "who": lease.owner, "epoch": lease.epoch}

        def run(q: Queries) -> bool:
            # Locked in this order (the old, then the new) by the one statement that merges:
            # a turn of the new conversation writes its row after this commits.
            old = q.rows(_MERGE_FROM, params)  # fenced: still this lease's
            new = q.rows(_MERGE_INTO, params)
            if not old or not new:
                return False
            (summary, through, tokens, start, shared), into = old[0], new[0]
            for statement in _MERGE_MOVES:
                q.rowcount(statement, params)
            merged = {"summary": into[0], "through": into[1], "tokens": into[2],
                      "start": max(int(start), int(into[3])),
                      "shared": bool(shared) or bool(into[4])}  # fmt: skip
            if summary:  # the old summary first: it tells what came before
                parts = [p for p in (summary, into[0]) if p]
                merged |= {
                    "summary": "\n\n".join(parts),
                    "through": max(int(through), int(into[1])),
                    "tokens": 0 if into[0] else int(tokens),
                }  # 0: counted again
            q.rowcount(_MERGED_INTO, params | merged)
            q.rowcount(_MERGED_FROM, params)
            return True

        return await self._run(run, write=True)

    async def record_reply(
        self,
        conversation_id: int,
        answers: Sequence[int],
        text: str,
        *,
        kind: MessageKind,
        token_count: int,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> RecordedReply | None:
        created_at = utcnow()
        # A reply the database refused would stay pending and be answered again at each start.
        text = storable(text)
        values = {
            "conversation_id": conversation_id,
            "role": _ASSISTANT,
            "kind": kind.value,
            "content": text,
            "token_count": token_count,
            "created_at": created_at,
            "idempotency_key": idempotency_key,
        }
        fenced = set(answers)
        if epoch is not None and self._reads.fenced_reply is not None:
            # PostgreSQL: fence, reply and marks in one statement (data-modifying CTEs), in
            # autocommit: one round trip instead of five (BEGIN, three statements, COMMIT).
            params = {f"new_{k}": v for k, v in values.items()}
            params |= {"cid": conversation_id, "epoch": epoch, "ids": list(fenced)}
            stmt = self._reads.fenced_reply
            rows = await self._run(lambda q: q.rows(stmt, params), write=True, one_statement=True)
            reply_id: int | None = rows[0][0] if rows else None
            if reply_id is None:  # the delivery is not this turn's any more
                return None
            return RecordedReply(reply_id, conversation_id, Role.ASSISTANT, kind, text,
                                 token_count, created_at, marked=int(rows[0][1]))  # fmt: skip

        def run(q: Queries) -> tuple[int, int]:
            if epoch is not None:  # the fence: this turn's delivery, ended by this answer
                ends = {"cid": conversation_id, "epoch": epoch}
                if q.rowcount(_END_DELIVERY, ends) != 1:
                    raise _AlreadyAnswered
            reply_id: int = _one(q.rows(_INSERT_REPLY, values))[0]
            marked = 0
            if fenced:
                marks = {"reply_id": reply_id, "ids": list(fenced), "cid": conversation_id}
                marked = q.rowcount(self._reads.mark_answered, marks)
                # Without a delivery, every one of `answers` must still be pending.
                if epoch is None and marked != len(fenced):
                    raise _AlreadyAnswered
            return reply_id, marked

        try:
            new_id, marked = await self._run(run, write=True)
        except _AlreadyAnswered:
            return None
        return RecordedReply(new_id, conversation_id, Role.ASSISTANT, kind, text, token_count,
                             created_at, marked=marked)  # fmt: skip

    async def count_attempt(self, message_ids: Sequence[int]) -> int:
        def run(q: Queries) -> int:
            counts = [row[0] for mid in message_ids for row in q.rows(_COUNT_ATTEMPT, {"mid": mid})]
            return max(counts, default=0)

        return await self._run(run, write=True)

    async def state(self, conversation_id: int) -> ConversationState:
        rows = await self._rows(self._reads.state, {"conversation_id": conversation_id})
        if not rows:
            raise StorageError(f"conversation {conversation_id} does not exist")
        return _state(_one(rows))

    async def context_messages(
        self, conversation_id: int, after_id: int, limit: int, *, authors: bool = False
    ) -> Sequence[ContextRow]:
        params = {"conversation_id": conversation_id, "after_id": after_id, "limit": limit}
        roles = _ROLES
        if authors:
            rows = await self._rows(self._reads.context_named, params)
            return [ContextRow(id_, roles[role], content, tokens, answered, author or "")
                    for id_, role, content, tokens, answered, author in reversed(rows)]  # fmt: skip
        rows = await self._rows(self._reads.context, params)
        return [ContextRow(id_, roles[role], content, tokens, answered_by)
                for id_, role, content, tokens, answered_by in reversed(rows)]  # fmt: skip

    async def fold_summary(
        self, conversation_id: int, summary: str, through_id: int, tokens: int, redactions: int
    ) -> int | None:
        params = {"conversation_id": conversation_id, "new_summary": storable(summary),
                  "through_id": through_id, "tokens": tokens,
                  "expected_redactions": redactions}  # fmt: skip
        stmt = self._reads.fold_summary
        rows = await self._run(lambda q: q.rows(stmt, params), write=True, one_statement=True)
        return int(rows[0][0]) if rows else None

    async def reset_context(self, conversation_id: int) -> None:
        await self._write(self._reads.reset_context, {"conversation_id": conversation_id})

    async def history(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        params = {"conversation_id": conversation_id, "limit": limit}
        return list(reversed(await self._messages(self._reads.history, params)))

    @asynccontextmanager
    async def turn_lease(
        self,
        conversation_id: int,
        owner: str,
        *,
        ttl_s: float,
        wait_s: float,
        pending_limit: int = 0,
    ) -> AsyncIterator[TurnLease]:
        deadline = time.monotonic() + wait_s
        while True:
            # The lease runs from the moment its take was sent (the take may have queued for
            # a connection): its first renewal is due ttl_s / 3 after that, not after the take.
            asked = time.monotonic()
            lease = await self._take_lease(conversation_id, owner, ttl_s, pending_limit)
            if lease is not None:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"conversation {conversation_id}: lease not taken in {wait_s:g}s"
                )
            await asyncio.sleep(LEASE_POLL_S)
        epoch = lease.epoch
        try:
            with self._keeper.keeping(conversation_id, lease, ttl_s, since=asked):
                yield lease
        finally:
            with suppress(StorageError):  # not released: it lapses after ttl_s
                params = {"cid": conversation_id, "who": owner, "epoch": epoch}
                await self._write(_LEASE_RELEASE, params, relaxed=True)

    async def _renew_leases(self, owner: str, ttl_s: float, held: list[Held]) -> dict[Held, bool]:
        """The lease keeper's one statement: renew `owner`'s leases `held` (and the heartbeat
        of the deliveries it shows under them) for `ttl_s`; the ones it still held, each with
        whether it was renewed (PostgreSQL skips a row another transaction has locked)."""
        now = utcnow()
        params: dict[str, Any] = {"who": owner, "now_": now,
                                  "until_": now + timedelta(seconds=ttl_s)}  # fmt: skip
        if self._autocommit:  # PostgreSQL: arrays, one statement text for any number
            params |= {"ids": [cid for cid, _ in held], "epochs": [e for _, e in held]}
            statement: sa.Executable = _LEASES_RENEW_PG
        else:
            params["held"] = held
            statement = _LEASES_RENEW
        work: Callable[[Queries], Sequence[Sequence[Any]]] = lambda q: q.rows(  # noqa: E731
            statement, params
        )
        # Urgent where the keeper has no connection of its own (it shares the store's line):
        # a renewal keeps answers going, and waits behind no burst of new turns.
        rows = await self._run(
            work, write=True, one_statement=True, on=self._keeper_runner, urgent=True
        )
        if self._autocommit:
            return {(int(cid), int(epoch)): bool(renewed) for cid, epoch, renewed in rows}
        return {(int(cid), int(epoch)): True for cid, epoch in rows}

    async def _take_lease(
        self, conversation_id: int, owner: str, ttl_s: float, pending_limit: int = 0
    ) -> TurnLease | None:
        """The lease with its new epoch, the unfinished delivery, the conversation's state
        and (`pending_limit`) the first page of pending messages, or None while another
        worker holds it. One statement on PostgreSQL; on SQLite the page is a second one, in
        the same transaction."""
        now = utcnow()
        params = {"cid": conversation_id, "conversation_id": conversation_id, "who": owner,
                  "now_": now, "until_": now + timedelta(seconds=ttl_s),
                  "limit": pending_limit}  # fmt: skip
        reads = self._reads
        with_page = reads.lease_with_page if pending_limit > 0 else None

        def run(q: Queries) -> tuple[Sequence[Sequence[Any]], list[StoredMessage] | None]:
            if with_page is not None:
                # Each row: the lease's columns, then one pending message's (or NULLs).
                rows = q.rows(with_page, params)
                page = [_to_message(r[_LEASE_COLUMNS:]) for r in rows if r[_LEASE_COLUMNS]]
                return rows, page
            rows = q.rows(reads.lease_take, params)
            if not rows or pending_limit <= 0:
                return rows, None
            return rows, [_to_message(r) for r in q.rows(_PENDING, params)]

        # One statement (autocommit on PostgreSQL) unless SQLite reads the page after it.
        one_statement = with_page is not None or pending_limit <= 0
        rows, page = await self._run(run, write=True, one_statement=one_statement)
        if not rows:
            return None
        row = rows[0]
        return TurnLease(
            int(row[0]), owner, unfinished=_delivery(row[1:7]),
            state=_state(row[7:_LEASE_COLUMNS]), pending=page,
        )  # fmt: skip

    async def begin_delivery(
        self, lease: TurnLease, conversation_id: int, first_id: int, last_id: int,
        *, replacing: DeliveryState | None = None,
    ) -> bool:  # fmt: skip
        params = {"cid": conversation_id, "who": lease.owner, "epoch": lease.epoch,
                  "first": first_id, "last": last_id, "now_": utcnow()}  # fmt: skip
        # Urgent: the answer's first piece waits on it, its model's first token maybe already
        # in, while other turns' messages are still being recorded.
        if replacing is None:
            return await self._write(_BEGIN_DELIVERY, params, urgent=True) == 1
        if replacing.seen is None:  # its own (TurnDelivery.again): no heartbeat judged
            statement, seen = _TAKE_OVER_OWN_DELIVERY, {}
        else:
            statement, seen = _TAKE_OVER_DELIVERY, {"seen": replacing.seen}
        taking_over = params | {"old": replacing.epoch} | seen
        return await self._write(statement, taking_over, urgent=True) == 1

    async def note_delivery(
        self, conversation_id: int, epoch: int, shown: dict[int, str | int]
    ) -> None:
        params = {"cid": conversation_id, "epoch": epoch, "now_": utcnow(),
                  "shown": json.dumps({str(k): v for k, v in shown.items()})}  # fmt: skip
        await self._write(_NOTE_DELIVERY, params, relaxed=True)

    async def hold_delivery(self, conversation_id: int, epoch: int, owner: str) -> bool:
        params = {"cid": conversation_id, "epoch": epoch, "who": owner, "now_": utcnow()}
        return await self._write(_HOLD_DELIVERY, params, relaxed=True, urgent=True) == 1

    async def end_delivery(self, conversation_id: int, epoch: int, *, abandon: bool) -> None:
        statement = _ABANDON_DELIVERY if abandon else _END_DELIVERY
        await self._write(statement, {"cid": conversation_id, "epoch": epoch}, relaxed=True)

    async def delivery(self, conversation_id: int) -> DeliveryState | None:
        rows = await self._rows(_SELECT_DELIVERY, {"cid": conversation_id})
        return _delivery(rows[0]) if rows else None

    async def conversations_with_pending(
        self, older_than: datetime | None = None
    ) -> Sequence[tuple[int, ConversationKey]]:
        if older_than is None:
            rows = await self._rows(self._reads.with_pending)
        else:
            params = {"before": older_than, "now_": utcnow()}
            rows = await self._rows(self._reads.orphaned, params)
        return [(id_, ConversationKey(p, chat, thread)) for id_, p, chat, thread in rows]

    async def _run(
        self,
        work: Callable[[Queries], T],
        *,
        write: bool = False,
        one_statement: bool = False,
        on: Runner | None = None,
        urgent: bool = False,
    ) -> T:
        """`work` on a connection: in a transaction committed on success when `write`, else
        a read (no transaction where the driver allows); `one_statement` says that the write
        is atomic without one. A pooled connection found dead (the server restarted; there is
        no pre-ping) is dropped and `work` runs once more on a new one. The runner runs `work`
        whole in one `run_sync`, not one greenlet switch per statement. `urgent`: an answer
        waits on it to show its next piece (`runners.Admission` lets it in first).
        """
        transaction = write and not (one_statement and self._autocommit)
        runner = on or self._runner
        return await retry_dead_connection(
            lambda: runner.run(work, transaction=transaction, write=write, urgent=urgent),
            self._engine.url,
        )

    async def _rows(
        self, stmt: sa.Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        """The rows of one read."""
        return await self._run(lambda q: q.rows(stmt, params))

    async def _messages(
        self, stmt: sa.Select[Any], params: Mapping[str, Any]
    ) -> list[StoredMessage]:
        return [_to_message(row) for row in await self._rows(stmt, params)]

    async def _write(
        self,
        stmt: sa.Executable,
        params: Mapping[str, Any],
        *,
        relaxed: bool = False,
        urgent: bool = False,
    ) -> int:
        """One statement that is atomic by itself; the number of rows it changed. `relaxed`:
        committed without waiting for the disk (see `relaxed_engine`). `urgent`: see _run."""
        work: Callable[[Queries], int] = lambda q: q.rowcount(stmt, params)  # noqa: E731
        on = self._relaxed_runner if relaxed else None
        return await self._run(work, write=True, one_statement=True, on=on, urgent=urgent)

    def _upsert(self, q: Queries, values: Mapping[str, Any]) -> tuple[int, int]:
        """The ids of the sender and the conversation, each inserted or found. Once per sender
        and conversation per process (the ids are remembered), so the row version and the
        sequence value an upsert of an existing row costs on PostgreSQL are rare."""
        if self._autocommit:  # PostgreSQL: one statement
            user_id, conversation_id = _one(q.rows(_UPSERT_BOTH, values))
            return int(user_id), int(conversation_id)
        user_id = _one(q.rows(_UPSERT_USER, values))[0]
        return int(user_id), int(_one(q.rows(_UPSERT_CONVERSATION, values))[0])

    # Backfill and withdrawal by the platform's message id (issue 14, the Discord adapter).

    async def last_platform_message_ids(
        self, platform: str, since: datetime
    ) -> dict[ConversationKey, str]:
        params = {"platform": platform, "since": as_utc(since)}
        rows = await self._rows(_LAST_PLATFORM_IDS, params)
        return {ConversationKey(p, chat, thread): mid for p, chat, thread, mid in rows}

    async def recorded(self, idempotency_keys: Sequence[str]) -> frozenset[str]:
        if not idempotency_keys:
            return frozenset()
        rows = await self._rows(self._reads.recorded, {"keys": list(idempotency_keys)})
        return frozenset(key for (key,) in rows)

    async def withdraw(self, key: ConversationKey, platform_message_id: str) -> bool:
        conversation_id = await self.conversation_id(key)
        if conversation_id is None:
            return False
        params = {"cid": conversation_id, "pmid": platform_message_id}
        if await self._write(_WITHDRAW, params) > 0:
            return True
        # None found: the id may be one this worker remembers of a conversation another one
        # erased since (a tombstone); looked up again only then, off the path of a message.
        again = await self.conversation_id(key, fresh=True)
        if again is None or again == conversation_id:
            return False
        return await self._write(_WITHDRAW, {**params, "cid": again}) > 0

    async def redact(self, idempotency_key: str) -> int | None:
        return await self._replace_text(_REDACT, {"key": idempotency_key})

    async def edit(
        self, idempotency_key: str, text: str, token_count: int, edited_at: datetime | None = None
    ) -> int | None:
        at = as_utc(edited_at) if edited_at is not None else None
        params = {"key": idempotency_key, "text": text, "tokens": token_count, "at": at}
        # An edit to the text the message holds changes nothing but its time: an edit older
        # than it, handled after, must not replace that text either.
        unchanged = _EDIT_TIME if at is not None else None
        return await self._replace_text(_EDIT, params, unchanged=unchanged)

    async def _replace_text(
        self, statement: Any, params: dict[str, Any], *, unchanged: Any = None
    ) -> int | None:
        """A recorded message's text replaced (`statement`, which returns its conversation,
        id and kind): the count of redactions raised, and a summary it was folded into
        dropped, in the same transaction. `unchanged`: run, with the same parameters, where
        `statement` replaced nothing."""

        def run(q: Queries) -> int | None:
            rows = q.rows(statement, params)
            if not rows:
                if unchanged is not None:
                    q.rowcount(unchanged, params)
                return None
            conversation_id, message_id, kind = int(rows[0][0]), int(rows[0][1]), rows[0][2]
            # In the same transaction as the text: a window whose count is SQL's was read
            # after every redaction so far (see ContextLoader).
            q.rowcount(_COUNT_REDACTION, {"cid": conversation_id})
            if kind == MessageKind.CHAT.value:  # only chat messages are ever folded
                q.rowcount(_DROP_FOLDED_SUMMARY, {"cid": conversation_id, "mid": message_id})
            return conversation_id

        return await self._run(run, write=True)

    # The skills' reads of messages (bot.storage.prefs hands them on).

    async def turn_prefs(self, message_id: int) -> TurnPrefs:
        rows = await self._rows(_TURN_PREFS, {"mid": message_id})
        if not rows:
            return TurnPrefs(None, None, None, False, None)
        user_ref, language, target, keep, reply_to, platform_language = rows[0]
        return TurnPrefs(user_ref, language, target, bool(keep), reply_to, platform_language)

    async def delete_observed(self, conversation_id: int) -> int:
        """In batches, each a statement of its own: a channel kept for months holds more
        than one statement may take within database.timeout_s (and one huge DELETE would
        hold its locks all along). What a failure leaves is deleted by the next try."""
        params = {"cid": conversation_id, "limit": DELETE_BATCH}
        deleted = 0
        while True:
            rows = await self._run(lambda q: q.rows(_DELETE_OBSERVED, params), write=True,
                                   one_statement=True)  # fmt: skip
            deleted += sum(1 for (kind,) in rows if kind == MessageKind.OBSERVED.value)
            if len(rows) < DELETE_BATCH:
                return deleted

    async def prune(self, before: datetime, *, dry_run: bool = False) -> Pruned:
        """In batches of PRUNE_BATCH, oldest first, each a transaction of its own (as
        `delete_observed`: one huge DELETE could outlast database.timeout_s and would hold
        its locks all along; what a failure leaves is deleted by the next run). Each batch
        drops, in its own transaction, the summaries that quote what it deleted and raises
        the count of redactions of each conversation it touched: a window cached before, or
        written back by a turn in flight, is stale (ContextLoader), and a roll-over in flight
        folds again from SQL (Store.fold_summary). On PostgreSQL a batch skips the rows
        another prune has locked, so workers that prune at once share the work and never
        wait for each other's batches."""
        params = {"cutoff": as_utc(before), "limit": PRUNE_BATCH}
        postgresql = self._autocommit

        def no_jit(q: Queries) -> None:
            # The planner costs the scan by every message before the cutoff, and compiled
            # each batch (about 0.5 s; the batch itself takes a few ms) with its JIT.
            if postgresql:
                q.rowcount(_JIT_OFF)

        def counted(q: Queries) -> int:
            no_jit(q)
            return int(_scalar(q.rows(_PRUNE_COUNT, params)) or 0)

        if dry_run:  # a transaction, for SET LOCAL; it writes nothing
            return Pruned(await self._run(counted, write=True))

        def batch(q: Queries) -> tuple[list[tuple[int, int]], bool]:
            no_jit(q)
            pruned = [(int(i), int(c)) for i, c in q.rows(_PRUNE_BATCH_DELETE, params)]
            full = len(pruned) == PRUNE_BATCH
            if not full:
                # The newest message of all is kept, as a stub: on SQLite a new message takes
                # the largest id plus one, and ids that went back would fall behind the
                # boundaries (the summary's, /reset's) that conversations hold.
                for mid, cid in q.rows(_PRUNE_NEWEST, params):
                    q.rowcount(_FORGET_REPLY_TO, {"mid": mid})
                    pruned.append((int(mid), int(cid)))
            spans: dict[int, tuple[int, int]] = {}
            for mid, cid in pruned:
                first, last = spans.get(cid, (mid, mid))
                spans[cid] = (min(first, mid), max(last, mid))
            if spans:  # in id order: two prunes lock the same conversations in one order
                q.many(_PRUNED_FROM, [{"cid": cid, "first_pruned": first, "last_pruned": last}
                                      for cid, (first, last) in sorted(spans.items())])  # fmt: skip
            return pruned, full

        count = 0
        touched: set[int] = set()
        while True:
            try:
                pruned, full = await self._run(batch, write=True)
            except StorageError as exc:
                if not count:
                    raise
                # The batches before this one are committed: say what they removed.
                raise PruneInterrupted(str(exc), Pruned(count, frozenset(touched))) from exc
            count += len(pruned)
            touched.update(cid for _, cid in pruned)
            if not full:
                return Pruned(count, frozenset(touched))

    async def last_seen_id(self, conversation_id: int, user_ref: int, before_id: int) -> int:
        params = {"cid": conversation_id, "uid": user_ref, "before": before_id}
        return int(_scalar(await self._rows(_LAST_SEEN, params)) or 0)

    async def messages_between(
        self,
        conversation_id: int,
        *,
        after_id: int = 0,
        before_id: int,
        since: datetime | None = None,
        limit: int,
    ) -> list[LoggedMessage]:
        where = [_m.conversation_id == conversation_id, _m.id > after_id, _m.id < before_id]
        if since is not None:
            where.append(_m.created_at > since)
        rows = await self._rows(_BETWEEN.where(*where).limit(limit))
        return [
            LoggedMessage(
                id_,
                author or "someone",
                role == _ASSISTANT,
                content,
                as_utc(at),
                kept=kind == MessageKind.OBSERVED.value,
            )
            for id_, author, role, content, at, kind in reversed(rows)
        ]

    # The support API's, the handoff desk's and the metrics' reads, and erasure.

    async def message_page(
        self,
        key: ConversationKey,
        *,
        kinds: Sequence[MessageKind],
        before: int | None,
        limit: int,
    ) -> list[PageMessage]:
        cid = _chat_conversation(key)
        stmt = (
            sa.select(_m.id, _m.role, _m.content, _m.created_at)
            .where(_m.conversation_id == cid, _m.kind.in_([k.value for k in kinds]),
                   _m.role.in_([_USER, _ASSISTANT]), _m.content != "")
            .order_by(_m.id.desc())
            .limit(limit)
        )  # fmt: skip
        if before is not None:
            stmt = stmt.where(_m.id < before)

        def run(q: Queries) -> list[PageMessage]:
            rows = q.rows(stmt)
            answer_ids = [int(r[0]) for r in rows if r[1] == _ASSISTANT]
            agents: dict[int, tuple[str, str]] = {}
            replies_to: dict[int, int] = {}
            if answer_ids:
                agent_rows = q.rows(_agent_replies(cid, answer_ids))
                agents = {int(a): (str(name or ext or ""), text)
                          for a, text, name, ext in agent_rows}  # fmt: skip
                replies_to = {int(a): int(n) for a, n in q.rows(_replies_to(cid, answer_ids))}
            return [
                PageMessage(int(id_), _ROLES[role], content, as_utc(at), replies_to.get(id_),
                            *agents.get(id_, (None, "")))
                for id_, role, content, at in reversed(rows)
            ]  # fmt: skip

        return await self._run(run)

    async def message_by_platform_id(
        self, key: ConversationKey, platform_message_id: str
    ) -> int | None:
        params = {**_key_params(key), "pmid": platform_message_id}
        found = _scalar(await self._rows(_BY_PLATFORM_ID, params))
        return int(found) if found is not None else None

    async def message_text(self, key: ConversationKey, message_id: int) -> str | None:
        found = _scalar(await self._rows(_MESSAGE_TEXT, {**_key_params(key), "id": message_id}))
        return str(found) if found is not None else None

    async def message_by_key(self, idempotency_key: str) -> StoredMessage | None:
        rows = await self._rows(_BY_KEY, {"key": idempotency_key})
        return _to_message(rows[0]) if rows else None

    async def unanswered_questions(self, conversation_id: int, limit: int) -> list[str]:
        rows = await self._rows(_UNANSWERED, {"cid": conversation_id, "limit": limit})
        return [content for (content,) in reversed(rows)]

    async def pending_stats(self) -> tuple[int, datetime | None]:
        count, oldest = _one(await self._rows(_PENDING_STATS))
        return int(count), oldest

    async def erase(
        self, key: ConversationKey, user_id: str, usage: Sequence[tuple[str, str]]
    ) -> list[int]:
        threads: list[str] = []

        def run(q: Queries) -> list[int]:
            rows = q.rows(sa.select(_c.id, _c.thread_id).where(
                _c.platform == key.platform, _c.chat_id == key.chat_id))  # fmt: skip
            ids = [int(i) for i, _ in rows]
            threads[:] = [str(t or "") for _, t in rows]
            newest = _keep_newest(q, lambda _, cid: cid in ids)
            _close_conversations(q, ids, keep=newest)
            uid = _scalar(q.rows(_USER_ID, {"platform": key.platform, "external_id": user_id}))
            if uid is not None:
                _delete_user(q, int(uid), sqlite=not self._autocommit)
            _delete_usage(q, usage)
            return ids

        erased = await self._run(run, write=True)
        # This worker's ids of them: the visitor's next message starts a new conversation (a
        # worker that remembers them finds the user's row gone, and looks both up again).
        for thread in threads:
            self._conversation_ids.discard(ConversationKey(key.platform, key.chat_id, thread))
        self._user_ids.discard((key.platform, user_id))
        self._user_languages.discard((key.platform, user_id))
        return erased

    async def forget_user(
        self, platform: str, user_id: str, usage: Sequence[tuple[str, str]], *, apply: bool
    ) -> Forgotten:
        """An operator's request, rare: all of it or none of it, in one transaction."""
        sqlite = not self._autocommit

        def run(q: Queries) -> Forgotten:
            uid = _scalar(q.rows(_USER_ID, {"platform": platform, "external_id": user_id}))
            if uid is None:
                return Forgotten()
            mine = {"uid": uid, "platform": platform, "external_id": user_id}
            own = [int(c) for (c,) in q.rows(_OWN_CHATS, mine)]
            chats = [int(c) for (c,) in q.rows(_THEIR_CHATS, {"uid": uid, "own": own})]
            which = {"uid": uid, "own": own, "chats": chats}
            doomed = q.rows(_FORGOTTEN_ROWS, which)
            quoting = _scalar(q.rows(_COUNT_QUOTING_ANSWERS, which)) if chats else 0
            found = Forgotten(
                messages=len(doomed),
                emptied=int(quoting or 0),
                conversations=tuple(sorted({*own, *chats})),
                closed=tuple(own),
                message_keys=tuple(str(k) for _, k in doomed if k is not None),
                users=1,
            )
            if not apply:
                return found
            gone = {int(i) for i, _ in doomed}
            newest = _keep_newest(q, lambda mid, _: mid in gone)
            if chats:  # before their messages go: found by their first message
                # The bot's answers there since their first message saw it in their context
                # (or in the summary) and may quote it.
                q.rowcount(_EMPTY_QUOTING_ANSWERS, which)
            q.rowcount(_DELETE_FORGOTTEN, {**which, "keep": newest or 0})
            if chats:
                # A quoted reply may quote them; a handoff's note, their words: emptied, the
                # handoff itself (a person may be answering the group now) and its audit kept.
                q.rowcount(_FORGET_QUOTED_REPLIES, {"chats": chats})
                for table in (HandoffStateRow, HandoffEventRow):
                    q.rowcount(sa.update(table).where(table.conversation_id.in_(chats))
                               .values(detail=""))  # fmt: skip
                q.rowcount(_FORGET_SUMMARIES, {"chats": chats})
            _close_conversations(q, own, keep=newest)
            q.rowcount(sa.delete(UserPrefsRow).where(UserPrefsRow.user_id == uid))
            if sqlite:  # the row stays, renamed: its id is never given to another user
                q.rowcount(sa.update(UserRow).where(UserRow.id == uid).values(
                    external_id="forgotten:" + secrets.token_hex(12), display_name="",
                    language_code=None,
                ))  # fmt: skip
            else:  # a worker that remembers its id finds it gone, and looks the user up again
                q.rowcount(sa.delete(UserRow).where(UserRow.id == uid))
            _delete_usage(q, usage)
            return found

        return await self._run(run, write=apply)


# --- statements, built once ------------------------------------------------------------------

_m = MessageRow
_c = ConversationRow
# An answer's columns (record_reply): its idempotency key is where a platform that tells
# deletions has one (the key its deletion is redacted by), else NULL.
_REPLY_COLUMNS = ("conversation_id", "role", "kind", "content", "token_count", "created_at",
                  "idempotency_key")  # fmt: skip


def _fact(column: Any) -> sa.ScalarSelect[Any]:
    """One column of a row keyed by the conversation, beside its state (NULL: no row)."""
    return sa.select(column).where(column.table.c.conversation_id == _c.id).scalar_subquery()


# ChatFacts: the handoff row (as bot.handoff.repo reads it) and the chat's preferences.
_h, _p = HandoffStateRow.__table__.c, ChatPrefsRow.__table__.c
_FACT_COLUMNS = tuple(
    _fact(column).label(f"fact_{i}")
    for i, column in enumerate((_h.state, _h.reason, _h.detail, _h.since, _h.agent, _h.language,
                                _p.auto_translate, _p.keep_messages))
)  # fmt: skip
_PING = sa.text("SELECT 1")
# Alembic's table of the revision the schema is at (one row; none after a downgrade to base).
_SCHEMA_REVISION = sa.text("SELECT version_num FROM alembic_version")


def _param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def _literal(value: str) -> sa.ColumnElement[Any]:
    # Literals, not bound parameters: only then can the planners prove that a query's predicate
    # implies a partial index's (models.PENDING_PREDICATE), and estimate it in generic plans.
    return sa.literal_column(f"'{value}'")


def _in_conversation(
    postgresql: bool, after_id: sa.BindParameter[Any] | None = None
) -> sa.ColumnElement[bool]:
    """The rows of one conversation (after `after_id`), for ORDER BY conversation_id DESC,
    id DESC: a backward scan of the (conversation_id, id) index that reads only the rows it
    returns, up to LIMIT or down to `after_id`, whatever the statistics say.

    On PostgreSQL `conversation_id = :id` would make conversation_id a constant, so that a
    backward scan of the primary key could serve `ORDER BY id DESC` too, filtering out every
    newer message of other conversations; the planner picks it from statistics (16-49 ms on a
    large database). `= ANY(ARRAY[:id])` is the same test but no constant: only the composite
    index yields the order, and the btree still ends the scan at `id > :after_id`. SQLite
    always plans `=` on the composite index.
    """
    cid = _param("conversation_id", sa.BigInteger())
    test = _m.conversation_id == (sa.any_(pg.array([cid])) if postgresql else cid)
    return test if after_id is None else sa.and_(test, _m.id > after_id)


_NEWEST_FIRST = (_m.conversation_id.desc(), _m.id.desc())
_LIMIT = _param("limit", sa.Integer())
_PENDING_WHERE = sa.and_(_m.role == _literal(Role.USER.value), _m.answered_by.is_(None))

_SELECT_MESSAGES = sa.select(
    _m.id, _m.conversation_id, _m.role, _m.kind, _m.content, _m.token_count, _m.created_at,
    _m.answered_by, UserRow.display_name, _m.platform_message_id, UserRow.external_id,
).outerjoin(UserRow, UserRow.id == _m.user_id)  # fmt: skip

_PENDING = (
    _SELECT_MESSAGES.where(_m.conversation_id == _param("conversation_id"), _PENDING_WHERE)
    .order_by(_m.id)
    .limit(_LIMIT)
)


_TS = sa.DateTime(timezone=True)
_LAPSED = sa.or_(_c.lease_until.is_(None), _c.lease_until < _param("now_", _TS))


@dataclasses.dataclass(frozen=True)
class _ConversationReads:
    """The statements that differ by dialect: those that read a conversation newest first,
    and the fence."""

    context: sa.Select[Any]
    # The same with each sender's display name (a shared conversation's labelled window).
    context_named: sa.Select[Any]
    history: sa.Select[Any]
    state: sa.Select[Any]
    reset_context: sa.Update
    fold_summary: sa.Update
    mark_answered: sa.Update
    lease_take: sa.Update
    # The take and the first page of pending messages in one statement (PostgreSQL; None on
    # SQLite, which runs the two in one transaction).
    lease_with_page: sa.Select[Any] | None
    # record_reply under a delivery in one statement (PostgreSQL; None on SQLite).
    fenced_reply: sa.Select[Any] | None
    # Which of a list of idempotency keys are recorded (a list parameter, as in the fence).
    recorded: sa.Select[Any]
    # The conversations with a message pending (recovery at start), and the sweep's: those
    # with one pending since before :before and no live lease, every sweep_interval_s on
    # every worker.
    with_pending: sa.Select[Any]
    orphaned: sa.Select[Any]

    @classmethod
    def build(cls, postgresql: bool) -> _ConversationReads:
        def newest(stmt: sa.Select[Any], after_id: sa.BindParameter[Any] | None = None) -> Any:
            return stmt.where(_in_conversation(postgresql, after_id)).order_by(*_NEWEST_FIRST)

        # Only what a window is built from: no time, and no join but a shared conversation's,
        # for the senders' names (see ContextRow).
        def context_of(columns: sa.Select[Any]) -> sa.Select[Any]:
            stmt: sa.Select[Any] = (
                newest(columns, _param("after_id", sa.BigInteger()))
                .where(_m.kind == _literal(MessageKind.CHAT.value))
                .where(
                    sa.or_(_m.role == _literal(Role.ASSISTANT.value), _m.answered_by.is_not(None))
                )
                .limit(_LIMIT)
            )
            return stmt

        context_columns = (_m.id, _m.role, _m.content, _m.token_count, _m.answered_by)
        context = context_of(sa.select(*context_columns))
        named = sa.select(*context_columns, UserRow.display_name)
        context_named = context_of(named.outerjoin(UserRow, UserRow.id == _m.user_id))
        last_reply_id = (
            newest(sa.select(_m.id))
            .where(
                _m.role == _literal(Role.ASSISTANT.value),
                _m.kind == _literal(MessageKind.CHAT.value),
            )
            .limit(1)
            .scalar_subquery()
        )
        state_columns = (
            _c.id, _c.platform, _c.chat_id, _c.thread_id, _c.summary, _c.summary_through_id,
            _c.summary_tokens, _c.context_start_id, last_reply_id.label("last_reply_id"),
            _c.redactions, *_FACT_COLUMNS, _c.shared,
        )  # fmt: skip
        state = sa.select(*state_columns).where(_c.id == _param("conversation_id"))
        # Take a conversation's lease: free, lapsed, or left by this owner; a new epoch each
        # time. It returns the unfinished delivery and the conversation's state as of the take
        # (a cached window is checked against it: no SELECT of its own). Parameter names
        # differ from the columns': those are reserved in an UPDATE.
        take_where = [_c.id == _param("cid"), sa.or_(_LAPSED, _c.lease_owner == _param("who"))]
        if postgresql:
            # The state's last reply is a subquery, read in the statement's snapshot; the row
            # it updates may be a newer version, if the take waited for the row's lock (a
            # lapsed worker recording its fenced reply at that moment). Only the version of
            # the snapshot is taken (its xmin unchanged); after a wait the take finds no row
            # and is tried again (LEASE_POLL_S) on a new snapshot, so the state is one whole.
            snapshot = _c.__table__.alias("snapshot")
            seen = (
                sa.select(sa.literal_column("snapshot.xmin"))
                .select_from(snapshot)
                .where(snapshot.c.id == _param("cid"))
                .scalar_subquery()
            )
            take_where.append(sa.literal_column("conversations.xmin") == seen)
        lease_take = (
            sa.update(_c)
            .where(*take_where)
            .values(
                lease_owner=_param("who"),
                lease_until=_param("until_", _TS),
                lease_epoch=_c.lease_epoch + 1,
            )
            .returning(
                _c.lease_epoch, _c.delivery_from, _c.delivery_to, _c.delivery_epoch,
                _c.delivery_owner, _c.delivery_seen, _c.delivery_ref, *state_columns,
            )
        )  # fmt: skip
        newest_id = newest(sa.select(_m.id)).limit(1).scalar_subquery()
        reset_context = (
            sa.update(_c)
            .where(_c.id == _param("conversation_id"))
            .values(context_start_id=sa.func.coalesce(newest_id, 0), summary="",
                    summary_through_id=0, summary_tokens=0)
        )  # fmt: skip
        fold_summary = _fold_summary(postgresql)
        # A chat's kept group messages are not its conversation with the bot.
        history = (
            newest(_SELECT_MESSAGES)
            .where(_m.kind != _literal(MessageKind.OBSERVED.value))
            .limit(_LIMIT)
        )
        # The fence of record_reply. A list parameter: an IN list on SQLite, = ANY(array) on
        # PostgreSQL (asyncpg's $n parameters cannot grow into an IN list).
        ids = sa.bindparam("ids", type_=pg.ARRAY(sa.BigInteger())) if postgresql else None
        mark_answered = (
            sa.update(_m)
            .where(
                _m.id == sa.any_(ids) if ids is not None
                else _m.id.in_(sa.bindparam("ids", expanding=True)),
                _m.conversation_id == _param("cid"),  # a column's name is reserved in UPDATE
                _PENDING_WHERE,
            )
            .values(answered_by=_param("reply_id"))
        )  # fmt: skip
        fenced_reply = _fenced_reply(ids) if ids is not None else None
        keys = sa.bindparam("keys", type_=pg.ARRAY(sa.String())) if postgresql else None
        recorded = sa.select(_m.idempotency_key).where(
            _m.idempotency_key == sa.any_(keys) if keys is not None
            else _m.idempotency_key.in_(sa.bindparam("keys", expanding=True))
        )  # fmt: skip
        lease_with_page = None
        if postgresql:
            # LEFT JOIN ... ON true: the lease's row once per pending message, or once with
            # NULLs for none. The page reads the statement's snapshot, like the state; the
            # snapshot guard above makes it the row version the lease was taken on.
            taken = lease_take.cte("taken")
            page = _PENDING.subquery("page")
            lease_with_page = (
                sa.select(taken, page)
                .select_from(taken.outerjoin(page, sa.true()))
                .order_by(page.c.id)  # a join keeps no order of its own
            )
        return cls(
            context=context, context_named=context_named, history=history, state=state,
            reset_context=reset_context,
            fold_summary=fold_summary, mark_answered=mark_answered, lease_take=lease_take,
            lease_with_page=lease_with_page, fenced_reply=fenced_reply, recorded=recorded,
            with_pending=_with_pending(postgresql), orphaned=_with_pending(postgresql, True),
        )  # fmt: skip


def _fold_summary(postgresql: bool) -> sa.Update:
    """Store.fold_summary: only over the redactions the folded window was built after, the
    check and the write in one statement, so no redaction lands between them. It covers the
    messages up to the fold's last answer, but never past a user's chat message that answer
    does not cover: one sent while an earlier answer streamed has an id below that answer's
    and is answered later (or is still pending), and a window rebuilt from SQL reads only
    the messages after the summary's boundary. The boundary stops just before the first such
    message; the folded answers after it have no question left to read and are left out of
    the rebuilt window. Read from the rows since the old boundary, through the index on
    (conversation_id, id): the folded turns, never the conversation's history."""
    through = _param("through_id", sa.BigInteger())
    first_unfolded = (
        sa.select(_m.id)
        .where(
            _in_conversation(postgresql),
            _m.id > _c.summary_through_id,
            _m.id > _c.context_start_id,
            _m.id <= through,
            _m.role == _literal(Role.USER.value),
            _m.kind == _literal(MessageKind.CHAT.value),
            sa.or_(_m.answered_by.is_(None), _m.answered_by > through),
        )
        .order_by(_m.conversation_id, _m.id)
        .limit(1)
        .correlate(_c)
        .scalar_subquery()
    )
    return (
        sa.update(_c)
        .where(
            _c.id == _param("conversation_id", sa.BigInteger()),
            _c.redactions == _param("expected_redactions"),
        )
        .values(
            summary=_param("new_summary"),
            summary_through_id=sa.func.coalesce(first_unfolded - 1, through),
            summary_tokens=_param("tokens"),
        )
        .returning(_c.summary_through_id)
    )


def _with_pending(postgresql: bool, orphaned: bool = False) -> sa.Select[Any]:
    """The conversations with a pending message (`orphaned`: since before :before, and no
    live lease), driven by the partial pending index. PostgreSQL's planner takes the pending
    predicate's two conditions for independent and expects a quarter of all messages to
    match, so `id IN (subquery)` scanned every conversation ever created and probed the index
    for each: 370-440 ms at a million conversations, every 2 s on every worker (a soak
    review). `id = ANY(ARRAY(subquery))` reads the pending ids first (an InitPlan on the
    index) and then looks up only those conversations."""
    pending = sa.select(_m.conversation_id).where(_PENDING_WHERE)
    if orphaned:
        pending = pending.where(_m.created_at < _param("before", _TS))
    if postgresql:
        among = _c.id == sa.any_(sa.func.array(pending.scalar_subquery()))
    else:
        among = _c.id.in_(pending)
    found = sa.select(_c.id, _c.platform, _c.chat_id, _c.thread_id).where(among)
    return (found.where(_LAPSED) if orphaned else found).order_by(_c.id)


def _fenced_reply(ids: sa.BindParameter[Any]) -> sa.Select[Any]:
    """record_reply with a delivery, as one statement: the delivery ended (the fence), the
    reply inserted only if it was, the messages it answers marked. It returns the reply's id,
    NULL when the fence failed (nothing was written). PostgreSQL runs data-modifying CTEs on
    one snapshot in one statement: all of it or none of it."""
    fence = _END_DELIVERY.returning(_c.id).cte("fence")
    columns = _REPLY_COLUMNS
    # Named apart from the columns: a parameter named like a column of an UPDATE's table
    # would become a SET of that UPDATE.
    values = sa.select(*(_param(f"new_{c}", _m.__table__.c[c].type) for c in columns))
    values = values.select_from(fence)
    reply = sa.insert(_m).from_select(columns, values).returning(_m.id).cte("reply")
    reply_id = sa.select(reply.c.id).scalar_subquery()
    marked = (
        sa.update(_m)
        .where(
            _m.id == sa.any_(ids),
            _m.conversation_id == _param("cid"),
            _PENDING_WHERE,
            sa.exists(sa.select(reply.c.id)),
        )
        .values(answered_by=reply_id)
        .returning(_m.id)
        .cte("marked")
    )
    return sa.select(reply_id, sa.select(sa.func.count()).select_from(marked).scalar_subquery())


_COUNT_ATTEMPT = (
    sa.update(_m)
    .where(_m.id == _param("mid"), _PENDING_WHERE)
    .values(attempts=_m.attempts + 1)
    .returning(_m.attempts)
)

_HOLDS = sa.and_(
    _c.id == _param("cid"),
    _c.lease_owner == _param("who"),
    _c.lease_epoch == _param("epoch", sa.BigInteger()),
)
# Renewing the lease is also the heartbeat of the delivery its holder shows.
_LEASES_RENEW = (
    sa.update(_c)
    .where(
        _c.lease_owner == _param("who"),
        sa.tuple_(_c.id, _c.lease_epoch).in_(sa.bindparam("held", expanding=True)),
    )
    .values(
        lease_until=_param("until_", _TS),
        delivery_seen=sa.case(
            (_c.delivery_owner == _param("who"), _param("now_", _TS)), else_=_c.delivery_seen
        ),
    )
    .returning(_c.id, _c.lease_epoch)
)
# PostgreSQL: the leases held as two arrays (one statement text, one prepared statement,
# whatever their number), and a row another transaction has locked is skipped rather than
# waited for: one slow transaction on one conversation must not hold back the renewal of
# every other lease of the worker. A skipped row that was still this owner's (as of the
# statement's snapshot) is returned as held, not lost, but not renewed (the third column): it
# is tried again at the next period.
_LEASES_RENEW_PG = sa.text(
    """
    WITH held AS (
        SELECT * FROM unnest(CAST(:ids AS BIGINT[]), CAST(:epochs AS BIGINT[])) AS h(id, epoch)
    ), mine AS (
        SELECT c.id, c.lease_epoch FROM conversations AS c
        JOIN held ON held.id = c.id AND held.epoch = c.lease_epoch
        WHERE c.lease_owner = :who
    ), free AS (
        SELECT c.id FROM conversations AS c JOIN mine ON mine.id = c.id
        FOR NO KEY UPDATE OF c SKIP LOCKED
    ), renewed AS (
        UPDATE conversations AS c SET lease_until = :until_,
            delivery_seen = CASE WHEN c.delivery_owner = :who THEN :now_
                                 ELSE c.delivery_seen END
        FROM free JOIN held ON held.id = free.id
        WHERE c.id = free.id AND c.lease_owner = :who AND c.lease_epoch = held.epoch
        RETURNING c.id
    )
    SELECT mine.id, mine.lease_epoch, renewed.id IS NOT NULL
    FROM mine LEFT JOIN renewed ON renewed.id = mine.id
    """
).bindparams(sa.bindparam("until_", type_=_TS), sa.bindparam("now_", type_=_TS))
_LEASE_RELEASE = sa.update(_c).where(_HOLDS).values(lease_owner=None, lease_until=None)
_DELIVERY_OF = sa.and_(
    _c.id == _param("cid"), _c.delivery_epoch == _param("epoch", sa.BigInteger())
)
_BEGIN_DELIVERY = (
    sa.update(_c)
    .where(_HOLDS, _c.delivery_epoch.is_(None))
    .values(
        delivery_from=_param("first", sa.BigInteger()),
        delivery_to=_param("last", sa.BigInteger()),
        delivery_epoch=_param("epoch", sa.BigInteger()),
        delivery_owner=_param("who"),
        delivery_seen=_param("now_", _TS),
        delivery_ref=None,
    )
)
# The pieces shown by the delivery taken over are kept: the new answer edits them.
# A takeover is fenced on the heartbeat it judged too (`holder_alive`): a sign of life of
# the delivery's worker since then (a renewal, a confirmation of a worker paused past its
# lease, a piece noted) refreshed `delivery_seen`, and the takeover fails. A worker replacing
# its own delivery (an apology for its own cut-off answer) judged nothing: no such fence.
_TAKE_OVER_WHERE = (_HOLDS, _c.delivery_epoch == _param("old", sa.BigInteger()))
_TAKE_OVER_VALUES = dict(
    delivery_from=_param("first", sa.BigInteger()),
    delivery_to=_param("last", sa.BigInteger()),
    delivery_epoch=_param("epoch", sa.BigInteger()),
    delivery_owner=_param("who"),
    delivery_seen=_param("now_", _TS),
)
_TAKE_OVER_OWN_DELIVERY = sa.update(_c).where(*_TAKE_OVER_WHERE).values(**_TAKE_OVER_VALUES)
_TAKE_OVER_DELIVERY = (
    sa.update(_c)
    .where(*_TAKE_OVER_WHERE, _c.delivery_seen <= _param("seen", _TS))
    .values(**_TAKE_OVER_VALUES)
)
_NOTE_DELIVERY = (
    sa.update(_c)
    .where(_DELIVERY_OF)
    .values(delivery_ref=_param("shown"), delivery_seen=_param("now_", _TS))
)
_HOLD_DELIVERY = (
    sa.update(_c)
    .where(_DELIVERY_OF, _c.delivery_owner == _param("who"))
    .values(delivery_seen=_param("now_", _TS))
)
_END_DELIVERY = (
    sa.update(_c)
    .where(_DELIVERY_OF)
    .values(delivery_from=None, delivery_to=None, delivery_epoch=None, delivery_owner=None,
            delivery_seen=None, delivery_ref=None)
)  # fmt: skip
_ABANDON_DELIVERY = sa.update(_c).where(_DELIVERY_OF).values(delivery_owner=None)
_SELECT_DELIVERY = sa.select(
    _c.delivery_from, _c.delivery_to, _c.delivery_epoch, _c.delivery_owner, _c.delivery_seen,
    _c.delivery_ref,
).where(_c.id == _param("cid"), _c.delivery_epoch.is_not(None))  # fmt: skip

_SELECT_CONVERSATION_ID = sa.select(_c.id).where(
    _c.platform == _param("platform"),
    _c.chat_id == _param("chat_id"),
    _c.thread_id == _param("thread_id"),
)
_SELECT_BY_IDEMPOTENCY_KEY = sa.select(_m.id, _m.conversation_id).where(
    _m.idempotency_key == _param("idempotency_key")
)

_INSERT_REPLY = (
    sa.insert(_m)
    .values({c: _param(c, _m.__table__.c[c].type) for c in _REPLY_COLUMNS})
    .returning(_m.id)
)  # fmt: skip
_READS = {True: _ConversationReads.build(True), False: _ConversationReads.build(False)}


# The lease take's columns: the epoch, the delivery's 6, the conversation state's 10, its
# facts' 8 and whether it is shared.
_LEASE_COLUMNS = 26


def _state(row: Sequence[Any]) -> ConversationState:
    (id_, platform, chat_id, thread_id, summary, summary_through_id, summary_tokens,
     context_start_id, last_reply_id, redactions) = row[:10]  # fmt: skip
    handoff, (auto_translate, keep_messages) = tuple(row[10:16]), row[16:18]
    return ConversationState(
        id=id_,
        key=ConversationKey(platform, chat_id, thread_id),
        summary=summary,
        summary_through_id=summary_through_id,
        context_start_id=context_start_id,
        last_reply_id=last_reply_id or 0,
        summary_tokens=summary_tokens,
        redactions=redactions,
        shared=bool(row[18]),
        # A handoff row's state is never NULL: NULL is no row.
        facts=ChatFacts(handoff if handoff[0] is not None else None, auto_translate,
                        bool(keep_messages)),
    )  # fmt: skip


def _delivery(row: Sequence[Any]) -> DeliveryState | None:
    """A delivery from its columns (from, to, epoch, owner, seen, shown); None without one."""
    first, last, epoch, owner, seen, shown = row
    if epoch is None:
        return None
    try:
        refs = {int(k): v for k, v in json.loads(shown or "{}").items()}
    except (ValueError, AttributeError):  # written by this code only; never fatal
        refs = {}
    return DeliveryState(first, last, epoch, owner, seen and as_utc(seen), refs)


# Upserts: the row's id whether it was inserted or found. DO UPDATE (not DO NOTHING) so that
# RETURNING yields the existing row too; the user's language follows the platform's, when given.
# Text, as bot.storage.conflicts (the dialects' on_conflict_do_update() cannot be cache-keyed).
_USER_UPSERT_SQL = (
    "INSERT INTO users (platform, external_id, display_name, language_code) "
    "VALUES (:platform, :external_id, :display_name, :language_code) "
    "ON CONFLICT (platform, external_id) DO UPDATE SET language_code = "
    "coalesce(excluded.language_code, users.language_code) RETURNING id"
)
# A conversation is marked shared by a message from a group (never unmarked: a chat does not
# stop being one), also one recorded before migration 0019 added the mark.
_CONVERSATION_UPSERT_SQL = (
    "INSERT INTO conversations (platform, chat_id, thread_id, shared) "
    "VALUES (:c_platform, :chat_id, :thread_id, :shared) "
    "ON CONFLICT (platform, chat_id, thread_id) DO UPDATE SET platform = excluded.platform, "
    "shared = (conversations.shared OR excluded.shared) RETURNING id"
)


def _upsert(sql: str, columns: Sequence[sa.ColumnElement[Any]]) -> sa.TextualSelect:
    binds = {
        "platform": UserRow.__table__.c.platform.type,
        "external_id": UserRow.__table__.c.external_id.type,
        "display_name": UserRow.__table__.c.display_name.type,
        "language_code": UserRow.__table__.c.language_code.type,
        "c_platform": _c.__table__.c.platform.type,
        "chat_id": _c.__table__.c.chat_id.type,
        "thread_id": _c.__table__.c.thread_id.type,
        "shared": _c.__table__.c.shared.type,
    }
    used = [sa.bindparam(n, type_=t) for n, t in binds.items() if f":{n}" in sql]
    return sa.text(sql).bindparams(*used).columns(*columns)


_UPSERT_USER = _upsert(_USER_UPSERT_SQL, [UserRow.__table__.c.id])
_UPSERT_CONVERSATION = _upsert(_CONVERSATION_UPSERT_SQL, [_c.__table__.c.id])
# PostgreSQL: both in one statement (data-modifying WITH).
_UPSERT_BOTH = _upsert(
    f"WITH u AS ({_USER_UPSERT_SQL}), c AS ({_CONVERSATION_UPSERT_SQL}) "
    "SELECT u.id AS user_id, c.id AS conversation_id FROM u, c",
    [sa.column("user_id", sa.BigInteger()), sa.column("conversation_id", sa.BigInteger())],
)
# The new message's id, or no row when one with the same idempotency key is there.
_INSERT_MESSAGE = insert_on_conflict(
    MessageRow,
    ["conversation_id", "user_id", "role", "kind", "content", "token_count", "created_at",
     "idempotency_key", "platform_message_id", "answered_by"],
    ["idempotency_key"],
    returning=["id"],
)  # fmt: skip


_ROLES = {role.value: role for role in Role}  # a dict lookup is cheaper than Role(value)
_KINDS = {kind.value: kind for kind in MessageKind}


def _scalar(rows: Sequence[Sequence[Any]]) -> Any:
    """The first column of the only row; None without rows."""
    return _one(rows)[0] if rows else None


def _one(rows: Sequence[Sequence[Any]]) -> Sequence[Any]:
    if len(rows) != 1:  # as SQLAlchemy's Result.one() fails
        raise sa_exc.NoResultFound() if not rows else sa_exc.MultipleResultsFound()
    return rows[0]


def _to_message(row: Sequence[Any]) -> StoredMessage:
    # Once per row of every window rebuilt from SQL (up to the loader's 400): kept lean.
    (id_, conversation_id, role, kind, content, token_count, created_at, answered_by,
     display_name, platform_message_id, user_id) = row  # fmt: skip
    return StoredMessage(
        id_,
        conversation_id,
        _ROLES[role],
        _KINDS[kind],
        content,
        token_count,
        as_utc(created_at),
        answered_by,
        display_name or "",
        platform_message_id or "",
        user_id or "",
    )


# Backfill: per conversation of a platform, its newest message with a platform id (a backward
# scan of the (conversation_id, id) index that stops at the first), kept when sent since.
_NEWEST_WITH_PLATFORM_ID = (
    sa.select(_m.id)
    .where(_m.conversation_id == _c.id, _m.platform_message_id.is_not(None))
    .order_by(*_NEWEST_FIRST)
    .limit(1)
    .correlate(_c)
    .scalar_subquery()
)
_NEWEST_PER_CONVERSATION = (
    sa.select(_c.platform, _c.chat_id, _c.thread_id, _NEWEST_WITH_PLATFORM_ID.label("mid"))
    .where(_c.platform == _param("platform"))
    .subquery()
)
_LAST_PLATFORM_IDS = (
    sa.select(
        _NEWEST_PER_CONVERSATION.c.platform,
        _NEWEST_PER_CONVERSATION.c.chat_id,
        _NEWEST_PER_CONVERSATION.c.thread_id,
        _m.platform_message_id,
    )
    .join(_m, _m.id == _NEWEST_PER_CONVERSATION.c.mid)
    .where(_m.created_at >= _param("since", sa.DateTime(timezone=True)))
)
# A deleted message never answered: answered by nothing (0), a command's kind (in /history,
# never in context or summaries), its text gone with it. The partial pending index finds it.
WITHDRAWN_STUB = "[message: deleted by its sender before it was answered]"
_WITHDRAW = (
    sa.update(_m)
    .where(
        _m.conversation_id == _param("cid"),
        _m.platform_message_id == _param("pmid"),
        _PENDING_WHERE,
    )
    .values(answered_by=0, kind=MessageKind.COMMAND.value, content=WITHDRAWN_STUB)
)
# A deleted message already answered or kept, or an answer deleted in the chat: found by its
# idempotency key (unique, indexed), its text replaced; its kind and answer stay, so the
# conversation reads on around it.
DELETED_STUB = "[message: deleted by its sender]"
DELETED_STUB_TOKENS = 12  # at least what a tokenizer makes of it: the context budget counts it
_IS_ANSWER = _m.role == _literal(_ASSISTANT)
_ITS_STUB = sa.case((_IS_ANSWER, ANSWER_DELETED_STUB), else_=DELETED_STUB)
_REDACT = (
    sa.update(_m)
    .where(
        _m.idempotency_key == _param("key"),
        sa.or_(_IS_ANSWER, sa.and_(_m.role == _literal(_USER), _m.answered_by.is_not(None))),
        _m.content != _ITS_STUB,
    )
    .values(content=_ITS_STUB, token_count=DELETED_STUB_TOKENS)
    .returning(_m.conversation_id, _m.id, _m.kind)
)
# A message its sender edited (the user's own text: a chat message or a kept group message),
# found by its idempotency key: its text replaced, pending or answered, as a redaction
# replaces it. Not a withdrawn or deleted one, nor a stub (a command, a message over the rate
# limit are other kinds), nor when the text is the same (a repeated edit event), nor by an
# edit older than the one it holds (two edits handled out of order: the platform's edit times
# say which is newer; at the same time, the one handled last wins). An edit without a time
# (`at` NULL: a mark left before migration 0021) is taken as the newest.
_EDITED_AT = _param("at", sa.DateTime(timezone=True))
_EDIT = (
    sa.update(_m)
    .where(
        _m.idempotency_key == _param("key"),
        _m.role == _literal(_USER),
        _m.kind.in_([MessageKind.CHAT.value, MessageKind.OBSERVED.value]),
        _m.content != DELETED_STUB,
        _m.content != _param("text"),
        sa.or_(_EDITED_AT.is_(None), _m.edited_at.is_(None), _m.edited_at <= _EDITED_AT),
    )
    .values(
        content=_param("text"),
        token_count=_param("tokens"),
        edited_at=sa.func.coalesce(_EDITED_AT, _m.edited_at),
    )
    .returning(_m.conversation_id, _m.id, _m.kind)
)
# An edit to the text a message holds already: only its time kept, where newer.
_EDIT_TIME = (
    sa.update(_m)
    .where(
        _m.idempotency_key == _param("key"),
        _m.role == _literal(_USER),
        _m.content == _param("text"),
        sa.or_(_m.edited_at.is_(None), _m.edited_at < _EDITED_AT),
    )
    .values(edited_at=_EDITED_AT)
)
# A cached window built before a redaction is stale by this count (ConversationState).
_COUNT_REDACTION = sa.update(_c).where(_c.id == _param("cid")).values(redactions=_c.redactions + 1)
# A redacted message folded into the running summary (after the /reset boundary, at or before
# the fold point): the summary may hold its text, so it is dropped, and the window is rebuilt
# from every message since context_start_id, the stub in place of the text, and folded again
# as any window over its budget is. The /reset boundary stays.
_DROP_FOLDED_SUMMARY = (
    sa.update(_c)
    .where(
        _c.id == _param("cid"),
        _c.summary_through_id >= _param("mid"),
        _c.context_start_id < _param("mid"),
    )
    .values(summary="", summary_tokens=0, summary_through_id=0)
)

# The skills' reads: preferences of a message's sender and chat, "what did I miss".
_TURN_PREFS = (
    sa.select(
        _m.user_id, UserPrefsRow.language, ChatPrefsRow.auto_translate,
        ChatPrefsRow.keep_messages, MessageReplyRow.reply_to_text, UserRow.language_code,
    )
    .select_from(_m)
    .outerjoin(UserRow, UserRow.id == _m.user_id)
    .outerjoin(UserPrefsRow, UserPrefsRow.user_id == _m.user_id)
    .outerjoin(ChatPrefsRow, ChatPrefsRow.conversation_id == _m.conversation_id)
    .outerjoin(MessageReplyRow, MessageReplyRow.message_id == _m.id)
    .where(_m.id == _param("mid"))
)  # fmt: skip
# Kept group messages are deleted this many at a time (delete_observed).
DELETE_BATCH = 5000
# With them, the answers that quote them (DIGEST) and the messages those answer. Oldest
# first: a batch that takes an answer has taken what it answers (a smaller id) too.
_digest = _m.__table__.alias("digest")
_DIGESTS = sa.select(_digest.c.id).where(
    _digest.c.conversation_id == _param("cid"),
    _digest.c.kind == _literal(MessageKind.DIGEST.value),
)
_DELETE_OBSERVED = (
    sa.delete(_m)
    .where(
        _m.id.in_(
            sa.select(_m.id)
            .where(
                _m.conversation_id == _param("cid"),
                sa.or_(
                    _m.kind.in_((_literal(MessageKind.OBSERVED.value),
                                 _literal(MessageKind.DIGEST.value))),
                    _m.answered_by.in_(_DIGESTS),
                ),
            )
            .order_by(_m.id)
            .limit(_param("limit", sa.Integer()))
            .scalar_subquery()
        )
    )
    .returning(_m.kind)
)  # fmt: skip
# The retention policy (prune): a message goes once created before :cutoff, unless a turn
# still needs it (pending; or within its conversation's unfinished delivery, which a worker
# may be showing or another will finish) or it is a question whose answer is newer (kept
# until the turn goes whole, with its answer). See docs/database.md, "Retention".
PRUNE_BATCH = 1000
RETAINED_STUB = "[message: removed by the retention policy]"
_CUTOFF = _param("cutoff", _TS)
_answer = _m.__table__.alias("answer")
_delivering = _c.__table__.alias("delivering")
_newest = _m.__table__.alias("newest")
_NEWEST_ID = sa.select(sa.func.max(_newest.c.id)).scalar_subquery()
# The conversation's unfinished delivery and the answer are read by primary key for each
# candidate row, as scalar subqueries: PostgreSQL would plan NOT EXISTS as a hashed subplan
# (every message newer than the cutoff read into a hash, at each batch) or an anti-join over
# a scan of every conversation.
_IN_DELIVERY = (
    sa.select(_delivering.c.id)
    .where(
        _delivering.c.id == _m.conversation_id,
        _delivering.c.delivery_epoch.is_not(None),
        _m.id.between(_delivering.c.delivery_from, _delivering.c.delivery_to),
    )
    .scalar_subquery()
)
_ANSWERED_AT = sa.select(_answer.c.created_at).where(_answer.c.id == _m.answered_by)
_PRUNABLE = sa.and_(
    _m.created_at < _CUTOFF,
    sa.not_(_PENDING_WHERE),
    _IN_DELIVERY.is_(None),
    sa.or_(
        _m.answered_by.is_(None),
        _m.answered_by == 0,
        sa.func.coalesce(_ANSWERED_AT.scalar_subquery() < _CUTOFF, sa.true()),
    ),
)
# Oldest first, as ix_messages_created_at reads them (a question before its answer); FOR
# UPDATE SKIP LOCKED on PostgreSQL (SQLite, one writer at a time, renders no such clause).
_PRUNE_BATCH_DELETE = (
    sa.delete(_m)
    .where(
        _m.id.in_(
            sa.select(_m.id)
            .where(_PRUNABLE, _m.id != _NEWEST_ID)
            .order_by(_m.created_at)
            .limit(_param("limit", sa.Integer()))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .returning(_m.id, _m.conversation_id)
)
_PRUNE_NEWEST = (
    sa.update(_m)
    .where(_m.id == _NEWEST_ID, _PRUNABLE, _m.content != RETAINED_STUB)
    .values(content=RETAINED_STUB, token_count=DELETED_STUB_TOKENS)
    .returning(_m.id, _m.conversation_id)
)
_PRUNE_COUNT = sa.select(sa.func.count()).where(
    _PRUNABLE, sa.not_(sa.and_(_m.id == _NEWEST_ID, _m.content == RETAINED_STUB))
)
_JIT_OFF = sa.text("SET LOCAL jit = off")
_FORGET_REPLY_TO = sa.delete(MessageReplyRow).where(MessageReplyRow.message_id == _param("mid"))
# Per conversation a batch pruned from: its summary dropped where it quotes a pruned message
# (one folded after the /reset point and through one of them; it is folded again from what
# remains, and the /reset point stays), and its count of redactions raised.
_FIRST_PRUNED = _param("first_pruned", sa.BigInteger())
_LAST_PRUNED = _param("last_pruned", sa.BigInteger())
_QUOTES_PRUNED = sa.and_(_c.summary_through_id >= _FIRST_PRUNED, _c.context_start_id < _LAST_PRUNED)
_PRUNED_FROM = (
    sa.update(_c)
    .where(_c.id == _param("cid"))
    .values(
        redactions=_c.redactions + 1,
        summary=sa.case((_QUOTES_PRUNED, ""), else_=_c.summary),
        summary_tokens=sa.case((_QUOTES_PRUNED, 0), else_=_c.summary_tokens),
        summary_through_id=sa.case((_QUOTES_PRUNED, 0), else_=_c.summary_through_id),
    )
)
# The user's last message before `before`, or the answer to it (answered_by 0: a kept
# message, nothing answered it).
_LAST_OWN = (
    sa.select(sa.func.max(_m.id))
    .where(_m.conversation_id == _param("cid"), _m.user_id == _param("uid"),
           _m.id < _param("before"))
    .scalar_subquery()
)  # fmt: skip
_LAST_SEEN = sa.select(sa.func.coalesce(sa.func.nullif(_m.answered_by, 0), _m.id)).where(
    _m.id == _LAST_OWN
)
_BETWEEN = (  # the chat's messages for a summary, newest first
    sa.select(_m.id, UserRow.display_name, _m.role, _m.content, _m.created_at, _m.kind)
    .select_from(_m)
    .outerjoin(UserRow, UserRow.id == _m.user_id)
    .where(_m.kind.in_((MessageKind.CHAT.value, MessageKind.OBSERVED.value)))
    .order_by(_m.id.desc())
)


def _key_params(key: ConversationKey) -> dict[str, str]:
    return {"platform": key.platform, "chat_id": key.chat_id, "thread_id": key.thread_id}


def _chat_conversation(key: ConversationKey) -> sa.ScalarSelect[int]:
    """The conversation's id, read in the statement that needs it (the support API's reads
    name a conversation by its key: no round trip of its own)."""
    return (
        sa.select(_c.id)
        .where(_c.platform == key.platform, _c.chat_id == key.chat_id,
               _c.thread_id == key.thread_id)
        .scalar_subquery()
    )  # fmt: skip


def _agent_replies(cid: sa.ScalarSelect[int], answer_ids: list[int]) -> sa.Select[Any]:
    """Which of these answers delivered an agent's message: answer id, the agent's text, name
    and platform id."""
    return (
        sa.select(_m.answered_by, _m.content, UserRow.display_name, UserRow.external_id)
        .select_from(_m)
        .outerjoin(UserRow, UserRow.id == _m.user_id)
        .where(_m.conversation_id == cid, _m.kind == MessageKind.AGENT.value,
               _m.answered_by.in_(answer_ids))
    )  # fmt: skip


def _replies_to(cid: sa.ScalarSelect[int], answer_ids: list[int]) -> sa.Select[Any]:
    """Answer id -> the newest visitor message it answers (several messages answered
    together are answered as the newest)."""
    return (
        sa.select(_m.answered_by, sa.func.max(_m.id))
        .where(_m.conversation_id == cid, _m.role == _USER, _m.answered_by.in_(answer_ids))
        .group_by(_m.answered_by)
    )


_BY_KEY = _SELECT_MESSAGES.where(_m.idempotency_key == _param("key"))
# The support API reads one message per answer by its key (whether the visitor erased it):
# built once, with its conversation named by _key_params, so no cache key is made per call.
_KEYED_CONVERSATION = (
    sa.select(_c.id)
    .where(_c.platform == _param("platform"), _c.chat_id == _param("chat_id"),
           _c.thread_id == _param("thread_id"))
    .scalar_subquery()
)  # fmt: skip
_BY_PLATFORM_ID = (
    sa.select(_m.id)
    .where(_m.conversation_id == _KEYED_CONVERSATION, _m.platform_message_id == _param("pmid"))
    .order_by(_m.id.desc())
    .limit(1)
)
_MESSAGE_TEXT = sa.select(_m.content).where(
    _m.conversation_id == _KEYED_CONVERSATION, _m.id == _param("id")
)
_s = MessageSignalRow
_UNANSWERED = (
    sa.select(_m.content)
    .join(_s, _s.message_id == _m.id)
    .where(_s.conversation_id == _param("cid"), _s.unanswered.is_(True))
    .order_by(_m.id.desc())
    .limit(_LIMIT)
)
_PENDING_STATS = sa.select(sa.func.count(), sa.func.min(_m.created_at)).where(_PENDING_WHERE)
_c_new = aliased(ConversationRow)
_MOVE_CHAT = (
    sa.update(_c)
    .where(_c.platform == _param("on_platform"), _c.chat_id == _param("old"))
    .where(~sa.exists().where(_c_new.platform == _param("on_platform"),
                              _c_new.chat_id == _param("new")))
    .values(chat_id=_param("new"))
)  # fmt: skip
# Store.merge_chat: the old conversation's row while `lease` holds it, and the new one's, both
# locked (PostgreSQL) until the merge commits.
_MERGE_FROM = (
    sa.select(_c.summary, _c.summary_through_id, _c.summary_tokens, _c.context_start_id,
              _c.shared)
    .where(_c.id == _param("old"), _c.lease_owner == _param("who"),
           _c.lease_epoch == _param("epoch"))
    .with_for_update()
)  # fmt: skip
_MERGE_INTO = (
    sa.select(_c.summary, _c.summary_through_id, _c.summary_tokens, _c.context_start_id,
              _c.shared)
    .where(_c.id == _param("new"), _c.id != _param("old"))
    .with_for_update()
)  # fmt: skip
_p_new = aliased(ChatPrefsRow)
_h_new = aliased(HandoffStateRow)
# What goes: the messages (ids keep the order, the two chats' messages interleaved as they
# came), their signals, the handoff audit, and the settings where the new one has none (the
# new conversation's own win); the old one's settings left over are dropped.
_MERGE_MOVES: tuple[sa.Executable, ...] = (
    sa.update(_m).where(_m.conversation_id == _param("old"))
    .values(conversation_id=_param("new")),
    sa.update(MessageSignalRow).where(MessageSignalRow.conversation_id == _param("old"))
    .values(conversation_id=_param("new")),
    sa.update(HandoffEventRow).where(HandoffEventRow.conversation_id == _param("old"))
    .values(conversation_id=_param("new")),
    sa.update(ChatPrefsRow).where(ChatPrefsRow.conversation_id == _param("old"))
    .where(~sa.exists().where(_p_new.conversation_id == _param("new")))
    .values(conversation_id=_param("new")),
    sa.delete(ChatPrefsRow).where(ChatPrefsRow.conversation_id == _param("old")),
    sa.update(HandoffStateRow).where(HandoffStateRow.conversation_id == _param("old"))
    .where(~sa.exists().where(_h_new.conversation_id == _param("new")))
    .values(conversation_id=_param("new")),
    sa.delete(HandoffStateRow).where(HandoffStateRow.conversation_id == _param("old")),
)  # fmt: skip
_MERGED_INTO = (
    sa.update(_c).where(_c.id == _param("new"))
    .values(summary=_param("summary"), summary_through_id=_param("through"),
            summary_tokens=_param("tokens"), context_start_id=_param("start"),
            shared=_param("shared", sa.Boolean()), redactions=_c.redactions + 1)
)  # fmt: skip
# Left empty, as a conversation that never had a message: no summary, no delivery (an answer
# left unrecorded there is answered again in the new conversation, its messages pending).
_MERGED_FROM = sa.update(_c).where(_c.id == _param("old")).values(
    summary="", summary_tokens=0, summary_through_id=0, context_start_id=0,
    delivery_from=None, delivery_to=None, delivery_epoch=None, delivery_owner=None,
    delivery_seen=None, delivery_ref=None, redactions=_c.redactions + 1,
)  # fmt: skip
# The delivery ends with the erasure: a turn answering now finds its fence gone
# (record_reply) and stores nothing of its answer. The count of redactions raised: a window
# cached before is stale (ContextLoader).
_ERASE_CONVERSATIONS = sa.update(_c).values(
    summary="", summary_tokens=0, summary_through_id=0, delivery_from=None, delivery_to=None,
    delivery_epoch=None, delivery_owner=None, delivery_seen=None, delivery_ref=None,
    redactions=_c.redactions + 1,
)  # fmt: skip


def _keep_newest(q: Queries, goes: Callable[[int, int], bool]) -> int | None:
    """Store.erase and Store.forget_user: SQLite gives a new row the largest id plus one, so
    the newest message of all, if it goes (`goes(id, conversation id)`), stays as a stub out
    of the context (as prune keeps it): its id is never given to another message, which a
    public id or a cached id of it would then name. Its id, or None with no message."""
    row = q.rows(sa.select(_m.id, _m.conversation_id).order_by(_m.id.desc()).limit(1))
    if not row:
        return None
    newest, cid = (int(v) for v in row[0])
    if goes(newest, cid):
        q.rowcount(_FORGET_REPLY_TO, {"mid": newest})
        q.rowcount(_FORGOTTEN_STUB, {"mid": newest})
    return newest


def _close_conversations(q: Queries, ids: Sequence[int], keep: int | None = None) -> None:
    """Store.erase and Store.forget_user: the conversations' messages (but `keep`, a stub
    already), handoff rows (the audit names the agent) and settings deleted, and each row
    emptied and renamed to an opaque tombstone of its own: the row stays, so that its id is
    never given to another conversation (SQLite would), whose turns could otherwise be
    served from a cache of this one."""
    if not ids:
        return
    messages = sa.delete(_m).where(_m.conversation_id.in_(ids))
    q.rowcount(messages if keep is None else messages.where(_m.id != keep))
    for table in (HandoffStateRow, HandoffEventRow, ChatPrefsRow):
        q.rowcount(sa.delete(table).where(table.conversation_id.in_(ids)))
    for cid in ids:
        tombstone = "erased:" + secrets.token_hex(12)
        q.rowcount(_ERASE_CONVERSATIONS.where(_c.id == cid).values(chat_id=tombstone))


def _delete_user(q: Queries, uid: int, *, sqlite: bool) -> None:
    """Store.erase: the user's row deleted, so that a worker that remembers its id finds it
    gone (record_incoming's foreign key) and looks the user and the conversation up again.
    SQLite gives a new row the largest id plus one: where the user's was the largest, a
    placeholder row of no user holds the next one, so that theirs is never given to another
    user (a worker that remembers it would record their messages as that user's)."""
    q.rowcount(sa.delete(UserRow).where(UserRow.id == uid))
    if not sqlite:
        return
    largest = _scalar(q.rows(sa.select(sa.func.max(UserRow.id))))
    if largest is None or int(largest) < uid:
        q.rowcount(sa.insert(UserRow).values(
            id=uid + 1, platform="", external_id="erased:" + secrets.token_hex(12),
        ))  # fmt: skip


def _delete_usage(q: Queries, usage: Sequence[tuple[str, str]]) -> None:
    t = TokenUsageRow
    for scope, subject in usage:
        q.rowcount(sa.delete(t).where(t.scope == scope, t.subject == subject))


# Forgetting a user (Store.forget_user, `parley data forget`): an operator's command, rare.
_USER_ID = sa.select(UserRow.id).where(
    UserRow.platform == _param("platform"), UserRow.external_id == _param("external_id")
)
_theirs = _m.__table__.alias("theirs")
_WROTE_IN = sa.select(_theirs.c.conversation_id).where(_theirs.c.user_id == _param("uid"))
_other = _m.__table__.alias("other")
# Their own: not shared, and nobody else wrote there (a help desk agent's replies aside);
# their private chat too when none of their messages is left in it (pruned): its id is theirs
# (Telegram's private chats, a web chat visitor's).
_OWN_CHATS = (
    sa.select(_c.id)
    .where(sa.or_(_c.id.in_(_WROTE_IN), sa.and_(
        _c.platform == _param("platform"), _c.chat_id == _param("external_id"))))
    .where(_c.shared == sa.false())
    .where(~sa.exists().where(
        _other.c.conversation_id == _c.id,
        _other.c.role == _literal(Role.USER.value),
        sa.or_(_other.c.user_id.is_(None), _other.c.user_id != _param("uid")),
        _other.c.kind != _literal(MessageKind.AGENT.value),
    ))
    .order_by(_c.id)
)  # fmt: skip
_OWN: sa.BindParameter[Any] = sa.bindparam("own", expanding=True)
_CHATS: sa.BindParameter[Any] = sa.bindparam("chats", expanding=True)
# Every thread of each chat they wrote in but their own: a "what did I miss" answer in one
# topic quotes the messages kept in every topic of the chat.
_wrote = _c.__table__.alias("wrote")
_THEIR_CHATS = (
    sa.select(_c.id)
    .where(sa.exists().where(
        _wrote.c.id.in_(_WROTE_IN), _wrote.c.id.not_in(_OWN),
        _wrote.c.platform == _c.platform, _wrote.c.chat_id == _c.chat_id,
    ))
    .order_by(_c.id)
)  # fmt: skip
# Their messages and the answers to them (an answer answers one sender's messages), every
# message of their own conversations, and in their chats the answers that quote kept messages
# (DIGEST) with the messages those answer.
_ANSWERS_TO_THEM = sa.select(_theirs.c.answered_by).where(
    _theirs.c.user_id == _param("uid"), _theirs.c.answered_by.is_not(None)
)
_digests = _m.__table__.alias("digests")
_DIGESTS_IN_CHATS = sa.select(_digests.c.id).where(
    _digests.c.conversation_id.in_(_CHATS),
    _digests.c.kind == _literal(MessageKind.DIGEST.value),
)
_FORGOTTEN = sa.or_(
    _m.user_id == _param("uid"),
    _m.id.in_(_ANSWERS_TO_THEM),
    _m.conversation_id.in_(_OWN),
    sa.and_(
        _m.conversation_id.in_(_CHATS),
        sa.or_(
            _m.kind == _literal(MessageKind.DIGEST.value), _m.answered_by.in_(_DIGESTS_IN_CHATS)
        ),
    ),
)
_FORGOTTEN_ROWS = sa.select(_m.id, _m.idempotency_key).where(_FORGOTTEN)
_DELETE_FORGOTTEN = sa.delete(_m).where(_FORGOTTEN, _m.id != _param("keep"))
FORGOTTEN_STUB = "[message: removed on request]"
_FORGOTTEN_STUB = (
    sa.update(_m)
    .where(_m.id == _param("mid"))
    .values(
        content=FORGOTTEN_STUB, token_count=DELETED_STUB_TOKENS, user_id=None,
        idempotency_key=None, platform_message_id=None, kind=MessageKind.COMMAND.value,
        answered_by=sa.func.coalesce(_m.answered_by, 0),
    )
)  # fmt: skip
# The bot's answers in their chats written since their first message in that thread: each
# had it in its context (or in the summary folded from it) and may quote it. Emptied to the
# stub, not deleted: the others' messages they answer stay answered.
_first = _m.__table__.alias("first")
_THEIR_FIRST = (
    sa.select(sa.func.min(_first.c.id))
    .where(_first.c.user_id == _param("uid"), _first.c.conversation_id == _m.conversation_id)
    .scalar_subquery()
)
_QUOTING_ANSWERS = sa.and_(
    _m.conversation_id.in_(_CHATS), _IS_ANSWER, _m.id > _THEIR_FIRST,
    _m.content != FORGOTTEN_STUB, _m.kind != _literal(MessageKind.DIGEST.value),
    _m.id.not_in(_ANSWERS_TO_THEM),  # deleted with them
)  # fmt: skip
_COUNT_QUOTING_ANSWERS = sa.select(sa.func.count()).select_from(_m).where(_QUOTING_ANSWERS)
_EMPTY_QUOTING_ANSWERS = (
    sa.update(_m)
    .where(_QUOTING_ANSWERS)
    .values(content=FORGOTTEN_STUB, token_count=DELETED_STUB_TOKENS)
)
_FORGET_QUOTED_REPLIES = sa.delete(MessageReplyRow).where(
    MessageReplyRow.message_id.in_(sa.select(_m.id).where(_m.conversation_id.in_(_CHATS)))
)
# Summaries may quote them: dropped, folded again from what remains (the /reset point stays);
# a window cached before is stale by the count of redactions (ContextLoader). The delivery
# ends too, as with an erasure: a turn in flight built its prompt from their words, and its
# answer, which may quote them, finds its fence gone (record_reply); its question stays
# pending and is answered again without them.
_FORGET_SUMMARIES = (
    sa.update(_c)
    .where(_c.id.in_(_CHATS))
    .values(summary="", summary_tokens=0, summary_through_id=0, redactions=_c.redactions + 1,
            delivery_from=None, delivery_to=None, delivery_epoch=None, delivery_owner=None,
            delivery_seen=None, delivery_ref=None)
)  # fmt: skip
