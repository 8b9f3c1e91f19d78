"""Preferences repository: per-user language, per-chat auto-translate and keep-messages opt-in,
the text a message replied to, and the reads behind "what did I miss".

Users and chats are keyed by the history's own row ids (users.id, conversations.id), so a
preference follows the same identity the history uses. Writes are upserts (INSERT ... ON
CONFLICT DO UPDATE, the same SQL on SQLite and PostgreSQL), so two workers setting the same
preference never fail. Every database failure raises StorageError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.lru import Lru
from bot.storage.base import Cache, MessageKind
from bot.storage.database import connection
from bot.storage.models import MessageRow, UserRow
from bot.storage.prefs_models import ChatPrefsRow, MessageReplyRow, UserPrefsRow
from bot.text.storable import storable

_m, _u = MessageRow, UserRow
_up, _cp, _mr = UserPrefsRow, ChatPrefsRow, MessageReplyRow


@dataclass(frozen=True, slots=True)
class TurnPrefs:
    """Everything a skill needs to know about the sender and the chat of one message."""

    user_ref: int | None  # users.id of the sender; None for a message without one
    language: str | None
    auto_translate: str | None
    keep_messages: bool
    reply_to_text: str | None
    platform_language: str | None = None  # what the platform reports for the sender


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """A message of a chat as "what did I miss" shows it."""

    id: int
    author: str
    is_bot: bool
    content: str
    created_at: datetime


# Every plain message reads its chat's preferences (auto-translate): kept in the shared cache
# (memory or Redis), dropped on every write, so a change on one worker reaches all of them.
_CHAT_PREFS = sa.select(_cp.auto_translate, _cp.keep_messages).where(
    _cp.conversation_id == sa.bindparam("cid")
)
CHAT_PREFS_TTL_S = 3600.0
LOCAL_CHATS = 10_000


class PrefsRepository:
    """Shares the history's engine; it does not own it."""

    def __init__(self, engine: AsyncEngine, cache: Cache | None = None) -> None:
        self._engine = engine
        self._cache = cache
        # Without a shared cache this process is the only writer: chat preferences are kept
        # here as values (no encoding per message), dropped on every write like the cache's.
        self._local: Lru[tuple[str | None, bool]] | None = (
            Lru(LOCAL_CHATS) if cache is not None and not cache.shared else None
        )
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    async def for_message(self, message_id: int) -> TurnPrefs:
        """One round trip: the sender's and the chat's preferences and the replied-to text."""
        stmt = (
            sa.select(_m.user_id, _up.language, _cp.auto_translate, _cp.keep_messages)
            .add_columns(_mr.reply_to_text, _u.language_code)
            .select_from(_m)
            .outerjoin(_u, _u.id == _m.user_id)
            .outerjoin(_up, _up.user_id == _m.user_id)
            .outerjoin(_cp, _cp.conversation_id == _m.conversation_id)
            .outerjoin(_mr, _mr.message_id == _m.id)
            .where(_m.id == message_id)
        )
        async with self._connection() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return TurnPrefs(None, None, None, False, None)
        return TurnPrefs(row[0], row[1], row[2], bool(row[3]), row[4], row[5])

    async def chat(self, conversation_id: int) -> tuple[str | None, bool]:
        """(auto-translate target, keep-messages opt-in) of a chat."""
        if self._local is not None and (known := self._local.get(conversation_id)) is not None:
            return known
        key = f"prefs:chat:{conversation_id}"
        if self._cache is not None and (raw := await self._cache.get(key)) is not None:
            target, keep = json.loads(raw)
            return target, bool(keep)
        async with self._connection() as conn:
            row = (await conn.execute(_CHAT_PREFS, {"cid": conversation_id})).first()
        found = (row[0], bool(row[1])) if row is not None else (None, False)
        if self._local is not None:
            self._local.put(conversation_id, found)
            return found
        if self._cache is not None:
            await self._cache.set(key, json.dumps(found).encode(), CHAT_PREFS_TTL_S)
        return found

    async def _forget_chat(self, conversation_id: int) -> None:
        if self._local is not None:
            self._local.discard(conversation_id)
        if self._cache is not None:
            await self._cache.delete(f"prefs:chat:{conversation_id}")

    async def user_language(self, user_ref: int) -> str | None:
        stmt = sa.select(_up.language).where(_up.user_id == user_ref)
        async with self._connection() as conn:
            return (await conn.execute(stmt)).scalar_one_or_none()

    async def set_language(self, user_ref: int, language: str | None) -> None:
        await self._upsert(_up, {"user_id": user_ref}, {"language": language})

    async def set_auto_translate(self, conversation_id: int, language: str | None) -> None:
        await self._upsert(_cp, {"conversation_id": conversation_id}, {"auto_translate": language})
        await self._forget_chat(conversation_id)

    async def set_keep_messages(self, conversation_id: int, keep: bool) -> None:
        await self._upsert(_cp, {"conversation_id": conversation_id}, {"keep_messages": keep})
        await self._forget_chat(conversation_id)

    async def delete_kept(self, conversation_id: int) -> int:
        """Delete the group messages kept for summaries (not the conversation with the bot);
        returns how many."""
        observed = MessageKind.OBSERVED.value
        stmt = sa.delete(_m).where(_m.conversation_id == conversation_id, _m.kind == observed)
        async with self._connection(write=True) as conn:
            return (await conn.execute(stmt)).rowcount or 0

    async def remember_reply_to(self, message_id: int, text: str) -> None:
        stmt = self._dialect.insert(_mr).values(message_id=message_id, reply_to_text=storable(text))
        async with self._connection(write=True) as conn:
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["message_id"]))

    async def last_seen_id(self, conversation_id: int, user_ref: int, before_id: int) -> int:
        """The id up to which the user has seen this chat: their last message before
        `before_id`, or the answer to it; 0 if they never wrote here."""
        last = (
            sa.select(sa.func.max(_m.id))
            .where(_m.conversation_id == conversation_id, _m.user_id == user_ref, _m.id < before_id)
            .scalar_subquery()
        )
        # The answer if there was one (answered_by 0: a kept message, nothing answered it).
        answer = sa.func.nullif(_m.answered_by, 0)
        stmt = sa.select(sa.func.coalesce(answer, _m.id)).where(_m.id == last)
        async with self._connection() as conn:
            found = (await conn.execute(stmt)).scalar_one_or_none()
        return int(found or 0)

    async def messages_between(
        self,
        conversation_id: int,
        *,
        after_id: int = 0,
        before_id: int,
        since: datetime | None = None,
        limit: int,
    ) -> list[LoggedMessage]:
        """The newest `limit` chat messages (the conversation's and, where the chat keeps them,
        the group's; commands and their answers left out) with after_id < id < before_id and,
        if given, sent after `since`; oldest first."""
        where = [
            _m.conversation_id == conversation_id,
            _m.id > after_id,
            _m.id < before_id,
            _m.kind.in_((MessageKind.CHAT.value, MessageKind.OBSERVED.value)),
        ]
        if since is not None:
            where.append(_m.created_at > since)
        stmt = (
            sa.select(_m.id, _u.display_name, _m.role, _m.content, _m.created_at)
            .select_from(_m)
            .outerjoin(_u, _u.id == _m.user_id)
            .where(*where)
            .order_by(_m.id.desc())
            .limit(limit)
        )
        async with self._connection() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            LoggedMessage(r[0], r[1] or "someone", r[2] == "assistant", r[3], _as_utc(r[4]))
            for r in reversed(rows)
        ]

    async def _upsert(self, table: Any, key: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        changes = {**values, "updated_at": sa.func.now()}
        stmt = self._dialect.insert(table).values(**key, **values)
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=changes)
        async with self._connection(write=True) as conn:
            await conn.execute(stmt)

    def _connection(self, *, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        return connection(self._engine, write=write)


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
