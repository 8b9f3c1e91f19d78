"""Preferences repository: per-user language, per-chat auto-translate and keep-messages opt-in,
the text a message replied to; and, handed on to the Store (which owns the messages), the
reads behind "what did I miss".

Users and chats are keyed by the history's own row ids (users.id, conversations.id), so a
preference follows the same identity the history uses. Writes are upserts (INSERT ... ON
CONFLICT DO UPDATE, the same SQL on SQLite and PostgreSQL), so two workers setting the same
preference never fail. Every database failure raises StorageError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.storage import keys
from bot.storage.base import Cache, Codec, LoggedMessage, Store, TurnPrefs
from bot.storage.conflicts import insert_on_conflict
from bot.storage.database import run_on_connection
from bot.storage.prefs_models import ChatPrefsRow, MessageReplyRow, UserPrefsRow
from bot.text.storable import storable

_up, _cp, _mr = UserPrefsRow, ChatPrefsRow, MessageReplyRow
__all__ = ["LoggedMessage", "PrefsRepository", "TurnPrefs"]


def _setting(table: Any, key: str, column: str) -> sa.Executable:
    """Set one preference of the row with `key`, made when missing."""
    update = f"{column} = excluded.{column}, updated_at = CURRENT_TIMESTAMP"
    return insert_on_conflict(table, [key, column], [key], update=update)


_SET_LANGUAGE = _setting(_up, "user_id", "language")
_SET_AUTO_TRANSLATE = _setting(_cp, "conversation_id", "auto_translate")
_SET_KEEP = _setting(_cp, "conversation_id", "keep_messages")
# The first text remembered for a message stays.
_ADD_REPLY_TO = insert_on_conflict(_mr, ["message_id", "reply_to_text"], ["message_id"])

# Every plain message reads its chat's preferences (auto-translate): kept in the cache (in
# process, or in Redis for every worker), dropped on every write, so a change on one worker
# reaches all of them.
_CHAT_PREFS = sa.select(_cp.auto_translate, _cp.keep_messages).where(
    _cp.conversation_id == sa.bindparam("cid")
)
CHAT_PREFS_TTL_S = 3600.0
ChatPrefs = tuple[str | None, bool]


def _decode_chat(raw: bytes) -> ChatPrefs:
    target, keep = json.loads(raw)
    return target, bool(keep)


_CHAT_CODEC = Codec[ChatPrefs](lambda found: json.dumps(found).encode(), _decode_chat)


class PrefsRepository:
    """Shares the history's engine; it does not own it. Messages are the Store's: what is
    read or deleted of them goes through it."""

    def __init__(self, engine: AsyncEngine, store: Store, cache: Cache) -> None:
        self._engine = engine
        self._store = store
        self._chats = cache.read_through(
            keys.chat_prefs, self._load_chat, _CHAT_CODEC, ttl_s=CHAT_PREFS_TTL_S
        )

    async def for_message(self, message_id: int) -> TurnPrefs:
        return await self._store.turn_prefs(message_id)

    async def chat(self, conversation_id: int) -> ChatPrefs:
        """(auto-translate target, keep-messages opt-in) of a chat."""
        return await self._chats.get(conversation_id)

    async def _load_chat(self, conversation_id: int) -> ChatPrefs:
        async def load(conn: AsyncConnection) -> sa.Row[Any] | None:
            return (await conn.execute(_CHAT_PREFS, {"cid": conversation_id})).first()

        row = await run_on_connection(self._engine, load)
        return (row[0], bool(row[1])) if row is not None else (None, False)

    async def set_language(self, user_ref: int, language: str | None) -> None:
        await self._upsert(_SET_LANGUAGE, {"user_id": user_ref, "language": language})

    async def set_auto_translate(self, conversation_id: int, language: str | None) -> None:
        values = {"conversation_id": conversation_id, "auto_translate": language}
        await self._upsert(_SET_AUTO_TRANSLATE, values)
        await self._chats.refresh(conversation_id)  # never a load from before it

    async def set_keep_messages(self, conversation_id: int, keep: bool) -> None:
        await self._upsert(_SET_KEEP, {"conversation_id": conversation_id, "keep_messages": keep})
        await self._chats.refresh(conversation_id)  # never a load from before it

    async def remember_reply_to(self, message_id: int, text: str) -> None:
        await self._upsert(
            _ADD_REPLY_TO, {"message_id": message_id, "reply_to_text": storable(text)}
        )

    async def _upsert(self, stmt: sa.Executable, values: Mapping[str, Any]) -> None:
        """One insert-or-update of `values` (bot.storage.conflicts)."""
        await run_on_connection(self._engine, lambda conn: conn.execute(stmt, values), write=True)
