"""Add the columns that revisions 0004 and 0013 gained after they were first committed.

0004 got `conversations.lease_owner` and `lease_until` (a155f08) after a59eb42 had created
it, and 0013 got `handoff_states.request_delivered` (a67bd8c) after 81d7a00 had: a database
migrated by one of those earlier commits is marked at that revision or later but lacks the
columns, and every turn then failed on "no such column" while `parley db upgrade` and
`parley doctor` said all was well. Each column is added here where it is missing; a database
that has it is not changed. Committed revisions are never edited again
(tests/test_migrations.py checks their contents).

Downgrade changes nothing: the columns belong to 0004 and 0013, whose downgrades drop them.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> list[tuple[str, sa.Column[object]]]:
    return [
        ("conversations", sa.Column("lease_owner", sa.String(64), nullable=True)),
        ("conversations", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)),
        (
            "handoff_states",
            sa.Column("request_delivered", sa.Boolean(), server_default=sa.false(), nullable=False),
        ),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, column in _columns():
        if column.name not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, column)


def downgrade() -> None:
    pass
