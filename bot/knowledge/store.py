"""KnowledgeBase: documents and their chunks in the history database (bot.knowledge.rows),
searched two ways and the rankings fused: by words (BM25 in memory, bot.knowledge.lexical, the
question's words joined by the documents' words nearest to them, bot.knowledge.expansion; or
the database's own full-text engine over `knowledge.max_memory_chunks`) and by meaning (the
chunks' embeddings, exact, in memory; bot.knowledge.index). See docs/knowledge-base.md.

    kb = KnowledgeBase.from_settings(engine, settings.knowledge)
    report = await kb.add(["docs/", "faq.pdf"], progress=on_file)
    passages = await kb.search("how do I reset a conversation?", k=3)

A changed file's document row and chunks (with their embeddings) are replaced in one
transaction, so a search never sees half a document; an unchanged file (same SHA-256) is
skipped. Files that cannot be read are reported, never raised. Database failures raise
StorageError. Parsing and embedding run in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from backends.base import estimate_tokens
from bot.errors import StorageError
from bot.knowledge import expansion
from bot.knowledge.embeddings import (
    Embedder,
    Vectors,
    embedder_from_settings,
    from_blobs,
    to_blob,
)
from bot.knowledge.index import ChunkIndex, ChunkPlace, Vocabulary
from bot.knowledge.ingest import (
    DEFAULT_MAX_CHUNKS,
    FileData,
    Found,
    Parsed,
    Unreachable,
    collect_files,
    given_source,
    normalize_source,
    parse_file,
    read_file,
)
from bot.knowledge.lexical import LexicalIndex
from bot.knowledge.loaders import LoaderError
from bot.knowledge.ranking import SectionHit, best_sections, fuse, moved_query
from bot.knowledge.rows import KnowledgeRows
from bot.knowledge.search import query_terms
from bot.knowledge.types import (
    AddReport,
    AnswerPolicy,
    Chunk,
    CountTokens,
    DocumentInfo,
    FileResult,
    Outcome,
    Passage,
    Progress,
    SearchOptions,
)
from bot.settings import KnowledgeSettings
from bot.text.storable import storable

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_FILE_BYTES = 50_000_000
# Chunks embedded per batch when back-filling vectors, and written per statement.
BACKFILL_BATCH = 1000
# After the embedding model fails (a served one down or refusing), semantic search is off for
# this long, then tried again (knowledge.embedding_retry_s).
EMBEDDER_RETRY_S = 30.0
_PARAGRAPH = re.compile(r"\n\s*\n")
MAX_PARTS = 8


def chunk_places(rows: Sequence[sa.Row[Any]]) -> builtins.list[ChunkPlace]:
    """Each chunk's place, in the worker thread: on the event loop, 60,000 chunks (a Markdown
    file of many short sections) stopped every conversation for 0.4 s."""
    return [ChunkPlace(r.id, r.document_id, r.ordinal, r.location, r[4]) for r in rows]


def _word_indexes(
    rows: Sequence[sa.Row[Any]],
) -> tuple[Vocabulary, LexicalIndex, builtins.list[str]]:
    """The typo vocabulary, the BM25 index and the words a question may be expanded with
    (bot.knowledge.expansion), all in the worker thread: each walks every distinct word, and
    on the event loop the expansion's list of 600,000 of them (a list of checksums) stopped
    every conversation for half a second."""
    lexical = LexicalIndex([(r.location, r.text) for r in rows])
    frequency = lexical.word_frequency
    return Vocabulary.of(frequency), lexical, expansion.vocabulary(frequency)


def embedding_text(chunk: Chunk) -> str:
    """What a chunk's vector is computed from: its heading path names its topic."""
    return f"{chunk.location}\n\n{chunk.text}" if chunk.location else chunk.text


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A file ready to be written: its bytes, chunks, their vectors, and the id of the
    document it replaces (None for a new one)."""

    file: FileData
    parsed: Parsed
    vectors: Vectors | None
    document_id: int | None
    collection: str = ""
    # The collection the document leaves for `collection`; None when it stays or is new.
    moved_from: str | None = None
    sample: bool = False  # loaded by Parley as the sample (bot.knowledge.sample)


def _folders(paths: Sequence[str | Path]) -> builtins.list[str]:
    """The folders among `paths`, as the prefix of the documents stored from them."""
    return [f"{normalize_source(p).rstrip('/')}/" for p in paths if Path(p).expanduser().is_dir()]


def _present(sources: Sequence[str]) -> builtins.list[bool]:
    """Whether each file may still be there: only a path that surely leads nowhere is gone
    (os.path.exists is False for a file in a folder this user may not search, too)."""
    return [_may_exist(source) for source in sources]


def _may_exist(source: str) -> bool:
    try:
        os.stat(source)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # no permission to look, a stale mount: kept
        return True
    return True


def _empty_subfolders(
    missing: Sequence[str], looked_in: tuple[str, ...], walked: Sequence[str]
) -> builtins.list[str]:
    """For each missing file, the deepest folder above it that is still there, where that is
    a subfolder of a folder looked in (not the folder itself) holding no file found now: a
    share not mounted on it, or a subfolder emptied. As prefixes ("/docs/share/")."""
    found: set[str] = set()
    for source in missing:
        top = next((f for f in looked_in if source.startswith(f)), None)
        if top is None:
            continue
        folder = Path(source).parent
        while f"{folder.as_posix().rstrip('/')}/" != top and not _is_dir(folder):
            folder = folder.parent
        prefix = f"{folder.as_posix().rstrip('/')}/"
        below = prefix != top and prefix.startswith(top)
        if below and not any(path.startswith(prefix) for path in walked):
            found.add(prefix)
    return sorted(found)


def _is_dir(folder: Path) -> bool:
    try:
        return folder.is_dir()
    except OSError:  # no permission to look, a stale mount: taken as there
        return True


class KnowledgeBase:
    """Shares the history's engine; it does not own it (the caller disposes of it). Without an
    embedder, search is full-text only."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        count_tokens: CountTokens = estimate_tokens,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_document_chunks: int = DEFAULT_MAX_CHUNKS,
        embedder: Embedder | None = None,
        options: SearchOptions | None = None,
        policy: AnswerPolicy | None = None,
        embedder_retry_s: float = EMBEDDER_RETRY_S,
    ) -> None:
        self._rows = KnowledgeRows(engine)
        self._count = count_tokens
        self._max_bytes = max_file_bytes
        self._max_chunks = max_document_chunks
        self._embedder = embedder
        self._embedder_retry_s = embedder_retry_s
        self._embedder_down_until: float | None = None  # None: the model answers
        self._embedder_misses = 0  # calls that got no vectors because the model failed
        self._embedder_trying = False  # a call tries the model again after an outage
        self._index_degraded = False  # built while the model failed: rebuilt once it is back
        self._options = options or SearchOptions()
        self.policy = policy or AnswerPolicy()
        self._index: ChunkIndex | None = None
        self._index_lock = asyncio.Lock()  # one rebuild at a time; the others wait for it

    @classmethod
    def from_settings(
        cls,
        engine: AsyncEngine,
        settings: KnowledgeSettings,
        *,
        count_tokens: CountTokens = estimate_tokens,
    ) -> KnowledgeBase:
        """The knowledge base as `[knowledge]` describes it; semantic search is off (with one
        log line) when `semantic` is false or the wordllama package is missing."""
        embedder = embedder_from_settings(settings)
        options = SearchOptions(
            semantic_weight=settings.semantic_weight,
            min_similarity=settings.min_similarity,
            max_memory_chunks=settings.max_memory_chunks,
        )
        return cls(
            engine,
            count_tokens=count_tokens,
            max_file_bytes=settings.max_file_mb * 1_000_000,
            max_document_chunks=settings.max_document_chunks,
            embedder=embedder,
            options=options,
            policy=AnswerPolicy(
                rerank=settings.rerank,
                rerank_candidates=settings.rerank_candidates,
                strict=settings.grounding == "strict",
            ),
            embedder_retry_s=settings.embedding_retry_s,
        )

    async def add(
        self,
        paths: Iterable[str | Path],
        *,
        progress: Progress | None = None,
        collection: str = "",
        sample: bool = False,
    ) -> AddReport:
        """Ingest files and folders (walked for supported files) into `collection` ("" : the
        default; a support site searches its own only), one file at a time, the
        next file read, parsed and embedded while the current one is written: the two halves
        use different resources (CPU in a worker thread, the database), so overlapping them
        cuts the time of a big folder by about a third. `sample`: Parley loads its sample
        knowledge base (bot.knowledge.sample); a file added otherwise is the operator's, even
        one that was loaded as the sample before."""
        paths = builtins.list(paths)  # read twice: walked, then its folders for files gone
        files = await asyncio.to_thread(collect_files, paths)
        report = AddReport()
        upcoming: asyncio.Task[_Prepared | FileResult] | None = None
        try:
            for done, found in enumerate(files, 1):
                current = upcoming or asyncio.create_task(self._prepare(found, collection, sample))
                upcoming = None
                if done < len(files):
                    upcoming = asyncio.create_task(self._prepare(files[done], collection, sample))
                result = await self._finish(await current)
                report.files.append(result)
                if progress is not None:
                    progress(done, len(files), result)
        finally:
            if upcoming is not None:  # an error or a cancellation: the look-ahead goes too
                upcoming.cancel()
                await asyncio.gather(upcoming, return_exceptions=True)
        report.removed, report.kept = await self._forget_gone(paths, files)
        return report

    async def _forget_gone(
        self, paths: Sequence[str | Path], files: Sequence[Found]
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Remove the documents stored from the folders among `paths` whose files are gone
        (deleted or renamed since): a folder added again is the folder as it is now. A
        renamed policy kept its old version, which search ranked first (a helper's review).
        Only a folder that is there is looked in, and only a file that is not is forgotten.

        A folder that holds no file to add now (a share not mounted, a folder emptied by
        mistake) forgets nothing: every document of it was removed, and the command ended
        well. Such folders are returned second, when they hold stored documents."""
        folders = await asyncio.to_thread(_folders, paths)
        if not folders:
            return [], []
        walked = [normalize_source(found.path) for found in files]
        empty = [f for f in folders if not any(source.startswith(f) for source in walked)]
        stored = await self._rows.documents(None)
        kept = [f for f in empty if any(d.source.startswith(f) for d in stored)]
        looked_in = tuple(f for f in folders if f not in empty)
        # Nor by a folder named with it: `/docs /docs/share`, the share not mounted.
        under = [
            d.source
            for d in stored
            if looked_in and d.source.startswith(looked_in) and not d.source.startswith(tuple(kept))
        ]
        present = await asyncio.to_thread(_present, under)
        missing = [s for s, there in zip(under, present, strict=True) if not there]
        # Nor by a subfolder of one that is there and holds no file now (`/docs` added, the
        # share mounted on /docs/share not mounted): kept and said, as a named folder is. A
        # subfolder that is gone itself was deleted or renamed: its documents go.
        empty_below = await asyncio.to_thread(_empty_subfolders, missing, looked_in, walked)
        kept += sorted({f for f in empty_below if f not in kept})
        gone = [s for s in missing if not s.startswith(tuple(empty_below))]
        for source in gone:
            await self._rows.remove(source)
        return gone, kept

    async def list(self, collection: str | None = None) -> builtins.list[DocumentInfo]:
        """The documents of `collection` ("": the default one), or of all when None."""
        return await self._rows.documents(collection)

    async def remove(self, source_or_prefix: str | Path) -> int:
        """Remove the document stored for this path, or every one under it if it names a
        folder; returns how many were removed."""
        return await self._rows.remove(source_or_prefix)

    async def remove_sample(self) -> int:
        """Remove the documents loaded as the sample if any other document is there."""
        return await self._rows.remove_sample()

    async def search(
        self, query: str, k: int = 3, *, collection: str = ""
    ) -> builtins.list[Passage]:
        """The k best passages for `query` in `collection` ("": the default one), at most one
        per section, best first; [] when nothing matches. Any text is a valid query."""
        # A lone surrogate (a JSON body can carry "\ud800") makes the embedding model raise,
        # which would turn semantic search off for every user.
        query = storable(query)
        terms = query_terms(query)
        if not terms or k < 1:
            return []
        index = await self._current_index()
        corrected = [c for c in map(index.vocabulary.correct, terms) if c is not None]
        candidates = self._options.candidates
        words = [*terms, *corrected]
        if index.lexical is not None:
            related = await self._related_words(words, index)
            weights = [1.0] * len(words) + [w for _, w in related]
            expanded = [*words, *(word for word, _ in related)]
            fulltext = index.best_words(expanded, candidates, collection, weights)
            # A passage found through related words alone counts only if it is also close
            # in meaning (below): an unrelated question's words have neighbours too.
            matched = index.holding(fulltext, words) if related else set(fulltext)
        else:
            fulltext = await self._rows.fulltext(words, candidates, collection)
            matched = set(fulltext)
        semantic, vector = await self._semantic(query, index, candidates, collection)
        fused = fuse([fulltext, [c for c, _ in semantic]], [1.0, self._options.semantic_weight])
        # Admission (below) is judged on the question's own vector: feedback moves it towards
        # whatever ranked first, so its similarities say nothing about relevance.
        close = {c for c, s in semantic if s >= self._options.min_similarity}
        if vector is not None and self._options.feedback_chunks > 0:
            top = [c for c, _ in fused[: self._options.feedback_chunks]]
            moved = moved_query(vector, index.centroid(top), self._options.feedback_weight)
            semantic = index.nearest(moved, candidates, collection)
            fused = fuse([fulltext, [c for c, _ in semantic]], [1.0, self._options.semantic_weight])
        # Every semantic neighbour may lift a full-text match, but one that matched no word
        # joins only when it is close enough: otherwise any question, however unrelated to
        # the documents, would get answers.
        admitted = matched | close
        fused = [(c, score) for c, score in fused if c in admitted]
        return await self._passages(best_sections(fused, index, k))

    async def is_empty(self) -> bool:
        return await self._rows.is_empty()

    async def _semantic(
        self, query: str, index: ChunkIndex, k: int, collection: str
    ) -> tuple[builtins.list[tuple[int, float]], Vectors | None]:
        """The k chunks nearest to `query` with their cosine similarity, best first, and the
        query's vector (None without semantic search)."""
        if index.vectors is None or self._embedder is None or self._options.semantic_weight <= 0:
            return [], None
        vectors = await self._embed([query])
        if vectors is None:
            return [], None
        return index.nearest(vectors[0], k, collection), vectors[0]

    async def _related_words(
        self, words: builtins.list[str], index: ChunkIndex
    ) -> builtins.list[tuple[str, float]]:
        """The documents' words close in meaning to the question's (bot.knowledge.expansion),
        with their weight in the full-text query."""
        options = self._options
        if options.expansion_weight <= 0 or index.related is None:
            return []
        vectors = await self._embed(words)
        if vectors is None:
            return []
        n, floor = options.expansion_words, options.expansion_min_similarity
        related = index.related.nearest(vectors, n, floor)
        return [(word, options.expansion_weight * sim) for word, sim in related]

    async def _passages(self, hits: Sequence[SectionHit]) -> builtins.list[Passage]:
        wanted = [chunk_id for hit in hits for chunk_id in hit.chunk_ids]
        if not wanted:
            return []
        rows = await self._rows.passage_rows(wanted)
        passages = []
        for hit in hits:
            found = [rows[i] for i in hit.chunk_ids if i in rows]  # a chunk may be gone since
            if found:
                text = "\n\n".join(row.text for row in found)
                first = found[0]
                passages.append(Passage(text, first.title, first.location, first.source, hit.score))
        return passages

    async def _current_index(self) -> ChunkIndex:
        """The in-memory index, rebuilt when the chunks changed (in this process or another),
        and once the embedding model answers again after it failed during the last build."""
        stamp = await self._rows.stamp()
        current = self._index
        if current is not None and not self._stale(stamp):
            return current
        # Stale only for want of the model: no rebuild for nothing while it still fails.
        if current is not None and current.stamp == stamp and await self._embed(["probe"]) is None:
            return current
        async with self._index_lock:
            if self._stale(stamp):
                self._index = await self._build_index(stamp)
            assert self._index is not None
            return self._index

    def _stale(self, stamp: tuple[object, ...]) -> bool:
        index = self._index
        if index is None or index.stamp != stamp:
            return True
        return self._index_degraded and self._embedder_up()

    async def _build_index(self, stamp: tuple[object, ...]) -> ChunkIndex:
        misses = self._embedder_misses
        index = await self._built_index(stamp)
        self._index_degraded = self._embedder_misses != misses
        return index

    async def _built_index(self, stamp: tuple[object, ...]) -> ChunkIndex:
        in_memory = await self._rows.chunk_count() <= self._options.max_memory_chunks
        rows = await self._rows.chunks(with_text=in_memory)
        places = await asyncio.to_thread(chunk_places, rows)
        if not in_memory:
            log.info(
                "knowledge base: over knowledge.max_memory_chunks (%d chunks); searching with "
                "the database's full-text engine only",
                self._options.max_memory_chunks,
            )
            return ChunkIndex(stamp, places)
        vocabulary, lexical, words = await asyncio.to_thread(_word_indexes, rows)
        vectors = None
        if self._embedder is not None and self._options.semantic_weight > 0:
            dim = await self._dim()
            vectors = None if dim is None else await self._vectors(rows, dim)
        index = ChunkIndex(stamp, places, vocabulary, lexical, vectors)
        if vectors is not None and self._options.title_vectors:
            await self._title_vectors(index)
        if vectors is not None and self._options.expansion_weight > 0:
            word_vectors = await self._embed(words)
            if word_vectors is not None:
                index.related = expansion.RelatedWords(words, word_vectors)
        if vectors is not None and self._options.part_vectors:
            await self._part_vectors(index, [r.text for r in rows])
        return index

    async def _part_vectors(self, index: ChunkIndex, texts: Sequence[str]) -> None:
        parts: builtins.list[str] = []
        starts: builtins.list[int] = []
        for text in texts:
            starts.append(len(parts))
            pieces = [p for p in _PARAGRAPH.split(text) if p.strip()][:MAX_PARTS]
            parts.extend(pieces or [text])
        vectors = await self._embed(parts)
        if vectors is not None:
            index.parts = vectors
            index.part_starts = np.array(starts, dtype=np.int64)

    async def _title_vectors(self, index: ChunkIndex) -> None:
        """Embeds each distinct section title once (kept in memory only: cheap to redo)."""
        titles = [p.location.rpartition(" > ")[2] for p in index.places]
        distinct = list(dict.fromkeys(titles))
        vectors = await self._embed(distinct)
        if vectors is not None:
            number = {title: n for n, title in enumerate(distinct)}
            index.titles = vectors
            index.title_of_row = np.fromiter((number[t] for t in titles), dtype=np.int64)

    async def _vectors(self, rows: Sequence[sa.Row[Any]], dim: int) -> Vectors | None:
        """Every row's vector; those missing (stored before 0006, or by a model of another
        size, or while the model was unavailable) are computed now and written back."""
        size = dim * 4
        missing = [r for r in rows if r.embedding is None or len(r.embedding) != size]
        computed: dict[int, bytes] = {}
        for start in range(0, len(missing), BACKFILL_BATCH):
            batch = missing[start : start + BACKFILL_BATCH]
            texts = [embedding_text(Chunk(r.location, r.text, 0)) for r in batch]
            vectors = await self._embed(texts)
            if vectors is None:
                return None
            written = {r.id: to_blob(v) for r, v in zip(batch, vectors, strict=True)}
            await self._write_back(written)
            computed.update(written)
        stored = [computed.get(r.id) or r.embedding for r in rows]
        return await asyncio.to_thread(from_blobs, stored, dim)

    async def _write_back(self, blobs: dict[int, bytes]) -> None:
        try:
            await self._rows.write_vectors(blobs)
        except StorageError as exc:  # the vectors still serve from memory; next start retries
            log.warning("knowledge base: could not store back-filled embeddings: %s", exc)

    async def _dim(self) -> int | None:
        """The model's dimension (a served model is asked once, in a worker thread); None
        when it cannot be had (semantic search is then off, as in _embed)."""
        embedder = self._embedder
        if embedder is None:
            return None
        # Maybe known without asking: only texts embedded say that the model answers again.
        return await self._ask_model(lambda: embedder.dim, answered=False)

    async def _embed(self, texts: builtins.list[str]) -> Vectors | None:
        """The texts' vectors; None when the model cannot run (semantic search is then off
        for knowledge.embedding_retry_s, with one log line an outage)."""
        embedder = self._embedder
        if embedder is None:
            return None
        return await self._ask_model(lambda: embedder.embed(texts), answered=True)

    async def _ask_model(self, call: Callable[[], T], *, answered: bool) -> T | None:
        """`call` in a worker thread; None while the model is out (counted as a miss) or when
        it fails now (then it is out for knowledge.embedding_retry_s). Once that time is up,
        one call tries the model again and the others go on without it meanwhile: every
        question asked until one failed tried it, and with a server that hangs each of them
        waited knowledge.embedding_timeout_s."""
        if not self._embedder_up():
            self._embedder_misses += 1
            return None
        # This call tries again; the others go on without the model until it answers or
        # fails, however long that takes (a window of embedding_retry_s let the next question
        # try too once a hung try outlasted it).
        trying = self._embedder_down_until is not None
        if trying:
            self._embedder_trying = True
        try:
            result = await asyncio.to_thread(call)
        except Exception as exc:  # an optional model failing must not take full-text search down
            self._embedder_failed(exc)
            return None
        except asyncio.CancelledError:  # the question went; its try may still hang: wait
            if trying:
                self._embedder_down_until = time.monotonic() + self._embedder_retry_s
            raise
        finally:
            if trying:
                self._embedder_trying = False
        if answered:
            self._embedder_answered()
        return result  # a size known without asking says nothing: the next call tries

    def _embedder_up(self) -> bool:
        until = self._embedder_down_until
        return until is None or (not self._embedder_trying and time.monotonic() >= until)

    def _embedder_failed(self, exc: Exception) -> None:
        self._embedder_misses += 1
        if self._embedder_down_until is None:
            log.warning(
                "knowledge base: embeddings unavailable (%s); full-text search only, trying "
                "again every %g s",
                exc,
                self._embedder_retry_s,
            )
        self._embedder_down_until = time.monotonic() + self._embedder_retry_s

    def _embedder_answered(self) -> None:
        if self._embedder_down_until is not None:
            self._embedder_down_until = None
            log.warning("knowledge base: embeddings available again; semantic search is back")

    async def _prepare(self, found: Found, collection: str, sample: bool) -> _Prepared | FileResult:
        """A file read, parsed and embedded, or its result when there is nothing to write."""
        path = found.path
        source = normalize_source(path)
        try:
            file = await asyncio.to_thread(read_file, path, self._max_bytes, found.folder)
            existing = await self._rows.existing(file.source)
            if existing is not None and existing[1:] == (file.sha256, collection, sample):
                return FileResult(source, Outcome.UNCHANGED)
            parsed = await asyncio.to_thread(
                parse_file, path, file.data, self._count, self._max_chunks
            )
        except LoaderError as exc:
            shown = given_source(path) if isinstance(exc, Unreachable) else source
            return FileResult(shown, Outcome.FAILED, reason=str(exc))
        vectors = await self._embed([embedding_text(c) for c in parsed.chunks])
        if existing is None:
            return _Prepared(file, parsed, vectors, None, collection, sample=sample)
        moved_from = existing[2] if existing[2] != collection else None
        return _Prepared(file, parsed, vectors, existing[0], collection, moved_from, sample)

    async def _loaded_elsewhere(self, prepared: _Prepared) -> bool:
        """Whether the document another process stored meanwhile is this very file, as the
        sample, in the same collection."""
        existing = await self._rows.existing(prepared.file.source)
        wanted = (prepared.file.sha256, prepared.collection, True)
        return existing is not None and existing[1:] == wanted

    async def _finish(self, prepared: _Prepared | FileResult) -> FileResult:
        if isinstance(prepared, FileResult):
            return prepared
        file, parsed = prepared.file, prepared.parsed
        blobs: builtins.list[bytes | None] = [None] * len(parsed.chunks)
        if prepared.vectors is not None:
            blobs = [to_blob(v) for v in prepared.vectors]
        try:
            await self._rows.store(
                file, parsed, blobs, prepared.document_id, prepared.collection, prepared.sample
            )
        except sa_exc.IntegrityError:
            if prepared.sample and await self._loaded_elsewhere(prepared):
                # Another worker starting together loaded the same sample file: nothing to
                # tell (it warned for every sample document). A `kb add` keeps its message.
                return FileResult(file.source, Outcome.UNCHANGED, collection=prepared.collection)
            reason = "added by another process at the same time; run again"
            return FileResult(file.source, Outcome.FAILED, reason=reason)
        outcome = Outcome.ADDED if prepared.document_id is None else Outcome.UPDATED
        return FileResult(
            file.source, outcome, chunks=len(parsed.chunks),
            moved_from=prepared.moved_from, collection=prepared.collection,
        )  # fmt: skip
