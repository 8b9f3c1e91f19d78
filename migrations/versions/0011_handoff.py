"""Human handoff: each conversation's handoff state, the audit trail of its changes, and the
per-message signals (sentiment, "the knowledge base found nothing") the triggers read
(bot.handoff.models).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# On SQLite only INTEGER PRIMARY KEY autoincrements (bot.storage.models.BigId).
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _at(name: str) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _text(name: str, kind: sa.types.TypeEngine[str]) -> sa.Column[str]:
    return sa.Column(name, kind, server_default=sa.text("''"), nullable=False)


def _conversation_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["conversation_id"],
        ["conversations.id"],
        name=op.f(f"fk_{table}_conversation_id_conversations"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "handoff_states",
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), server_default=sa.text("'bot'"), nullable=False),
        sa.Column("reason", sa.String(16), nullable=True),
        _text("detail", sa.Text()),
        _at("since"),
        _text("agent", sa.String(255)),
        _text("language", sa.String(16)),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_handoff_states")),
        _conversation_fk("handoff_states"),
    )
    op.create_table(
        "handoff_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        _text("detail", sa.Text()),
        _text("agent", sa.String(255)),
        _at("at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_events")),
        _conversation_fk("handoff_events"),
    )
    op.create_index(
        "ix_handoff_events_conversation_id_id", "handoff_events", ["conversation_id", "id"]
    )
    op.create_table(
        "message_signals",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("angry", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("unanswered", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_signals")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_signals_message_id_messages"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_message_signals_conversation_id_message_id",
        "message_signals",
        ["conversation_id", "message_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_message_signals_conversation_id_message_id", table_name="message_signals")
    op.drop_table("message_signals")
    op.drop_index("ix_handoff_events_conversation_id_id", table_name="handoff_events")
    op.drop_table("handoff_events")
    op.drop_table("handoff_states")
