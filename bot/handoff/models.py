"""The handoff's tables, on the history's metadata (migration 0011).

handoff_states   one row per conversation that ever left the bot: its state, why, since when,
                 the agent, and the customer's language (what agent replies are translated
                 into). No row: the bot has it.
handoff_events   every state change with its reason: the audit trail.
message_signals  1:1 with a customer message: its sentiment, and whether the bot failed to
                 answer it from the knowledge base. Kept beside `messages` (not in it) so
                 the history's table stays as the storage layer defines it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.models import Base, BigId


def _at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class HandoffStateRow(Base):
    __tablename__ = "handoff_states"

    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16), server_default=text("'bot'"))
    reason: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, server_default=text("''"))
    since: Mapped[datetime] = _at()
    agent: Mapped[str] = mapped_column(String(255), server_default=text("''"))
    # The customer's language when the conversation was handed off ("" : unknown).
    language: Mapped[str] = mapped_column(String(16), server_default=text("''"))
    # The customer message whose turn handed it off (migration 0013); None for a change made
    # by an agent or a help desk.
    trigger_message_id: Mapped[int | None] = mapped_column(BigInteger)
    # Whether the request (handoff.requested) reached every help desk that serves the
    # conversation (migration 0013): a start hands on again only those that did not.
    request_delivered: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # The worker handing an undelivered request on again after a start, and until when its
    # claim holds unless renewed (migration 0020): another worker starting meanwhile leaves it.
    request_claimed_by: Mapped[str | None] = mapped_column(String(64))
    request_claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The help desk's time of the newest update of its own applied (migration 0022; Unix
    # seconds on the help desk's clock, Chatwoot's `updated_at`): an older one arriving later
    # is ignored. None: none yet.
    desk_updated_at: Mapped[float | None] = mapped_column(Float)


class HandoffEventRow(Base):
    __tablename__ = "handoff_events"
    __table_args__ = (Index("ix_handoff_events_conversation_id_id", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, server_default=text("''"))
    agent: Mapped[str] = mapped_column(String(255), server_default=text("''"))
    at: Mapped[datetime] = _at()


class MessageSignalRow(Base):
    __tablename__ = "message_signals"
    __table_args__ = (
        # The escalation rules read a conversation's newest signals.
        Index("ix_message_signals_conversation_id_message_id", "conversation_id", "message_id"),
    )

    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[int] = mapped_column(BigInteger)
    label: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    angry: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    source: Mapped[str] = mapped_column(String(16))
    # The knowledge base found nothing for this message (/ask or the "ask" intent).
    unanswered: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
