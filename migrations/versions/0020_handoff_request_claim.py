"""Claim the re-sending of a handoff request: several workers starting at once each read the
requests not yet delivered and each handed them on, so agents got the handoff note in
Chatwoot once per worker. A worker now claims a request (handoff_states.request_claimed_by,
until request_claimed_until, renewed while it lives) before handing it on; the others leave
it, and take it over only once the claim lapsed (its worker died) or was let go (it stopped).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("handoff_states", sa.Column("request_claimed_by", sa.String(64)))
    op.add_column("handoff_states", sa.Column("request_claimed_until", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("handoff_states", "request_claimed_until")
    op.drop_column("handoff_states", "request_claimed_by")
