"""An index on messages.created_at, for the retention policy (`parley db prune`,
`conversation.retention_days`).

Each worker with a retention period prunes once a day; without this index every run would
read the whole messages table to find the few that aged past the cutoff since the last one.
Partial, on the messages that are not pending (never pruned): no other query can use it, so
the plans of the others (the orphan sweep's: pending messages older than a few seconds) stay
as they were. Building it reads the table once: on a large PostgreSQL database it blocks writes to
`messages` while it runs (run `parley db upgrade` at a quiet moment).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# As written here, not imported: a committed revision never changes (models.SETTLED_PREDICATE).
SETTLED = "NOT (role = 'user' AND answered_by IS NULL)"


def upgrade() -> None:
    op.create_index(
        op.f("ix_messages_created_at"),
        "messages",
        ["created_at"],
        postgresql_where=sa.text(SETTLED),
        sqlite_where=sa.text(SETTLED),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_created_at"), table_name="messages")
