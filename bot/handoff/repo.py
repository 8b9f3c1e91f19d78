"""The handoff's SQL: state per conversation (cached), state changes with their audit row in
one transaction, and the per-message signals the triggers read.

The state is read for every customer message, so it is kept in the cache (in process, or in
Redis for every worker) and dropped on every change. A conversation the bot has never let go
of has no row: BOT, cached like any other state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.sentiment.types import Label, Sentiment
from bot.storage import keys
from bot.storage.base import Cache, Codec, ConversationState
from bot.storage.conflicts import insert_on_conflict
from bot.storage.database import all_rows, run_on_connection
from bot.storage.models import ConversationRow
from bot.types import ConversationKey, utcnow

from .models import HandoffEventRow, HandoffStateRow, MessageSignalRow
from .types import HandoffState, HandoffStatus, Reason

_s, _e, _g = HandoffStateRow, HandoffEventRow, MessageSignalRow

# Parley's own change counts as made this long before its clock's time: Chatwoot may stamp
# whole seconds (an ISO string, an older version), and its clock may be a little behind ours;
# counted at our exact time, an agent's change made in Chatwoot just after Parley's looked
# older and was ignored, the conversation stuck in the wrong hands.
OWN_CHANGE_LEEWAY_S = 2.0

# A repeat of a message's signal (its turn run again after a crash) keeps the first.
_ADD_SIGNAL = insert_on_conflict(
    _g,
    ["message_id", "conversation_id", "label", "score", "angry", "source", "unanswered"],
    ["message_id"],
)
_ADD_STATE = insert_on_conflict(_s, ["conversation_id"], ["conversation_id"])
_c = ConversationRow
STATE_TTL_S = 3600.0
BOT_STATUS = HandoffStatus(HandoffState.BOT)


@dataclass(frozen=True, slots=True)
class Change:
    """A committed state change: what it was before, what it is now."""

    before: HandoffStatus
    after: HandoffStatus
    language: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True, slots=True)
class Signal:
    """What one customer message told the triggers."""

    message_id: int
    sentiment: Sentiment
    unanswered: bool = False


class HandoffRepository:
    """Shares the history's engine; it does not own it."""

    def __init__(
        self, engine: AsyncEngine, cache: Cache, *, relaxed: AsyncEngine | None = None
    ) -> None:
        self._engine = engine
        # Signals are advisory: written without waiting for the disk where the store can
        # (bot.storage.database.create_relaxed_engine); states and events are durable.
        self._relaxed = relaxed or engine
        self._states = cache.read_through(keys.handoff, self._load, _CODEC, ttl_s=STATE_TTL_S)

    async def status(self, conversation_id: int) -> HandoffStatus:
        return (await self.status_and_language(conversation_id))[0]

    async def status_and_language(
        self, conversation_id: int, known: ConversationState | None = None, *, fresh: bool = False
    ) -> tuple[HandoffStatus, str]:
        """The state and the customer's language at handoff; no SQL while it is cached.
        `known`: the conversation's state as just read with its facts (the turn lease's):
        taken from it, no cache round trip. `fresh`: read from SQL now, past the cache."""
        if fresh:
            return await self._load(conversation_id)
        if known is not None and known.id == conversation_id and known.facts is not None:
            row = known.facts.handoff
            return (BOT_STATUS, "") if row is None else (_status(row), str(row[5] or ""))
        return await self._states.get(conversation_id)

    async def _load(self, conversation_id: int) -> tuple[HandoffStatus, str]:
        stmt = sa.select(_s.state, _s.reason, _s.detail, _s.since, _s.agent, _s.language)
        stmt = stmt.where(_s.conversation_id == conversation_id)

        async def load(conn: AsyncConnection) -> sa.Row[Any] | None:
            return (await conn.execute(stmt)).first()

        row = await run_on_connection(self._engine, load)
        return (BOT_STATUS, "") if row is None else (_status(row), row[5])

    async def change(
        self,
        conversation_id: int,
        to: HandoffState,
        reason: Reason,
        *,
        allowed_from: Sequence[HandoffState],
        detail: str = "",
        agent: str = "",
        language: str | None = None,
        trigger_message_id: int | None = None,
        desk_updated_at: float | None = None,
        record_desk_time: bool = True,
        made_at: float | None = None,
    ) -> Change:
        """Move to `to` if the current state is one of `allowed_from`; the state row and its
        audit row in one transaction (the row locked on PostgreSQL: two agents taking the same
        conversation at once are serialised). Nothing written when not allowed, or when it is
        already in `to` with the same agent (a retried call), or when a help desk's update
        newer than `desk_updated_at` (this one's time) was recorded. That check and the record
        of `desk_updated_at` (unless `record_desk_time` is False: a stamp too far ahead) are
        made in the change's transaction, allowed or not: one round trip. Without it (Parley's
        own change: a request, a take or give-back through its API) the change is recorded at
        this clock's time (less OWN_CHANGE_LEEWAY_S), so that a help desk's update made before
        it and delivered late is older (_desk_time); or at `made_at` (less the leeway too): the
        help desk's time of its message that asks for it, delivered maybe late (an agent's
        answer), at Parley's time an update made after the message looked older."""

        async def run(conn: AsyncConnection) -> Change:
            await conn.execute(_ADD_STATE, {"conversation_id": conversation_id})
            current = sa.select(_s.state, _s.reason, _s.detail, _s.since, _s.agent, _s.language,
                                _s.desk_updated_at)  # fmt: skip
            current = current.where(_s.conversation_id == conversation_id).with_for_update()
            row = (await conn.execute(current)).one()
            before, old_language = _status(row), row[5]
            same = before.state is to and before.agent == agent  # a repeat (a retried webhook)
            # A help desk's update older than one recorded (delivered late, or two handled at
            # once, the newer first) changes nothing, and records nothing.
            stale = desk_updated_at is not None and row[6] is not None and row[6] > desk_updated_at
            if stale:
                return Change(before, before, old_language)
            if before.state not in allowed_from or same:
                if desk_updated_at is not None and record_desk_time and row[6] != desk_updated_at:
                    await conn.execute(
                        sa.update(_s)
                        .where(_s.conversation_id == conversation_id)
                        .values(desk_updated_at=desk_updated_at)
                    )
                return Change(before, before, old_language)
            now = utcnow()
            made = now.timestamp() if made_at is None else made_at
            keep_language = old_language if language is None else language
            await conn.execute(
                sa.update(_s)
                .where(_s.conversation_id == conversation_id)
                .values(state=to.value, reason=reason.value, detail=detail, since=now,
                        agent=agent, language=keep_language,
                        trigger_message_id=trigger_message_id, request_delivered=False,
                        request_claimed_by=None, request_claimed_until=None,
                        desk_updated_at=_desk_time(row[6], made, desk_updated_at,
                                                   record_desk_time))
            )  # fmt: skip
            await conn.execute(
                sa.insert(_e).values(
                    conversation_id=conversation_id, from_state=before.state.value,
                    to_state=to.value, reason=reason.value, detail=detail, agent=agent, at=now,
                )
            )  # fmt: skip
            after = HandoffStatus(to, reason, detail, now, agent)
            return Change(before, after, keep_language)

        change = await run_on_connection(self._engine, run, write=True)
        if not change.changed:  # nothing written (a state change always moves state or agent)
            return change
        # Put, not dropped: a customer message's load that read the row before this change
        # is then never kept over it (ReadThrough).
        await self._states.refresh(conversation_id)
        return change

    async def newer_update(self, conversation_id: int, updated_at: float) -> bool:
        """Whether a help desk's update made at `updated_at` (its clock) is no older than the
        newest one recorded, recording it when so (a conditional update: of two at once, the
        older finds the newer). An update as old as the newest is applied again (the same
        update, retried, or another event of the same change)."""
        newer = sa.or_(_s.desk_updated_at.is_(None), _s.desk_updated_at <= updated_at)
        stmt = (
            sa.update(_s)
            .where(_s.conversation_id == conversation_id, newer)
            .values(desk_updated_at=updated_at)
        )

        async def run(conn: AsyncConnection) -> bool:
            await conn.execute(_ADD_STATE, {"conversation_id": conversation_id})
            return int((await conn.execute(stmt)).rowcount) == 1

        return await run_on_connection(self._engine, run, write=True)

    async def waiting(self) -> list[tuple[int, ConversationKey, HandoffStatus, str]]:
        """Every conversation waiting for a person whose request did not reach every help
        desk, oldest request first: (id, key, status, the customer's language)."""
        stmt = (
            sa.select(_s.state, _s.reason, _s.detail, _s.since, _s.agent, _s.language,
                      _s.conversation_id, _c.platform, _c.chat_id, _c.thread_id)
            .join(_c, _c.id == _s.conversation_id)
            .where(_s.state == HandoffState.WAITING.value, _s.request_delivered.is_(False))
            .order_by(_s.since, _s.conversation_id)
        )  # fmt: skip
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        return [(r[6], ConversationKey(r[7], r[8], r[9]), _status(r), r[5]) for r in rows]

    async def claim_request(
        self, conversation_id: int, since: datetime, owner: str, ttl_s: float
    ) -> bool | None:
        """Claim the handing on of the undelivered request made at `since` for `owner`, for
        `ttl_s` unless renewed (a conditional update: of workers claiming at once, one gets
        it). True: claimed (or already `owner`'s); False: another worker's claim holds; None:
        nothing to hand on any more (delivered, or the conversation moved on)."""
        pending = (
            _s.conversation_id == conversation_id, _s.since == since,
            _s.state == HandoffState.WAITING.value, _s.request_delivered.is_(False),
        )  # fmt: skip
        exists = sa.select(_s.conversation_id).where(*pending)

        async def run(conn: AsyncConnection) -> bool | None:
            now = await _database_now(conn)
            free = sa.or_(
                _s.request_claimed_until.is_(None),
                _s.request_claimed_until < now,
                _s.request_claimed_by == owner,
            )
            until = now + timedelta(seconds=ttl_s)
            claim = (
                sa.update(_s)
                .where(*pending, free)
                .values(request_claimed_by=owner, request_claimed_until=until)
            )
            if (await conn.execute(claim)).rowcount == 1:
                return True
            return False if (await conn.execute(exists)).first() is not None else None

        return await run_on_connection(self._engine, run, write=True)

    async def claimed_elsewhere(
        self, conversation_id: int, since: datetime, owner: str
    ) -> bool | None:
        """Whether another worker than `owner` holds a live claim on the undelivered request
        made at `since`; None: nothing to hand on any more (delivered, or moved on)."""
        stmt = sa.select(_s.request_claimed_by, _s.request_claimed_until).where(
            _s.conversation_id == conversation_id, _s.since == since,
            _s.state == HandoffState.WAITING.value, _s.request_delivered.is_(False),
        )  # fmt: skip

        async def run(conn: AsyncConnection) -> bool | None:
            now = await _database_now(conn)
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            by, until = row
            if until is not None and until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
            return by is not None and by != owner and until is not None and until >= now

        return await run_on_connection(self._engine, run)

    async def renew_claims(self, owner: str, ttl_s: float, leave: Sequence[int] = ()) -> int:
        """Renew `owner`'s claims on requests still undelivered, but those of the
        conversations in `leave` (its help desk cannot take them: they lapse, and another
        worker may take them over); how many it renewed."""

        async def run(conn: AsyncConnection) -> int:
            until = await _database_now(conn) + timedelta(seconds=ttl_s)
            stmt = (
                sa.update(_s)
                .where(_s.request_claimed_by == owner, _s.request_delivered.is_(False),
                       _s.state == HandoffState.WAITING.value,
                       _s.conversation_id.not_in(leave))
                .values(request_claimed_until=until)
            )  # fmt: skip
            return int((await conn.execute(stmt)).rowcount)

        return await run_on_connection(self._engine, run, write=True)

    async def release_claims(self, owner: str) -> None:
        """Let go of `owner`'s claims (a stopping worker): the next start hands them on."""
        stmt = (
            sa.update(_s)
            .where(_s.request_claimed_by == owner)
            .values(request_claimed_by=None, request_claimed_until=None)
        )
        await run_on_connection(self._engine, lambda conn: conn.execute(stmt), single=True)

    async def events(self, conversation_id: int) -> list[tuple[str, str, str, str]]:
        """The audit trail, oldest first: (from, to, reason, detail)."""
        stmt = (
            sa.select(_e.from_state, _e.to_state, _e.reason, _e.detail)
            .where(_e.conversation_id == conversation_id)
            .order_by(_e.id)
        )
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        return [tuple(r) for r in rows]  # type: ignore[misc]

    async def record_signals(self, conversation_id: int, signals: Sequence[Signal]) -> None:
        """One statement, run for each row of the batch in one round trip (executemany); a
        repeat of a message (a turn run again after a crash) keeps the first."""
        rows = [
            {
                "message_id": s.message_id, "conversation_id": conversation_id,
                "label": s.sentiment.label.value, "score": s.sentiment.score,
                "angry": s.sentiment.angry, "source": s.sentiment.source,
                "unanswered": s.unanswered,
            }
            for s in signals
        ]  # fmt: skip
        if not rows:
            return
        values = rows[0] if len(rows) == 1 else rows
        await run_on_connection(
            self._relaxed, lambda conn: conn.execute(_ADD_SIGNAL, values), single=True
        )

    async def request_delivered(self, conversation_id: int, since: datetime) -> None:
        """The request of the handoff made at `since` reached every help desk (a later
        request of the same conversation is not marked by it)."""
        stmt = (
            sa.update(_s)
            .where(_s.conversation_id == conversation_id, _s.since == since,
                   _s.state == HandoffState.WAITING.value)
            .values(request_delivered=True)
        )  # fmt: skip
        await run_on_connection(self._relaxed, lambda conn: conn.execute(stmt), single=True)

    async def trigger_message(self, conversation_id: int) -> int | None:
        """The customer message whose turn handed the conversation off (None: an agent or a
        help desk changed its state last)."""
        stmt = sa.select(_s.trigger_message_id).where(_s.conversation_id == conversation_id)
        found = await run_on_connection(self._engine, lambda conn: conn.scalar(stmt))
        return int(found) if found is not None else None

    async def recent_signals(
        self, conversation_id: int, limit: int, *, before_id: int | None = None
    ) -> list[Signal]:
        """The newest `limit` signals of the conversation (before `before_id`), newest first."""
        stmt = sa.select(_g.message_id, _g.label, _g.score, _g.angry, _g.source, _g.unanswered)
        stmt = stmt.where(_g.conversation_id == conversation_id)
        if before_id is not None:
            stmt = stmt.where(_g.message_id < before_id)
        stmt = stmt.order_by(_g.message_id.desc()).limit(limit)
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        return [
            Signal(r[0], Sentiment(Label(r[1]), float(r[2]), bool(r[3]), r[4]), bool(r[5]))
            for r in rows
        ]


