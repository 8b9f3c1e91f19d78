"""Mark the conversations several people share (a Telegram group, a Discord server channel),
so that a context window rebuilt from SQL labels each user turn with its sender as the turns
in process did (bot.conversation.window). Whether a chat is a group comes from the platform
with each message (Incoming.group) and was stored nowhere: a Discord channel's id does not say
whether it is a server's. False for every conversation to begin with; a group's is marked by
its next message (SqlStore.record_incoming).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("conversations", "shared")
