"""Platform fields the adapters hand to the core: the platform's id of each inbound message
(replies are threaded to it, also after a restart) and the language a platform reports for a
user (error sentences and notices are written in it). And a lease on each conversation in SQL,
the turn lock's stand-in across workers while Redis is unreachable.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("platform_message_id", sa.String(64), nullable=True))
    op.add_column("users", sa.Column("language_code", sa.String(16), nullable=True))
    op.add_column("conversations", sa.Column("lease_owner", sa.String(64), nullable=True))
    op.add_column(
        "conversations", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of `messages` would
    # have to rebuild its partial index by reflection.
    op.drop_column("conversations", "lease_until")
    op.drop_column("conversations", "lease_owner")
    op.drop_column("users", "language_code")
    op.drop_column("messages", "platform_message_id")