def _status(row: Sequence[object]) -> HandoffStatus:
    state, reason, detail, since, agent = row[0], row[1], row[2], row[3], row[4]
    assert isinstance(since, datetime)
    return HandoffStatus(
        HandoffState(str(state)), Reason(str(reason)) if reason else None, str(detail or ""),
        since if since.tzinfo is not None else since.replace(tzinfo=UTC), str(agent or ""),
    )  # fmt: skip


def _encode(found: tuple[HandoffStatus, str]) -> bytes:
    status, language = found
    since = status.since.isoformat() if status.since else None
    reason = status.reason.value if status.reason else None
    fields = [status.state.value, reason, status.detail, since, status.agent, language]
    return json.dumps(fields).encode()


def _decode(raw: bytes) -> tuple[HandoffStatus, str]:
    state, reason, detail, since, agent, language = json.loads(raw)
    return HandoffStatus(
        HandoffState(state), Reason(reason) if reason else None, detail,
        datetime.fromisoformat(since) if since else None, agent,
    ), language  # fmt: skip


_CODEC = Codec(_encode, _decode)


async def _database_now(conn: AsyncConnection) -> datetime:
    """The database's clock, aware: the one clock every worker judges claims by (each
    worker's own may run ahead or behind the others')."""
    now = (await conn.execute(sa.select(sa.func.current_timestamp()))).scalar_one()
    if isinstance(now, str):  # SQLite: "YYYY-MM-DD HH:MM:SS", in UTC
        now = datetime.fromisoformat(now)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _desk_time(
    recorded: float | None, made_at: float, desk_time: float | None, record: bool
) -> float | None:
    """The help-desk time to keep after a change: a help desk's update's own (no older than
    the recorded one: the change checked it), unless it is not to be recorded; for Parley's
    own change (or one a help desk's message asked for), its time (`made_at`: this clock's,
    or the message's) less the leeway above, never lowering the recorded one
    (Chatwoot's toggle_status answers no updated_at to use instead). A help desk's update
    made more than the leeway before Parley's change and delivered after it is then ignored;
    one made within it still applies, as before."""
    if desk_time is not None:
        return desk_time if record else recorded
    mine = made_at - OWN_CHANGE_LEEWAY_S
    return mine if recorded is None else max(recorded, mine)
