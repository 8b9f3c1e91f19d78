"""The knowledge base's SQL: documents, chunks (with their vectors) and the full-text
statements, every database failure raised as StorageError. KnowledgeBase (bot.knowledge.store)
holds the logic; this module only reads and writes rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import StorageError
from bot.knowledge.ingest import FileData, Parsed, normalize_source
from bot.knowledge.search import search_statement
from bot.knowledge.types import DocumentInfo
from bot.storage.database import all_rows, run_on_connection
from bot.storage.models import KbDocumentRow
from bot.text.storable import storable

SUPPORTED_DIALECTS = ("sqlite", "postgresql")
T = TypeVar("T")

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

    async def documents(self, collection: str | None = None) -> list[DocumentInfo]:
        """Every document of `collection`, or of all collections when None."""
        d, c = _Doc, _c
        stmt = (
            sa.select(d.source, d.title, d.size, sa.func.count(c.id), d.updated_at, _COLLECTION)
            .select_from(sa.outerjoin(_Doc, _Chunk, c.document_id == d.id))
            .group_by(d.id, d.source, d.title, d.size, d.updated_at, _COLLECTION)
            .order_by(d.source)
        )
        if collection is not None:
            stmt = stmt.where(_COLLECTION == collection)  # noqa: SIM300  # a column, not a constant
        rows = await self._run(lambda conn: all_rows(conn, stmt))
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

        async def run(conn: AsyncConnection) -> int:
            # Chunks first and explicitly: ON DELETE CASCADE needs SQLite's foreign_keys pragma,
            # which an engine not made by bot.storage.database may lack.
            await conn.execute(sa.delete(_Chunk).where(_c.document_id.in_(ids)))
            return (await conn.execute(sa.delete(_Doc).where(matches))).rowcount

        return await self._run(run, write=True)

    async def is_empty(self) -> bool:
        first = await self._run(lambda conn: all_rows(conn, sa.select(_Doc.id).limit(1)))
        return not first

    async def existing(self, source: str) -> tuple[int, str, str, bool] | None:
        """(id, sha256, collection, sample) of the document stored for `source`."""
        stmt = sa.select(_Doc.id, _Doc.sha256, _COLLECTION, _Doc.sample).where(
            _Doc.source == source
        )
        rows = await self._run(lambda conn: all_rows(conn, stmt))  # one at most: a unique key
        return (rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    async def remove_sample(self) -> int:
        """Remove the documents loaded as the sample if any other document is there; returns
        how many were removed. One transaction: a document added meanwhile is never taken."""
        others = sa.select(_Doc.id).where(_Doc.sample.is_(False)).limit(1)
        ids = sa.select(_Doc.id).where(_Doc.sample.is_(True)).scalar_subquery()

        async def run(conn: AsyncConnection) -> int:
            if (await conn.execute(others)).first() is None:
                return 0
            await conn.execute(sa.delete(_Chunk).where(_c.document_id.in_(ids)))
            return (await conn.execute(sa.delete(_Doc).where(_Doc.sample.is_(True)))).rowcount

        return await self._run(run, write=True)

    async def store(
        self,
        file: FileData,
        parsed: Parsed,
        blobs: Sequence[bytes | None],
        document_id: int | None,
        collection: str = "",
        sample: bool = False,
    ) -> None:
        """Write a document and its chunks, replacing document_id's, in one transaction.
        A unique-key race (IntegrityError) passes through for the caller to report."""
        values = {
            "title": parsed.title,
            "sample": sample,
            "sha256": file.sha256,
            "size": len(file.data),
            "updated_at": datetime.now(UTC),
        }

        async def run(conn: AsyncConnection) -> None:
            doc_id = document_id
            if doc_id is None:
                insert = sa.insert(_Doc).values(source=file.source, **values)
                doc_id = (await conn.execute(insert.returning(_Doc.id))).scalar_one()
            else:
                await conn.execute(sa.update(_Doc).where(_Doc.id == doc_id).values(values))
                await conn.execute(sa.delete(_Chunk).where(_c.document_id == doc_id))
            await conn.execute(
                sa.update(_DocCollection)
                .where(_DocCollection.c.id == doc_id)
                .values(collection=collection)
            )
            rows = [
                {"document_id": doc_id, "ordinal": n, "location": c.location,
                 "text": c.text, "token_count": c.token_count, "embedding": blob}
                for n, (c, blob) in enumerate(zip(parsed.chunks, blobs, strict=True))
            ]  # fmt: skip
            await conn.execute(sa.insert(_Chunk), rows)

        await self._run(run, write=True, integrity_errors=True)

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
        rows = await self._run(lambda conn: all_rows(conn, stmt))
        return tuple(rows[0])

    async def chunk_count(self) -> int:
        stmt = sa.select(sa.func.count()).select_from(_Chunk)
        return int(await self._run(lambda conn: conn.scalar(stmt)) or 0)

    async def chunks(self, *, with_text: bool) -> Sequence[sa.Row[Any]]:
        """Every chunk's id, document_id, ordinal, location and collection, with text and
        embedding."""
        columns: list[Any] = [_c.id, _c.document_id, _c.ordinal, _c.location, _COLLECTION]
        if with_text:
            columns += [_c.text, _c.embedding]
        stmt = sa.select(*columns).join(_Doc, _Doc.id == _c.document_id).order_by(_c.id)
        return await self._run(lambda conn: all_rows(conn, stmt))

    async def write_vectors(self, blobs: dict[int, bytes]) -> None:
        stmt = (
            sa.update(_Chunk)
            .where(_c.id == sa.bindparam("chunk_id"))
            .values(embedding=sa.bindparam("vector"))
        )
        params = [{"chunk_id": i, "vector": b} for i, b in blobs.items()]
        await self._run(lambda conn: conn.execute(stmt, params), write=True)

    async def fulltext(self, terms: list[str], k: int, collection: str = "") -> list[int]:
        """Up to k chunk ids of `collection` by the database's own full-text ranking."""
        stmt, params = search_statement(self._engine.dialect.name, terms, k, collection)
        rows = await self._run(lambda conn: all_rows(conn, stmt, params))
        return [row.id for row in rows]

    async def passage_rows(self, chunk_ids: Sequence[int]) -> dict[int, sa.Row[Any]]:
        """id -> (id, text, location, title, source) of the chunks still there."""
        stmt = (
            sa.select(_c.id, _c.text, _c.location, _Doc.title, _Doc.source)
            .join(_Doc, _Doc.id == _c.document_id)
            .where(_c.id.in_(chunk_ids))
        )
        rows = await self._run(lambda conn: all_rows(conn, stmt))
        return {row.id: row for row in rows}

    async def _run(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        write: bool = False,
        integrity_errors: bool = False,
    ) -> T:
        """`work` on a connection (in a transaction if `write`; bot.storage.database's rule,
        retried once on a dead pooled connection); its failures raise StorageError. With
        `integrity_errors`, a unique-key race passes through for the caller to report."""
        try:
            return await run_on_connection(self._engine, work, write=write)
        except StorageError as exc:
            conflict = exc.__cause__
            if not isinstance(conflict, sa_exc.IntegrityError):
                raise
            if integrity_errors:
                raise conflict from None
            raise StorageError("knowledge base: a concurrent change conflicted") from None
