"""Tables of the skills' preferences, on the history's metadata (migration 0003).

Kept apart from bot/storage/models.py so that the skills own their schema: a user's default
language, and per conversation (a chat, or a forum topic inside one) the auto-translate target
and the opt-in to keep its messages for "what did I miss" summaries. Rows exist only once
something was set; a missing row means the defaults.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, String, Text, false, func
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.models import Base


class UserPrefsRow(Base):
    __tablename__ = "user_prefs"

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # ISO 639-1; NULL: not set (detected from the text, else skills.default_language).
    language: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class ChatPrefsRow(Base):
    __tablename__ = "chat_prefs"

    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    # ISO 639-1 target of auto-translate; NULL: off.
    auto_translate: Mapped[str | None] = mapped_column(String(16))
    keep_messages: Mapped[bool] = mapped_column(Boolean, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class MessageReplyRow(Base):
    """The text a message replied to (Incoming.reply_to_text), kept so that a turn run after
    a restart still sees it; only messages that replied to something have a row."""

    __tablename__ = "message_replies"

    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    reply_to_text: Mapped[str] = mapped_column(Text)
