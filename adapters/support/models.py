"""The support channel's tables, on the history's metadata (migration 0009): sites (where the
widget may run, what the bot says there) and their secret server keys.

A site's public key is stored as it is: the widget's page shows it to everyone. Server keys
are stored as the SHA-256 of the key, shown once when created; a revoked key keeps its row
(who had which key stays auditable) with `revoked_at` set.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.models import Base, BigId


class SupportSiteRow(Base):
    __tablename__ = "support_sites"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    # JSON lists: the origins a browser may call from ("https://shop.example"), and the
    # languages the site's visitors are answered in (the first is the default).
    origins: Mapped[str] = mapped_column(Text, server_default=text("'[]'"))
    languages: Mapped[str] = mapped_column(Text, server_default=text("'[]'"))
    # "" : the core's conversation.system_prompt.
    system_prompt: Mapped[str] = mapped_column(Text, server_default=text("''"))
    # The knowledge-base collection its answers cite ("" : the default collection).
    collection: Mapped[str] = mapped_column(String(255), server_default=text("''"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class SupportKeyRow(Base):
    __tablename__ = "support_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The name an operator revokes it by ("key_3f9a..."), never the key itself.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    site_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("support_sites.id", ondelete="CASCADE"), index=True
    )
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
