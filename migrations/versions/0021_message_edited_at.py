"""Keep the time its sender last edited a message, as the platform gives it (Telegram's
edit_date, Discord's edited_timestamp), so that an older edit handled after a newer one (two
workers at once, an update delivered late) never replaces the newer text (SqlStore.edit).
NULL for every message to begin with, and for one never edited: any edit is newer.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "edited_at")
