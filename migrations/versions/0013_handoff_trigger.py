"""The message that handed a conversation off (handoff_states.trigger_message_id): a turn
that asked for a person, run again because its sentence to the customer did not get out (the
platform was out of reach), says the sentence for that message, and forwards to the agent
what came after it, instead of forwarding everything and never telling the customer.

And whether the request reached every help desk (handoff_states.request_delivered): a start
hands on again only the requests that did not, instead of posting the handoff note to
Chatwoot again for every waiting conversation at every start. Rows of earlier versions are
taken as not delivered (sent once more after the upgrade).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("handoff_states", sa.Column("trigger_message_id", sa.BigInteger()))
    op.add_column(
        "handoff_states",
        sa.Column("request_delivered", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    # Not batch mode: SQLite (3.35 and later) drops a column in place.
    op.execute("ALTER TABLE handoff_states DROP COLUMN request_delivered")
    op.execute("ALTER TABLE handoff_states DROP COLUMN trigger_message_id")
