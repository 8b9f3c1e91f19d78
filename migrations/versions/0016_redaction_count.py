"""Count each conversation's redactions (messages deleted by their senders after they were
answered), so that a context window cached before one is seen as stale.

A turn in flight while a message is redacted holds the window it loaded before, with the
deleted text in it, and writes it back to the cache after the redaction dropped it: the
window's boundary and last reply still matched SQL's, so it passed for current and kept the
text in every prompt for up to a day. A window now carries the count it was built at
(bot.conversation.context). 0 for every conversation to begin with: the windows cached
before (which carry no count) match it until the conversation's next redaction.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("redactions", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_column("conversations", "redactions")
