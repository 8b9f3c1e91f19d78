"""One locker for a conversation's turns, and answers that outlive their own delivery.

`lease_epoch` is the fencing token: it grows by one each time a worker takes the
conversation's lease, and the write of an answer is refused unless it carries the current
one. `delivery_*` records the turn whose answer is being shown, before its first visible
piece: which messages it answers, under which epoch, by which worker (last seen when), and
the platform's references to what was shown, so that an answer the user saw is never
answered again and a turn cut by a crash is finished by editing its own half answer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "lease_epoch", "delivery_from", "delivery_to", "delivery_epoch", "delivery_owner",
    "delivery_seen", "delivery_ref",
)  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(
            sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("delivery_from", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("delivery_to", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("delivery_epoch", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("delivery_owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("delivery_seen", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("delivery_ref", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
