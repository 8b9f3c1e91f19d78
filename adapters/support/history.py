"""The support API's reads and deletes in the history database: a visitor's messages page by
page, which SQL message a platform message id names, and erasure.

Erasure deletes the conversation's messages (and what hangs off them), the visitor's user row
and every trace of the visitor in the conversation row: its chat id becomes an opaque
tombstone and its summary is cleared. The row itself stays so that its id is never given to
another conversation (SQLite reuses the highest deleted rowid), whose context window could
otherwise be served from a cache of the erased one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage.base import MessageKind
from bot.storage.models import ConversationRow, MessageRow, UserRow
from bot.types import ConversationKey, Role

# Kinds a visitor sees in its history: what it sent and what it was answered (commands and
# their answers included); group chatter kept for summaries never occurs here.
SHOWN_KINDS = (MessageKind.CHAT.value, MessageKind.COMMAND.value, MessageKind.LIMITED.value)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    role: str
    text: str
    created_at: datetime


class SupportHistory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _conversation(self, key: ConversationKey) -> sa.ScalarSelect[int]:
        c = ConversationRow
        return (
            sa.select(c.id)
            .where(c.platform == key.platform, c.chat_id == key.chat_id, c.thread_id == "")
            .scalar_subquery()
        )

    async def page(self, key: ConversationKey, before: int | None, limit: int) -> list[Row]:
        """Up to `limit` messages older than `before` (newest page when None), oldest first;
        one more is read to tell whether an older page exists (returned first)."""
        m = MessageRow
        stmt = (
            sa.select(m.id, m.role, m.content, m.created_at)
            .where(
                m.conversation_id == self._conversation(key),
                m.kind.in_(SHOWN_KINDS),
                m.role.in_([Role.USER.value, Role.ASSISTANT.value]),
                m.content != "",
            )
            .order_by(m.id.desc())
            .limit(limit + 1)
        )
        if before is not None:
            stmt = stmt.where(m.id < before)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Row(int(r.id), str(r.role), str(r.content), r.created_at) for r in reversed(rows)]

    async def message_id(self, key: ConversationKey, platform_message_id: str) -> int | None:
        m = MessageRow
        stmt = (
            sa.select(m.id)
            .where(
                m.conversation_id == self._conversation(key),
                m.platform_message_id == platform_message_id,
            )
            .order_by(m.id.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            found = await conn.scalar(stmt)
        return int(found) if found is not None else None

    async def erase(self, key: ConversationKey, user_id: str) -> Sequence[int]:
        """Erase the visitor's conversation and user; the conversation ids it had."""
        c = ConversationRow
        async with self._engine.begin() as conn:
            ids = (await conn.execute(sa.select(c.id).where(
                c.platform == key.platform, c.chat_id == key.chat_id
            ))).scalars().all()  # fmt: skip
            if ids:
                await conn.execute(sa.delete(MessageRow).where(MessageRow.conversation_id.in_(ids)))
                await conn.execute(
                    sa.update(c)
                    .where(c.id.in_(ids))
                    .values(
                        chat_id="erased:" + secrets.token_hex(12),
                        summary="",
                        summary_tokens=0,
                        summary_through_id=0,
                        delivery_ref=None,
                    )
                )
            await conn.execute(
                sa.delete(UserRow).where(
                    UserRow.platform == key.platform, UserRow.external_id == user_id
                )
            )
        return [int(i) for i in ids]
