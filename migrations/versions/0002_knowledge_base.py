"""Knowledge base: documents, their chunks, and a full-text index in the database's own engine.

SQLite: an FTS5 table with external content (kb_chunks holds the text once) kept in step by
triggers; the porter tokenizer stems English words the way PostgreSQL's 'english' config does.
PostgreSQL: a stored generated tsvector column (location weight A, text weight B) with a GIN
index. Both are raw SQL: SQLAlchemy models cannot describe them (see
bot.storage.models.include_in_schema_compare).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_UP = (
    """CREATE VIRTUAL TABLE kb_chunks_fts USING fts5(
        location, text, content='kb_chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(rowid, location, text)
        VALUES (new.id, new.location, new.text);
    END""",
    # An external-content FTS5 table must be told the old values to forget them.
    """CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, location, text)
        VALUES ('delete', old.id, old.location, old.text);
    END""",
    """CREATE TRIGGER kb_chunks_fts_update AFTER UPDATE ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, location, text)
        VALUES ('delete', old.id, old.location, old.text);
        INSERT INTO kb_chunks_fts(rowid, location, text)
        VALUES (new.id, new.location, new.text);
    END""",
)
SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS kb_chunks_fts_update",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_delete",
    "DROP TRIGGER IF EXISTS kb_chunks_fts_insert",
    "DROP TABLE IF EXISTS kb_chunks_fts",
)
POSTGRES_UP = (
    """ALTER TABLE kb_chunks ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', location), 'A')
        || setweight(to_tsvector('english', text), 'B')) STORED""",
    "CREATE INDEX ix_kb_chunks_search_vector ON kb_chunks USING gin (search_vector)",
)


def upgrade() -> None:
    op.create_table(
        "kb_documents",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_documents")),
        sa.UniqueConstraint("source", name=op.f("uq_kb_documents_source")),
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("document_id", sa.BigInteger(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_chunks")),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["kb_documents.id"],
            name=op.f("fk_kb_chunks_document_id_kb_documents"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "document_id", "ordinal", name=op.f("uq_kb_chunks_document_id_ordinal")
        ),
    )
    for statement in _dialect_sql(up=True):
        op.execute(statement)


def downgrade() -> None:
    for statement in _dialect_sql(up=False):
        op.execute(statement)
    op.drop_table("kb_chunks")
    op.drop_table("kb_documents")


def _dialect_sql(*, up: bool) -> Sequence[str]:
    name = op.get_bind().dialect.name
    if name == "sqlite":
        return SQLITE_UP if up else SQLITE_DOWN
    if name == "postgresql":
        # The column and index go with the table on downgrade.
        return POSTGRES_UP if up else ()
    raise NotImplementedError(f"the knowledge base supports SQLite and PostgreSQL, not {name}")
