"""The support channel: sites and their server keys (adapters/support/models.py), and a
knowledge-base collection per document, so that a site's answers cite only its own documents.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# On SQLite only INTEGER PRIMARY KEY autoincrements (bot.storage.models.BigId).
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _created_at() -> sa.Column[sa.DateTime]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "support_sites",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("origins", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("languages", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("system_prompt", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("collection", sa.String(255), server_default=sa.text("''"), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_sites")),
        sa.UniqueConstraint("name", name=op.f("uq_support_sites_name")),
        sa.UniqueConstraint("public_key", name=op.f("uq_support_sites_public_key")),
    )
    op.create_table(
        "support_keys",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("site_id", _BIG_ID, nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        _created_at(),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_support_keys_key_id")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_support_keys_secret_sha256")),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["support_sites.id"],
            name=op.f("fk_support_keys_site_id_support_sites"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_support_keys_site_id"), "support_keys", ["site_id"])
    with op.batch_alter_table("kb_documents") as batch:
        batch.add_column(
            sa.Column("collection", sa.String(255), server_default=sa.text("''"), nullable=False)
        )
        batch.create_index(batch.f("ix_kb_documents_collection"), ["collection"])


def downgrade() -> None:
    with op.batch_alter_table("kb_documents") as batch:
        batch.drop_index(batch.f("ix_kb_documents_collection"))
        batch.drop_column("collection")
    op.drop_index(op.f("ix_support_keys_site_id"), table_name="support_keys")
    op.drop_table("support_keys")
    op.drop_table("support_sites")
