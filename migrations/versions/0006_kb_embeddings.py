"""Knowledge base: embeddings stored with the chunks, and full-text search that keeps the
words technical text needs.

- `kb_chunks.embedding`: the chunk's vector as little-endian float32 bytes (NULL until computed;
  KnowledgeBase back-fills missing ones on first search). A plain blob on both databases:
  search is exact and in memory (bot.knowledge.index), so no vector index is needed.
- PostgreSQL: the 'english' configuration drops "with", "in", "not", "or", "by", "from", "into"
  from the index, so "WITH clause" could only ever find "clause". 'parley_english' stems with
  the same Snowball stemmer but has no stop-word list (the query side chooses its own, see
  bot.knowledge.search); the generated tsvector column is rebuilt with it.
- SQLite: the FTS5 update trigger fires only when the indexed columns change, so writing an
  embedding does not re-index the chunk's text.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _search_vector(config: str) -> tuple[str, ...]:
    return (
        "DROP INDEX IF EXISTS ix_kb_chunks_search_vector",
        "ALTER TABLE kb_chunks DROP COLUMN search_vector",
        f"""ALTER TABLE kb_chunks ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
            setweight(to_tsvector('{config}', location), 'A')
            || setweight(to_tsvector('{config}', text), 'B')) STORED""",
        "CREATE INDEX ix_kb_chunks_search_vector ON kb_chunks USING gin (search_vector)",
    )


POSTGRES_UP = (
    "CREATE TEXT SEARCH DICTIONARY parley_english_stem (TEMPLATE = snowball, LANGUAGE = english)",
    "CREATE TEXT SEARCH CONFIGURATION parley_english (COPY = english)",
    """ALTER TEXT SEARCH CONFIGURATION parley_english
        ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
        WITH parley_english_stem""",
    *_search_vector("parley_english"),
)
POSTGRES_DOWN = (
    *_search_vector("english"),
    "DROP TEXT SEARCH CONFIGURATION parley_english",
    "DROP TEXT SEARCH DICTIONARY parley_english_stem",
)


def _update_trigger(columns: str) -> tuple[str, ...]:
    return (
        "DROP TRIGGER IF EXISTS kb_chunks_fts_update",
        f"""CREATE TRIGGER kb_chunks_fts_update AFTER UPDATE {columns}ON kb_chunks BEGIN
            INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, location, text)
            VALUES ('delete', old.id, old.location, old.text);
            INSERT INTO kb_chunks_fts(rowid, location, text)
            VALUES (new.id, new.location, new.text);
        END""",
    )


SQLITE_UP = _update_trigger("OF location, text ")
SQLITE_DOWN = _update_trigger("")


def upgrade() -> None:
    op.add_column("kb_chunks", sa.Column("embedding", sa.LargeBinary(), nullable=True))
    for statement in _dialect_sql(up=True):
        op.execute(statement)


def downgrade() -> None:
    for statement in _dialect_sql(up=False):
        op.execute(statement)
    # A plain DROP COLUMN (SQLite 3.35+), not a batch copy of the table, which would lose the
    # full-text triggers of migration 0002.
    op.drop_column("kb_chunks", "embedding")


def _dialect_sql(*, up: bool) -> Sequence[str]:
    name = op.get_bind().dialect.name
    if name == "sqlite":
        return SQLITE_UP if up else SQLITE_DOWN
    if name == "postgresql":
        return POSTGRES_UP if up else POSTGRES_DOWN
    raise NotImplementedError(f"the knowledge base supports SQLite and PostgreSQL, not {name}")
