"""The support API's reads and deletes in the history database: a visitor's messages page by
page, which SQL message a platform message id names, and erasure.

An agent's reply (bot.handoff) is two rows: the agent's message as written (kind `agent`, its
user the agent) and the answer to it, the text the visitor got (its translation, marked so,
or the message itself). History shows the pair once, where the visitor saw it (at the
answer), as role `agent`, in the shape of the stream's `agent` event: the agent's name, the
text without the core's mark, `translated` and the original. An agent's message not yet
delivered is not shown: the visitor has not seen it.

Erasure deletes the conversation's messages (and what hangs off them), the visitor's user row,
its daily token usage (its site's usage keeps the totals) and every trace of the visitor in
the conversation row: its chat id becomes an opaque
tombstone and its summary is cleared. The row itself stays so that its id is never given to
another conversation (SQLite reuses the highest deleted rowid), whose context window could
otherwise be served from a cache of the erased one.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot import phrases
from bot.budget import subjects_of
from bot.handoff.models import HandoffEventRow, HandoffStateRow
from bot.storage.base import MessageKind
from bot.storage.database import run_on_connection
from bot.storage.models import ConversationRow, MessageRow, TokenUsageRow, UserRow
from bot.types import ConversationKey, Role

from . import answers
from .schemas import HistoryMessage, Source

# Kinds a visitor sees in its history: what it sent and what it was answered (commands and
# their answers included); group chatter kept for summaries never occurs here.
SHOWN_KINDS = (MessageKind.CHAT.value, MessageKind.COMMAND.value, MessageKind.DIGEST.value,
               MessageKind.LIMITED.value)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AgentReply:
    """The agent's side of an answer that delivered an agent's message."""

    name: str
    original: str  # as the agent wrote it


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    role: str
    text: str
    created_at: datetime
    agent: AgentReply | None = None
    reply_to: int | None = None  # an answer: the newest of the visitor's messages it answers

    def message(self) -> HistoryMessage:
        """The row as the API shows it."""
        at = self.created_at.astimezone(UTC).isoformat()
        shown = HistoryMessage(id=str(self.id), role="user", text=self.text, sources=[],
                               created_at=at)  # fmt: skip
        if self.agent is not None:
            text, translated = delivered(self.text, self.agent.original)
            original = self.agent.original if translated else ""
            return shown.model_copy(update={
                "role": "agent", "text": text, "name": self.agent.name,
                "translated": translated, "original": original,
            })  # fmt: skip
        if self.role == Role.USER.value:
            return shown
        if self.text in answers.notice_texts():  # as its live event was: a notice
            return shown.model_copy(update={"role": "notice"})
        sources = [Source.model_validate(s) for s in answers.sources(self.text)]
        return shown.model_copy(update={
            "role": "assistant", "sources": sources,
            "reply_to": str(self.reply_to) if self.reply_to is not None else "",
        })  # fmt: skip


def delivered(text: str, original: str) -> tuple[str, bool]:
    """What an agent's reply shows the visitor, and whether it is a translation: the core ends
    a translated reply with its mark as a paragraph of its own; the `agent` event and this
    history say `translated` instead, and the widget shows its own mark."""
    translated = bool(original) and original.strip() != text.strip()
    if not translated:
        return text, False
    head, _, last = text.rstrip().rpartition("\n\n")
    return (head if head and last.strip() in _translation_marks() else text), True


@functools.cache
def _translation_marks() -> tuple[str, ...]:
    """The core's "(translated automatically)" in every language it speaks."""
    return tuple({phrases.say(phrases.TRANSLATED, lang) for lang in ("en", *phrases.LANGUAGES)})


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

    async def holds(self, key: ConversationKey) -> bool:
        """Whether the conversation is there (an erased one is renamed: it is not)."""
        stmt = sa.select(self._conversation(key))
        found = await run_on_connection(self._engine, lambda conn: conn.scalar(stmt))
        return found is not None

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

        async def read(
            conn: AsyncConnection,
        ) -> tuple[Sequence[sa.Row[Any]], dict[int, AgentReply], dict[int, int]]:
            rows = (await conn.execute(stmt)).all()
            answers_ids = [int(r.id) for r in rows if r.role == Role.ASSISTANT.value]
            if not answers_ids:
                return rows, {}, {}
            agents = await self._agent_replies(conn, key, answers_ids)
            return rows, agents, await self._replies_to(conn, key, answers_ids)

        rows, agents, replies_to = await run_on_connection(self._engine, read)
        return [
            Row(
                int(r.id),
                str(r.role),
                str(r.content),
                r.created_at,
                agent=agents.get(int(r.id)),
                reply_to=replies_to.get(int(r.id)),
            )
            for r in reversed(rows)
        ]

    async def _replies_to(
        self, conn: AsyncConnection, key: ConversationKey, answer_ids: list[int]
    ) -> dict[int, int]:
        """Answer id -> the newest visitor message it answers: the `reply_to` its events
        carried (several messages answered together are answered as the newest)."""
        m = MessageRow
        stmt = (
            sa.select(m.answered_by, sa.func.max(m.id).label("newest"))
            .where(
                m.conversation_id == self._conversation(key),
                m.role == Role.USER.value,
                m.answered_by.in_(answer_ids),
            )
            .group_by(m.answered_by)
        )
        return {int(r.answered_by): int(r.newest) for r in (await conn.execute(stmt)).all()}

    async def _agent_replies(
        self, conn: AsyncConnection, key: ConversationKey, answer_ids: list[int]
    ) -> dict[int, AgentReply]:
        """Which of these answers delivered an agent's message: answer id -> the agent's side."""
        if not answer_ids:
            return {}
        m, u = MessageRow, UserRow
        stmt = (
            sa.select(m.answered_by, m.content, u.display_name, u.external_id)
            .select_from(m)
            .outerjoin(u, u.id == m.user_id)
            .where(
                m.conversation_id == self._conversation(key),
                m.kind == MessageKind.AGENT.value,
                m.answered_by.in_(answer_ids),
            )
        )
        found = (await conn.execute(stmt)).all()
        return {
            int(r.answered_by): AgentReply(str(r.display_name or r.external_id or ""), r.content)
            for r in found
        }

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
        found = await run_on_connection(self._engine, lambda conn: conn.scalar(stmt))
        return int(found) if found is not None else None

    async def text_of(self, key: ConversationKey, message_id: int) -> str | None:
        """The stored text of one of the conversation's messages (None: not there)."""
        m = MessageRow
        stmt = sa.select(m.content).where(
            m.conversation_id == self._conversation(key), m.id == message_id
        )
        found = await run_on_connection(self._engine, lambda conn: conn.scalar(stmt))
        return str(found) if found is not None else None

    async def erase(self, key: ConversationKey, user_id: str) -> Sequence[int]:
        """Erase the visitor's conversation and user; the conversation ids it had."""
        return await run_on_connection(
            self._engine, functools.partial(self._erase, key, user_id), write=True
        )

    async def _erase(
        self, key: ConversationKey, user_id: str, conn: AsyncConnection
    ) -> Sequence[int]:
        c = ConversationRow
        ids = (await conn.execute(sa.select(c.id).where(
            c.platform == key.platform, c.chat_id == key.chat_id
        ))).scalars().all()  # fmt: skip
        if ids:
            await conn.execute(sa.delete(MessageRow).where(MessageRow.conversation_id.in_(ids)))
            # No longer waiting for a person: the desk would announce it at every start.
            for row in (HandoffStateRow, HandoffEventRow):  # the audit trail names the agent
                await conn.execute(sa.delete(row).where(row.conversation_id.in_(ids)))
            await conn.execute(
                sa.update(c)
                .where(c.id.in_(ids))
                .values(
                    chat_id="erased:" + secrets.token_hex(12),
                    summary="",
                    summary_tokens=0,
                    summary_through_id=0,
                    # The delivery ends here: a turn answering now finds its fence gone
                    # (SqlStore.record_reply) and stores nothing of its answer.
                    delivery_from=None,
                    delivery_to=None,
                    delivery_epoch=None,
                    delivery_owner=None,
                    delivery_seen=None,
                    delivery_ref=None,
                )
            )
        await conn.execute(
            sa.delete(UserRow).where(
                UserRow.platform == key.platform, UserRow.external_id == user_id
            )
        )
        # The visitor's daily token usage goes too; its site's rows, which counted the same
        # turns, keep the totals (bot.budget.subjects_of).
        t = TokenUsageRow
        for subject in subjects_of(key, user_id):
            if subject.scope == "user":
                await conn.execute(
                    sa.delete(t).where(t.scope == subject.scope, t.subject == subject.name)
                )
        return [int(i) for i in ids]
