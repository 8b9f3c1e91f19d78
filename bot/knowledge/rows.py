"""The knowledge base's SQL: documents, chunks (with their vectors) and the full-text
statements, every database failure raised as StorageError. KnowledgeBase (bot.knowledge.store)
holds the logic; this module only reads and writes rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import StorageError
from bot.knowledge.ingest import FileData, Parsed, normalize_source
from bot.knowledge.search import search_statement
from bot.knowledge.types import DocumentInfo
from bot.storage.database import database_errors, describe_error
from bot.storage.models import KbDocumentRow
from bot.text.storable import storable

SUPPORTED_DIALECTS = ("sqlite", "postgresql")

_Doc = KbDocumentRow
# The chunk table as this module uses it, `embedding` included (migration 0006).
_Chunk = sa.table(
    "kb_chunks",
    sa.column("id", sa.BigInteger),
    sa.column("document_id", sa.BigInteger),
    sa.column("ordinal", sa.Integer),
    sa.column("location", sa.Text),
    sa.column("text", sa.Text),
    sa.column("token_count", sa.Integer),
    sa.column("embedding", sa.LargeBinary),
)
_c = _Chunk.c
# A document's collection (migration 0009), named apart from the model's columns.
_COLLECTION = sa.literal_column("kb_documents.collection", sa.String)
_DocCollection = sa.table("kb_documents", sa.column("id", sa.BigInteger),
                          sa.column("collection", sa.String))  # fmt: skip


class KnowledgeRows:
    """Reads and writes on the history's engine; it does not own it."""

    def __init__(self, engine: AsyncEngine) -> None:
        if engine.dialect.name not in SUPPORTED_DIALECTS:
            raise StorageError(
                f"the knowledge base needs SQLite or PostgreSQL, not {engine.dialect.name}"
            )
        self._engine = engine
        self._errors = database_errors(engine.url)

    async def documents(self) -> list[DocumentInfo]:
        d, c = _Doc, _c
        stmt = (
            sa.select(d.source, d.title, d.size, sa.func.count(c.id), d.updated_at)
            .select_from(sa.outerjoin(_Doc, _Chunk, c.document_id == d.id))
            .group_by(d.id, d.source, d.title, d.size, d.updated_at)
            .order_by(d.source)
        )
        async with self.connection() as conn:
            rows = (await conn.execute(stmt)).all()
        return [DocumentInfo(*row) for row in rows]

    async def remove(self, source_or_prefix: str | Path) -> int:
        """Remove the document stored for this path, or every one under it if it names a
        folder; returns how many were removed."""
        source = normalize_source(source_or_prefix)
        if storable(source) != source:  # not valid UTF-8, so never stored (read_file)
            return 0
        folder = source.rstrip("/") + "/"
        matches = sa.or_(_Doc.source == source, _Doc.source.startswith(folder, autoescape=True))
        ids = sa.select(_Doc.id).where(matches).scalar_subquery()
        async with self.connection(write=True) as conn:
            # Chunks first and explicitly: ON DELETE CASCADE needs SQLite's foreign_keys pragma,
            # which an engine not made by bot.storage.database may lack.
            await conn.execute(sa.delete(_Chunk).where(_c.document_id.in_(ids)))
            result = await conn.execute(sa.delete(_Doc).where(matches))
        return int(result.rowcount)

    async def is_empty(self) -> bool:
        async with self.connection() as conn:
            first = await conn.execute(sa.select(_Doc.id).limit(1))
            return first.first() is None

    async def existing(self, source: str) -> tuple[int, str, str] | None:
        """(id, sha256, collection) of the document stored for `source`."""
        stmt = sa.select(_Doc.id, _Doc.sha256, _COLLECTION).where(_Doc.source == source)
        async with self.connection() as conn:
            row = (await conn.execute(stmt)).first()
        return (row[0], row[1], row[2]) if row else None

    async def store(
        self,
        file: FileData,
        parsed: Parsed,
        blobs: Sequence[bytes | None],
        document_id: int | None,
        collection: str = "",
    ) -> None:
        """Write a document and its chunks, replacing document_id's, in one transaction.
        A unique-key race (IntegrityError) passes through for the caller to report."""
        values = {
            "title": parsed.title,
            "sha256": file.sha256,
            "size": len(file.data),
            "updated_at": datetime.now(UTC),
        }
        async with self.connection(write=True, integrity_errors=True) as conn:
            if document_id is None:
                insert = sa.insert(_Doc).values(source=file.source, **values)
                document_id = (await conn.execute(insert.returning(_Doc.id))).scalar_one()
            else:
                await conn.execute(sa.update(_Doc).where(_Doc.id == document_id).values(values))
                await conn.execute(sa.delete(_Chunk).where(_c.document_id == document_id))
            await conn.execute(
                sa.update(_DocCollection)
                .where(_DocCollection.c.id == document_id)
                .values(collection=collection)
            )
            rows = [
                {"document_id": document_id, "ordinal": n, "location": c.location,
                 "text": c.text, "token_count": c.token_count, "embedding": blob}
                for n, (c, blob) in enumerate(zip(parsed.chunks, blobs, strict=True))
            ]  # fmt: skip
            await conn.execute(sa.insert(_Chunk), rows)

    async def stamp(self) -> tuple[object, ...]:
        """Changes with every add, update or removal, and costs two index lookups and a scan of
        the small documents table (counting chunks would scan the big one): every write of
        a document sets its updated_at and gives its chunks new ids, and a removal lowers the
        number of documents."""
        stmt = sa.select(
            sa.select(sa.func.max(_c.id)).scalar_subquery(),
            sa.select(sa.func.max(_Doc.updated_at)).scalar_subquery(),
            sa.select(sa.func.count()).select_from(_Doc).scalar_subquery(),
        )
        async with self.connection() as conn:
            return tuple((await conn.execute(stmt)).one())

    async def chunk_count(self) -> int:
        async with self.connection() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(_Chunk))
        return int(count or 0)

    async def chunks(self, *, with_text: bool) -> Sequence[sa.Row[Any]]:
        """Every chunk's id, document_id, ordinal, location and collection, with text and
        embedding."""
        columns: list[Any] = [_c.id, _c.document_id, _c.ordinal, _c.location, _COLLECTION]
        if with_text:
            columns += [_c.text, _c.embedding]
        stmt = sa.select(*columns).join(_Doc, _Doc.id == _c.document_id).order_by(_c.id)
        async with self.connection() as conn:
            return (await conn.execute(stmt)).all()

    async def write_vectors(self, blobs: dict[int, bytes]) -> None:
        stmt = (
            sa.update(_Chunk)
            .where(_c.id == sa.bindparam("chunk_id"))
            .values(embedding=sa.bindparam("vector"))
        )
        params = [{"chunk_id": i, "vector": b} for i, b in blobs.items()]
        async with self.connection(write=True) as conn:
            await conn.execute(stmt, params)

    async def fulltext(self, terms: list[str], k: int, collection: str = "") -> list[int]:
        """Up to k chunk ids of `collection` by the database's own full-text ranking."""
        stmt, params = search_statement(self._engine.dialect.name, terms, k, collection)
        async with self.connection() as conn:
            return [row.id for row in await conn.execute(stmt, params)]

    async def passage_rows(self, chunk_ids: Sequence[int]) -> dict[int, sa.Row[Any]]:
        """id -> (id, text, location, title, source) of the chunks still there."""
        stmt = (
            sa.select(_c.id, _c.text, _c.location, _Doc.title, _Doc.source)
            .join(_Doc, _Doc.id == _c.document_id)
            .where(_c.id.in_(chunk_ids))
        )
        async with self.connection() as conn:
            return {row.id: row for row in await conn.execute(stmt)}

    @asynccontextmanager
    async def connection(
        self, *, write: bool = False, integrity_errors: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction if `write`) whose failures raise StorageError;
        with `integrity_errors`, a unique-key race passes through for the caller to report."""
        try:
            async with self._engine.begin() if write else self._engine.connect() as conn:
                yield conn
        except sa_exc.IntegrityError:
            if integrity_errors:
                raise
            raise StorageError("knowledge base: a concurrent change conflicted") from None
        except self._errors as exc:
            raise StorageError(describe_error(exc, self._engine.url)) from exc
