"""Keep the time of the newest help-desk update applied to a conversation's handoff state, as
the help desk gives it (Chatwoot's `updated_at` of a conversation event, Unix seconds), so
that an older update delivered after a newer one (Chatwoot's webhooks come from a job queue,
retried) is ignored instead of overwriting the newer state: resolved, then a late "open" took
the conversation from the bot again. NULL to begin with: any update is newer.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("handoff_states", sa.Column("desk_updated_at", sa.Float, nullable=True))


def downgrade() -> None:
    op.drop_column("handoff_states", "desk_updated_at")
