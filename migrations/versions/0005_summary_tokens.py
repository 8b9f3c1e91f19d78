"""The size of each conversation's summary in tokens, stored with the summary, so that a
context window rebuilt from SQL does not ask the model's tokenizer (an HTTP round trip on a
vLLM server) to count it again. 0 for summaries written before: they are counted once more.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("summary_tokens", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_column("conversations", "summary_tokens")
