"""Which documents Parley loaded itself as the sample knowledge base (bot.knowledge.sample),
so that only those are removed when the operator's own arrive: a folder of the operator's
named like the sample's (a `docs/` of their own, Parley's own `docs/` added on purpose) is
theirs.

A SQLite knowledge base that holds only documents of Parley's own docs/ folder, in the default
collection, was given the sample by an earlier Parley (which removed it as soon as anything
else came): those are marked as the sample.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SAMPLE_FOLDER = Path(os.path.realpath(Path(__file__).resolve().parents[2] / "docs")).as_posix()
_documents = sa.table(
    "kb_documents",
    sa.column("source", sa.String),
    sa.column("collection", sa.String),
    sa.column("sample", sa.Boolean),
)


def upgrade() -> None:
    op.add_column(
        "kb_documents",
        sa.Column("sample", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        _mark_an_earlier_sample()


def _mark_an_earlier_sample() -> None:
    rows = op.get_bind().execute(sa.select(_documents.c.source, _documents.c.collection))
    prefix = _SAMPLE_FOLDER + "/"
    documents = list(rows)
    if documents and all(src.startswith(prefix) and not coll for src, coll in documents):
        op.execute(_documents.update().values(sample=True))


def downgrade() -> None:
    # Not batch mode: copying kb_documents on SQLite would drop it, and its chunks with it.
    op.execute("ALTER TABLE kb_documents DROP COLUMN sample")
