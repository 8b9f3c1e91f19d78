"""Daily token usage per user and per support site: what the token budgets (bot.budget)
count, kept in SQL so that `parley usage` can show it and so that the shared counters in
Redis, which keep nothing on disk, are rebuilt from it after a restart.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _count(name: str, kind: sa.types.TypeEngine[int]) -> sa.Column[int]:
    return sa.Column(name, kind, server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "token_usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        _count("prompt_tokens", sa.BigInteger()),
        _count("completion_tokens", sa.BigInteger()),
        _count("turns", sa.Integer()),
        _count("refused", sa.Integer()),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("day", "scope", "subject", name=op.f("pk_token_usage")),
    )


def downgrade() -> None:
    op.drop_table("token_usage")
