"""SqlStore: the `Store` protocol over SQLAlchemy Core, one implementation for SQLite and
PostgreSQL.

Concurrency comes from the database, not from locks in this process: inserts that may race
(user, conversation, message by idempotency key) are INSERT ... ON CONFLICT DO NOTHING followed
by a SELECT, and `record_reply` fences a second answer with a conditional UPDATE in the same
transaction as the answer itself. Every database failure surfaces as `StorageError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import StorageError
from bot.storage.base import ConversationState, MessageKind, Recorded, StoredMessage
from bot.storage.database import database_errors, describe_error
from bot.storage.models import ConversationRow, MessageRow, UserRow
from bot.types import ConversationKey, Incoming, Role, User, utcnow


class _AlreadyAnswered(Exception):
    """Rolls back a reply whose messages another worker answered first."""


class SqlStore:
    """The history store. It owns `engine`: `aclose()` disposes of it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._errors = database_errors(engine.url)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def start(self) -> None:
        await self.ping()  # a wrong URL or a stopped server fails start-up, not the first turn

    async def aclose(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def record_incoming(
        self, incoming: Incoming, *, kind: MessageKind, token_count: int
    ) -> Recorded:
        async with self._connection(write=True) as conn:
            user_id = await self._user_id(conn, incoming.user)
            conversation_id = await self._conversation_id(conn, incoming.key)
            message = StoredMessage(0, conversation_id, Role.USER, kind, incoming.text,
                                    token_count, _as_utc(incoming.sent_at))  # fmt: skip
            values = _row_values(message)
            values.update(user_id=user_id, idempotency_key=incoming.idempotency_key)
            new_id = await self._insert_once(conn, MessageRow, values, ["idempotency_key"])
            if new_id is not None:
                return Recorded(new_id, conversation_id, is_new=True)
            m = MessageRow
            first = sa.select(m.id, m.conversation_id).where(
                m.idempotency_key == incoming.idempotency_key
            )
            row = (await conn.execute(first)).one()
            return Recorded(row.id, row.conversation_id, is_new=False)

    async def pending(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        stmt = (
            _select_messages()
            .where(MessageRow.conversation_id == conversation_id, _is_pending())
            .order_by(MessageRow.id)
            .limit(limit)
        )
        return await self._messages(stmt)

    async def record_reply(
        self,
        conversation_id: int,
        answers: Sequence[int],
        text: str,
        *,
        kind: MessageKind,
        token_count: int,
    ) -> StoredMessage | None:
        reply = StoredMessage(0, conversation_id, Role.ASSISTANT, kind, text, token_count,
                              utcnow())  # fmt: skip
        try:
            async with self._connection(write=True) as conn:
                insert = sa.insert(MessageRow).values(_row_values(reply))
                reply_id = await conn.scalar(insert.returning(MessageRow.id))
                assert reply_id is not None  # INSERT ... RETURNING always returns the new id
                await _mark_answered(conn, conversation_id, set(answers), reply_id)
        except _AlreadyAnswered:
            return None
        return dataclasses.replace(reply, id=reply_id)

    async def state(self, conversation_id: int) -> ConversationState:
        c = ConversationRow
        stmt = sa.select(
            c.id, c.platform, c.chat_id, c.thread_id, c.summary,
            c.summary_through_id, c.context_start_id, _last_reply_id(conversation_id),
        ).where(c.id == conversation_id)  # fmt: skip
        async with self._connection() as conn:
            row = (await conn.execute(stmt)).one_or_none()
        if row is None:
            raise StorageError(f"conversation {conversation_id} does not exist")
        return ConversationState(
            id=row.id,
            key=ConversationKey(row.platform, row.chat_id, row.thread_id),
            summary=row.summary,
            summary_through_id=row.summary_through_id,
            context_start_id=row.context_start_id,
            last_reply_id=row.last_reply_id or 0,
        )

    async def context_messages(
        self, conversation_id: int, after_id: int, limit: int
    ) -> Sequence[StoredMessage]:
        m = MessageRow
        answered = sa.or_(m.role == Role.ASSISTANT.value, m.answered_by.is_not(None))
        stmt = (
            _select_messages()
            .where(m.conversation_id == conversation_id, m.id > after_id)
            .where(m.kind == MessageKind.CHAT.value, answered)
            .order_by(m.id.desc())
            .limit(limit)
        )
        return list(reversed(await self._messages(stmt)))

    async def fold_summary(self, conversation_id: int, summary: str, through_id: int) -> None:
        values = {"summary": summary, "summary_through_id": through_id}
        await self._update_conversation(conversation_id, values)

    async def reset_context(self, conversation_id: int) -> None:
        newest = (
            sa.select(sa.func.coalesce(sa.func.max(MessageRow.id), 0))
            .where(MessageRow.conversation_id == conversation_id)
            .scalar_subquery()
        )
        values = {"context_start_id": newest, "summary": "", "summary_through_id": 0}
        await self._update_conversation(conversation_id, values)

    async def history(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        stmt = (
            _select_messages()
            .where(MessageRow.conversation_id == conversation_id)
            .order_by(MessageRow.id.desc())
            .limit(limit)
        )
        return list(reversed(await self._messages(stmt)))

    async def conversations_with_pending(self) -> Sequence[tuple[int, ConversationKey]]:
        c = ConversationRow
        # The subquery reads only the partial pending index, however large history is.
        with_pending = sa.select(MessageRow.conversation_id).where(_is_pending())
        stmt = (
            sa.select(c.id, c.platform, c.chat_id, c.thread_id)
            .where(c.id.in_(with_pending))
            .order_by(c.id)
        )
        async with self._connection() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(r.id, ConversationKey(r.platform, r.chat_id, r.thread_id)) for r in rows]

    @asynccontextmanager
    async def _connection(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection, in a transaction committed on success when `write`."""
        try:
            async with self._engine.begin() if write else self._engine.connect() as conn:
                yield conn
        except self._errors as exc:
            raise StorageError(describe_error(exc, self._engine.url)) from exc

    async def _messages(self, stmt: sa.Select[Any]) -> list[StoredMessage]:
        async with self._connection() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_to_message(row) for row in rows]

    async def _update_conversation(self, conversation_id: int, values: Mapping[str, Any]) -> None:
        stmt = sa.update(ConversationRow).where(ConversationRow.id == conversation_id)
        async with self._connection(write=True) as conn:
            await conn.execute(stmt.values(values))

    async def _user_id(self, conn: AsyncConnection, user: User) -> int:
        values = {"platform": user.platform, "external_id": user.user_id}
        values["display_name"] = user.display_name  # kept from the first message only
        return await self._get_or_create(conn, UserRow, values, ["platform", "external_id"])

    async def _conversation_id(self, conn: AsyncConnection, key: ConversationKey) -> int:
        values = {"platform": key.platform, "chat_id": key.chat_id, "thread_id": key.thread_id}
        return await self._get_or_create(conn, ConversationRow, values, list(values))

    async def _get_or_create(
        self,
        conn: AsyncConnection,
        entity: type[UserRow] | type[ConversationRow],
        values: Mapping[str, Any],
        unique: list[str],
    ) -> int:
        # Look first: the row nearly always exists, and a conflicting insert would still burn
        # a PostgreSQL sequence value on every message.
        lookup = sa.select(entity.id).where(*(getattr(entity, k) == values[k] for k in unique))
        found = await conn.scalar(lookup)
        if found is None:
            found = await self._insert_once(conn, entity, values, unique)
        if found is None:  # another transaction created it between the two statements
            found = (await conn.execute(lookup)).scalar_one()
        return found

    async def _insert_once(
        self,
        conn: AsyncConnection,
        entity: type[UserRow] | type[ConversationRow] | type[MessageRow],
        values: Mapping[str, Any],
        unique: list[str],
    ) -> int | None:
        # The new id, or None if a row with the same `unique` columns exists. A concurrent
        # insert of the same key waits for the other transaction to end, then does nothing.
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        stmt = (
            dialect.insert(entity)
            .values(values)
            .on_conflict_do_nothing(index_elements=unique)
            .returning(entity.id)
        )
        result: int | None = (await conn.execute(stmt)).scalar_one_or_none()
        return result


def _is_pending() -> sa.ColumnElement[bool]:
    # Literals, not bound parameters: only then can the planners prove that the query's
    # predicate implies the partial index's (models.PENDING_PREDICATE).
    return sa.and_(MessageRow.role == sa.literal_column("'user'"), MessageRow.answered_by.is_(None))


def _last_reply_id(conversation_id: int) -> sa.Label[int]:
    # ORDER BY id DESC LIMIT 1 walks the (conversation_id, id) index from the newest end and
    # stops at the first reply; MAX() with these filters may not be optimised on SQLite.
    m = MessageRow
    return (
        sa.select(m.id)
        .where(m.conversation_id == conversation_id)
        .where(m.role == Role.ASSISTANT.value, m.kind == MessageKind.CHAT.value)
        .order_by(m.id.desc())
        .limit(1)
        .scalar_subquery()
        .label("last_reply_id")
    )


def _select_messages() -> sa.Select[Any]:
    m = MessageRow
    return sa.select(
        m.id, m.conversation_id, m.role, m.kind, m.content, m.token_count, m.created_at,
        m.answered_by, UserRow.display_name,
    ).outerjoin(UserRow, UserRow.id == m.user_id)  # fmt: skip


def _row_values(message: StoredMessage) -> dict[str, Any]:
    fields = ("conversation_id", "role", "kind", "content", "token_count", "created_at")
    return {name: getattr(message, name) for name in fields}


async def _mark_answered(
    conn: AsyncConnection, conversation_id: int, answers: set[int], reply_id: int
) -> None:
    """The fence: every one of `answers` must still be pending, or nothing is written."""
    if not answers:
        return
    m = MessageRow
    stmt = (
        sa.update(m)
        .where(m.id.in_(answers), m.conversation_id == conversation_id, _is_pending())
        .values(answered_by=reply_id)
    )
    result = await conn.execute(stmt)
    if result.rowcount != len(answers):
        raise _AlreadyAnswered


def _to_message(row: sa.Row[Any]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        conversation_id=row.conversation_id,
        role=Role(row.role),
        kind=MessageKind(row.kind),
        content=row.content,
        token_count=row.token_count,
        created_at=_as_utc(row.created_at),
        answered_by=row.answered_by,
        user_display_name=row.display_name or "",
    )


def _as_utc(moment: datetime) -> datetime:
    # SQLite keeps no offset and hands back naive values; they were written in UTC.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
