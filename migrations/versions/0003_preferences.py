"""Skills' preferences: user_prefs (default language), chat_prefs (auto-translate target,
keep-messages opt-in) and message_replies (the text a message replied to).

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def updated_at() -> sa.Column[sa.DateTime]:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "user_prefs",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("language", sa.String(16), nullable=True),
        updated_at(),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_prefs")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_prefs_user_id_users"), ondelete="CASCADE"
        ),
    )
    op.create_table(
        "chat_prefs",
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("auto_translate", sa.String(16), nullable=True),
        sa.Column("keep_messages", sa.Boolean(), server_default=sa.false(), nullable=False),
        updated_at(),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_chat_prefs")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_chat_prefs_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "message_replies",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("reply_to_text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_replies")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_replies_message_id_messages"),
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("message_replies")
    op.drop_table("chat_prefs")
    op.drop_table("user_prefs")
