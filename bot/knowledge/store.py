"""KnowledgeBase: documents and their chunks in the history database, searched with the
database's own full-text engine (FTS5 on SQLite, tsvector on PostgreSQL; see migration 0002).

    kb = KnowledgeBase(engine)
    report = await kb.add(["docs/", "faq.pdf"], progress=on_file)
    passages = await kb.search("how do I reset a conversation?")

A changed file's document row and chunks are replaced in one transaction, so a search never
sees half a document; an unchanged file (same SHA-256) is skipped. Files that cannot be read
are reported, never raised. Database failures raise StorageError.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import StorageError
from bot.knowledge.chunker import estimate_tokens
from bot.knowledge.ingest import (
    FileData,
    Parsed,
    collect_files,
    normalize_source,
    parse_file,
    read_file,
)
from bot.knowledge.loaders import LoaderError
from bot.knowledge.search import query_terms, search_statement
from bot.knowledge.types import (
    AddReport,
    CountTokens,
    DocumentInfo,
    FileResult,
    Outcome,
    Passage,
    Progress,
)
from bot.storage.database import database_errors, describe_error
from bot.storage.models import KbChunkRow, KbDocumentRow

DEFAULT_MAX_FILE_BYTES = 50_000_000
SUPPORTED_DIALECTS = ("sqlite", "postgresql")

_Doc = KbDocumentRow
_Chunk = KbChunkRow


class KnowledgeBase:
    """Shares the history's engine; it does not own it (the caller disposes of it)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        count_tokens: CountTokens = estimate_tokens,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        if engine.dialect.name not in SUPPORTED_DIALECTS:
            raise StorageError(
                f"the knowledge base needs SQLite or PostgreSQL, not {engine.dialect.name}"
            )
        self._engine = engine
        self._count = count_tokens
        self._max_bytes = max_file_bytes
        self._errors = database_errors(engine.url)

    async def add(
        self, paths: Iterable[str | Path], *, progress: Progress | None = None
    ) -> AddReport:
        """Ingest files and folders (walked for supported files), one file at a time."""
        files = await asyncio.to_thread(collect_files, paths)
        report = AddReport()
        for done, path in enumerate(files, 1):
            result = await self._add_file(path)
            report.files.append(result)
            if progress is not None:
                progress(done, len(files), result)
        return report

    async def list(self) -> builtins.list[DocumentInfo]:
        d, c = _Doc, _Chunk
        stmt = (
            sa.select(d.source, d.title, d.size, sa.func.count(c.id), d.updated_at)
            .select_from(sa.outerjoin(_Doc, _Chunk, c.document_id == d.id))
            .group_by(d.id, d.source, d.title, d.size, d.updated_at)
            .order_by(d.source)
        )
        async with self._connection() as conn:
            rows = (await conn.execute(stmt)).all()
        return [DocumentInfo(*row) for row in rows]

    async def remove(self, source_or_prefix: str | Path) -> int:
        """Remove the document stored for this path, or every one under it if it names a
        folder; returns how many were removed."""
        source = normalize_source(source_or_prefix)
        folder = source.rstrip("/") + "/"
        matches = sa.or_(_Doc.source == source, _Doc.source.startswith(folder, autoescape=True))
        ids = sa.select(_Doc.id).where(matches).scalar_subquery()
        async with self._connection(write=True) as conn:
            # Chunks first and explicitly: ON DELETE CASCADE needs SQLite's foreign_keys pragma,
            # which an engine not made by bot.storage.database may lack.
            await conn.execute(sa.delete(_Chunk).where(_Chunk.document_id.in_(ids)))
            result = await conn.execute(sa.delete(_Doc).where(matches))
        return int(result.rowcount)

    async def search(self, query: str, k: int = 3) -> builtins.list[Passage]:
        """The k passages that best match `query`, best first; [] when nothing matches. Any
        text is a valid query."""
        terms = query_terms(query)
        if not terms or k < 1:
            return []
        stmt, params = search_statement(self._engine.dialect.name, terms, k)
        async with self._connection() as conn:
            rows = (await conn.execute(stmt, params)).all()
        return [Passage(r.text, r.title, r.location, r.source, float(r.score)) for r in rows]

    async def is_empty(self) -> bool:
        async with self._connection() as conn:
            first = await conn.execute(sa.select(_Doc.id).limit(1))
            return first.first() is None

    async def _add_file(self, path: Path) -> FileResult:
        source = normalize_source(path)
        try:
            file = await asyncio.to_thread(read_file, path, self._max_bytes)
            existing = await self._existing(file.source)
            if existing is not None and existing[1] == file.sha256:
                return FileResult(source, Outcome.UNCHANGED)
            parsed = await asyncio.to_thread(parse_file, path, file.data, self._count)
            await self._store(file, parsed, existing[0] if existing else None)
        except LoaderError as exc:
            return FileResult(source, Outcome.FAILED, reason=str(exc))
        except sa_exc.IntegrityError:
            reason = "added by another process at the same time; run again"
            return FileResult(source, Outcome.FAILED, reason=reason)
        outcome = Outcome.ADDED if existing is None else Outcome.UPDATED
        return FileResult(source, outcome, chunks=len(parsed.chunks))

    async def _existing(self, source: str) -> tuple[int, str] | None:
        stmt = sa.select(_Doc.id, _Doc.sha256).where(_Doc.source == source)
        async with self._connection() as conn:
            row = (await conn.execute(stmt)).first()
        return (row.id, row.sha256) if row else None

    async def _store(self, file: FileData, parsed: Parsed, document_id: int | None) -> None:
        values = {
            "title": parsed.title,
            "sha256": file.sha256,
            "size": len(file.data),
            "updated_at": datetime.now(UTC),
        }
        async with self._connection(write=True, integrity_errors=True) as conn:
            if document_id is None:
                insert = sa.insert(_Doc).values(source=file.source, **values)
                document_id = (await conn.execute(insert.returning(_Doc.id))).scalar_one()
            else:
                await conn.execute(sa.update(_Doc).where(_Doc.id == document_id).values(values))
                await conn.execute(sa.delete(_Chunk).where(_Chunk.document_id == document_id))
            rows = [
                {"document_id": document_id, "ordinal": n, "location": c.location,
                 "text": c.text, "token_count": c.token_count}
                for n, c in enumerate(parsed.chunks)
            ]  # fmt: skip
            await conn.execute(sa.insert(_Chunk), rows)

    @asynccontextmanager
    async def _connection(
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
