"""The support API's reads and deletes in the history database (through the `Store`, which
alone reads and deletes messages): a visitor's messages page by page, which SQL message a
platform message id names, and erasure.

An agent's reply (bot.handoff) is two rows: the agent's message as written (kind `agent`, its
user the agent) and the answer to it, the text the visitor got (its translation, marked so,
or the message itself). History shows the pair once, where the visitor saw it (at the
answer), as role `agent`, in the shape of the stream's `agent` event: the agent's name, the
text without the core's mark, `translated` and the original. An agent's message not yet
delivered is not shown: the visitor has not seen it.

Each change of hands (bot.handoff's audit trail, `handoff_events`) is shown too, where it
happened among the messages, as role `handoff`: the note the widget showed from its `handoff`
event ("You are now talking with a person"), with the event's `id` (`handoff_id`: the change's
time, which the event and the audit row share), so that a client that shows both (a stream
resumed from an earlier event) shows it once. A note goes in the page of the first message
after it (the newest page: those after every message).

Erasure deletes the conversation's messages (and what hangs off them), the visitor's user row,
its daily token usage (its site's usage keeps the totals) and every trace of the visitor in
the conversation row: its chat id becomes an opaque tombstone and its summary is cleared, all
in one transaction (`Store.erase`). The row itself stays so that its id is never given to
another conversation (SQLite reuses the highest deleted rowid), whose context window could
otherwise be served from a cache of the erased one.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import phrases
from bot.budget import subjects_of
from bot.handoff.models import HandoffEventRow
from bot.storage.base import MessageKind, Store
from bot.storage.database import all_rows, run_on_connection
from bot.storage.models import ConversationRow
from bot.storage.usage import UsageLog
from bot.types import ConversationKey, Role, as_utc

from . import answers
from .schemas import HistoryMessage, Source

# Kinds a visitor sees in its history: what it sent and what it was answered (commands and
# their answers included); group chatter kept for summaries never occurs here.
SHOWN_KINDS = (MessageKind.CHAT, MessageKind.COMMAND, MessageKind.DIGEST, MessageKind.LIMITED)


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
        reply_to = str(self.reply_to) if self.reply_to is not None else ""
        if self.agent is not None:
            text, translated = delivered(self.text, self.agent.original)
            original = self.agent.original if translated else ""
            return shown.model_copy(update={
                "role": "agent", "text": text, "name": self.agent.name,
                "translated": translated, "original": original, "reply_to": reply_to,
            })  # fmt: skip
        if self.role == Role.USER.value:
            return shown
        if self.text in answers.notice_texts():  # as its live event was: a notice
            # The id its event had: that of the message it answers (one reply is recorded
            # per message); none named, one no event has.
            named = notice_id(reply_to) if reply_to else f"notice-row-{self.id}"
            return shown.model_copy(
                update={"role": "notice", "reply_to": reply_to, "notice_id": named}
            )
        sources = [Source.model_validate(s) for s in answers.sources(self.text)]
        return shown.model_copy(
            update={"role": "assistant", "sources": sources, "reply_to": reply_to}
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def notice_id(reply_to: str | None, once: str | None = None) -> str:
    """A notice's id, as its `notice` event and its history row give it: that of the message
    it answers (the one reply recorded for it is the notice the history shows). A notice that
    names no message (one never kept) is in no history: it gets an id of its own, so that two
    of the same text are two notices; its delivery's key where it has one (`once`: an attempt
    again says the same notice, which the event log refuses as said already)."""
    if reply_to:
        return f"notice-{reply_to}"
    return f"notice-{once or uuid.uuid4().hex}"


def handoff_id(at: datetime) -> str:
    """A change of hands' id: its time in microseconds (exact: no float between), as its
    `handoff` event and its history row give it."""
    return f"handoff-{(as_utc(at) - _EPOCH) // timedelta(microseconds=1)}"


@dataclass(frozen=True, slots=True)
class HandoffNote:
    """A change of hands, as the history shows it."""

    state: str
    agent: str
    at: datetime

    def message(self) -> HistoryMessage:
        at = as_utc(self.at)
        return HistoryMessage(id=handoff_id(at), role="handoff", text="", sources=[],
                              created_at=at.isoformat(), name=self.agent,
                              state=self.state)  # fmt: skip


def with_notes(
    rows: Sequence[Row], notes: Sequence[HandoffNote], older: int = 0
) -> list[HistoryMessage]:
    """The page's messages (in their order) with each note before the first message after it
    (notes after every message last), except the bot's answers to messages shown before the
    note: that turn was under way when the hands changed (it asked for the person), and the
    visitor got its answer first (the desk hands its events on after the change). `older`:
    the id of the older page's newest message (0: none), whose messages are shown before
    this page's (an answer on this page to a question there was under way too)."""
    shown: list[HistoryMessage] = []
    pending = sorted(notes, key=lambda n: as_utc(n.at))
    asked = older  # the newest visitor message shown (at most: the older pages' newest)
    for row in rows:
        under_way = (
            row.role == Role.ASSISTANT.value
            and row.agent is None
            and (row.reply_to is not None and row.reply_to <= asked)
        )
        while pending and not under_way and as_utc(pending[0].at) < as_utc(row.created_at):
            shown.append(pending.pop(0).message())
        shown.append(row.message())
        if row.role == Role.USER.value:
            asked = row.id
    return shown + [n.message() for n in pending]


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
    """The support API's reads of the history: conversations here, messages through the
    `Store`, which alone reads and deletes them."""

    def __init__(self, engine: AsyncEngine, store: Store, usage: UsageLog | None = None) -> None:
        self._engine = engine
        self._store = store
        self._usage = usage

    async def holds(self, key: ConversationKey) -> bool:
        """Whether the conversation is there (an erased one is renamed: it is not)."""
        c = ConversationRow
        stmt = sa.select(c.id).where(
            c.platform == key.platform, c.chat_id == key.chat_id, c.thread_id == ""
        )
        found = await run_on_connection(self._engine, lambda conn: conn.scalar(stmt))
        return found is not None

    async def page(self, key: ConversationKey, before: int | None, limit: int) -> list[Row]:
        """Up to `limit` messages older than `before` (newest page when None), oldest first;
        one more is read to tell whether an older page exists (returned first)."""
        found = await self._store.message_page(key, kinds=SHOWN_KINDS, before=before,
                                               limit=limit + 1)  # fmt: skip
        return [
            Row(m.id, m.role.value, m.content, m.created_at, reply_to=m.reply_to,
                agent=AgentReply(m.agent, m.agent_text) if m.agent is not None else None)
            for m in found
        ]  # fmt: skip

    async def handoff_notes(
        self, key: ConversationKey, after: datetime | None, until: datetime | None
    ) -> list[HandoffNote]:
        """The conversation's changes of hands made after `after` and not after `until`
        (None: no bound), oldest first. Compared here, not in SQL: SQLite keeps the times
        without their offset."""
        e, c = HandoffEventRow, ConversationRow
        stmt = (
            sa.select(e.to_state, e.agent, e.at)
            .join(c, c.id == e.conversation_id)
            .where(c.platform == key.platform, c.chat_id == key.chat_id, c.thread_id == "")
            .order_by(e.id)
        )
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        notes = [HandoffNote(str(state), str(agent or ""), at) for state, agent, at in rows]
        return [
            n for n in notes
            if (after is None or as_utc(n.at) > as_utc(after))
            and (until is None or as_utc(n.at) <= as_utc(until))
        ]  # fmt: skip

    async def message_id(self, key: ConversationKey, platform_message_id: str) -> int | None:
        return await self._store.message_by_platform_id(key, platform_message_id)

    async def text_of(self, key: ConversationKey, message_id: int) -> str | None:
        """The stored text of one of the conversation's messages (None: not there)."""
        return await self._store.message_text(key, message_id)

    async def erase(self, key: ConversationKey, user_id: str) -> Sequence[int]:
        """Erase the visitor's conversation and user; the conversation ids it had. The
        visitor's daily token usage goes too; its site's rows, which counted the same turns,
        keep the totals (bot.budget.subjects_of)."""
        visitor = [s for s in subjects_of(key, user_id) if s.scope == "user"]
        if self._usage is not None:  # a later flush would write its row, and its id, again
            await self._usage.forget(visitor)
        return await self._store.erase(key, user_id, [(s.scope, s.name) for s in visitor])
