"""Retrieval on real SQLite and PostgreSQL: one passage per section, the number of passages
asked for, words that matter in technical text, rare words weighing more (in memory and on
each database's own engine), typos, semantic search with the bundled WordLlama model, vectors
stored at ingest and back-filled, symlinks, and the sample giving way to the operator's
documents."""

from __future__ import annotations

import asyncio
import random
import string
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import Stemmer
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.knowledge import KnowledgeBase, expansion, lexical, load_sample_if_empty
from bot.knowledge import store as kb_store
from bot.knowledge.embeddings import EmbeddingError, Vectors, WordLlamaEmbedder
from bot.knowledge.lexical import STEM_BATCH
from bot.knowledge.sample import remove_sample_if_superseded
from bot.knowledge.types import FileResult, Outcome, SearchOptions
from bot.settings import KnowledgeSettings
from bot.storage import migrate
from bot.storage.database import create_engine

DOCS = Path(__file__).resolve().parents[1] / "docs"
IN_MEMORY = SearchOptions(semantic_weight=0)
DATABASE_FTS = SearchOptions(semantic_weight=0, max_memory_chunks=0)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> WordLlamaEmbedder:
    return WordLlamaEmbedder(tmp_path_factory.mktemp("models"))


@pytest.fixture
async def engine_url(database_url: str) -> str:
    await migrate.upgrade(database_url)  # the SQLite one arrives unmigrated
    return database_url


@pytest.fixture
async def engine(engine_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_engine(engine_url)
    try:
        yield made
    finally:
        await made.dispose()


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


LONG_SECTION = "\n\n".join(
    f"Paragraph {n} about configuring the widget cache, with enough words to fill a chunk "
    + "of its own when paragraphs are packed. " * 12
    for n in range(8)
)


@pytest.mark.parametrize("options", [IN_MEMORY, DATABASE_FTS], ids=["memory", "database"])
async def test_one_passage_per_section_and_k_passages(
    engine: AsyncEngine, tmp_path: Path, options: SearchOptions
) -> None:
    write(
        tmp_path,
        "guide.md",
        f"""# Guide

## Widget cache

{LONG_SECTION}

## Widget sizes

The widget comes in three sizes.

## Widget colours

A widget is blue.

## Widget history

The first widget was made in 1901.
""",
    )
    kb = KnowledgeBase(engine, options=options)
    await kb.add([tmp_path])
    passages = await kb.search("widget cache", k=3)
    locations = [p.location for p in passages]
    assert len(passages) == 3 and len(set(locations)) == 3, locations
    assert locations[0] == "Guide > Widget cache"
    # The section's neighbouring matching chunks are merged into its one passage.
    assert passages[0].text.count("Paragraph") > 1
    assert len(await kb.search("widget", k=4)) == 4
    assert passages[0].score >= passages[1].score >= passages[2].score


@pytest.mark.parametrize("options", [IN_MEMORY, DATABASE_FTS], ids=["memory", "database"])
async def test_rare_words_and_technical_stop_words_rank(
    engine: AsyncEngine, tmp_path: Path, options: SearchOptions
) -> None:
    sections = "\n\n".join(
        f"## Query form {n}\n\nA query clause of the common kind, number {n}." for n in range(6)
    )
    write(
        tmp_path,
        "sql.md",
        f"""# SQL

{sections}

## Recursive queries

A zephyr query walks a tree: the rare word decides.

## The WITH clause

Write WITH before the query to name a subquery.
""",
    )
    kb = KnowledgeBase(engine, options=options)
    await kb.add([tmp_path])
    assert (await kb.search("query clause zephyr"))[0].location == "SQL > Recursive queries"
    assert (await kb.search("WITH clause"))[0].location == "SQL > The WITH clause"


async def test_typos_are_corrected_to_known_words(engine: AsyncEngine, tmp_path: Path) -> None:
    write(
        tmp_path, "zoo.md", "# Zoo\n\n## Cats\n\nThe ocelot sleeps.\n\n## Dogs\n\nThe dingo runs.\n"
    )
    kb = KnowledgeBase(engine, options=IN_MEMORY)
    await kb.add([tmp_path])
    for typo in ("ocelto", "oclot", "ocellot", "ocelit"):
        assert [p.location for p in await kb.search(typo)] == ["Zoo > Cats"], typo
    assert await kb.search("wombat") == []


async def test_semantic_search_finds_a_paraphrase_and_nothing_for_unrelated_text(
    engine: AsyncEngine, tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    write(
        tmp_path,
        "db.md",
        """# Database

## Retries

When the connection to the server is lost, the statement is sent again automatically after
reconnecting, at most three times.

## Backups

Copy the data folder every night with the dump tool.

## Logging

Each statement is written to the log with its duration.
""",
    )
    full_text = KnowledgeBase(engine, options=IN_MEMORY)
    hybrid = KnowledgeBase(engine, embedder=embedder)
    await hybrid.add([tmp_path])
    question = "try once more if disconnected"
    assert await full_text.search(question) == []  # no word in common
    assert (await hybrid.search(question))[0].location == "Database > Retries"
    assert await hybrid.search("banana smoothie recipe") == []


async def test_vectors_are_stored_at_ingest_and_back_filled(
    engine: AsyncEngine, tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    write(tmp_path, "a.md", "# A\n\n## One\n\nFirst text.\n\n## Two\n\nSecond text.\n")
    await KnowledgeBase(engine, embedder=embedder).add([tmp_path])
    missing = sa.text("SELECT count(*) FROM kb_chunks WHERE embedding IS NULL")
    async with engine.begin() as conn:
        assert await conn.scalar(missing) == 0
        assert await conn.scalar(sa.text("SELECT min(length(embedding)) FROM kb_chunks")) == 1024
        await conn.execute(sa.text("UPDATE kb_chunks SET embedding = NULL"))
    # Full text only: nothing is computed. With the model: the first search back-fills.
    await KnowledgeBase(engine, options=IN_MEMORY).search("text")
    async with engine.connect() as conn:
        assert await conn.scalar(missing) == 2
    assert await KnowledgeBase(engine, embedder=embedder).search("first")
    async with engine.connect() as conn:
        assert await conn.scalar(missing) == 0


async def test_another_process_s_changes_are_seen(engine: AsyncEngine, tmp_path: Path) -> None:
    reader, writer = KnowledgeBase(engine), KnowledgeBase(engine)
    doc = write(tmp_path, "a.md", "# A\n\nThe quokka.\n")
    await writer.add([doc])
    assert await reader.search("quokka")
    doc.write_text("# A\n\nThe numbat.\n")
    await writer.add([doc])
    assert await reader.search("quokka") == []
    assert await reader.search("numbat")
    await writer.remove(doc)
    assert await reader.search("numbat") == []


async def test_symlinks_out_of_a_folder_are_not_ingested_and_removal_is_complete(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    secret = write(tmp_path / "outside", "secret.md", "# Secret\n\nThe password is aardvark.\n")
    folder = tmp_path / "kb"
    write(folder, "own.md", "# Own\n\nThe armadillo.\n")
    (folder / "leak.md").symlink_to(secret)
    kb = KnowledgeBase(engine)
    report = await kb.add([folder])
    assert [Path(f.source).name for f in report.files] == ["own.md"]
    assert await kb.search("aardvark") == []
    assert await kb.remove(folder) == 1
    assert await kb.is_empty()


@pytest.mark.parametrize("swapped", ["file", "folder"])
async def test_a_file_replaced_by_a_link_out_after_the_walk_is_not_read(
    engine: AsyncEngine, tmp_path: Path, swapped: str
) -> None:
    """The walk looks at every file of a folder before the first is read (minutes before the
    last on a big one): anyone who may write in the folder could replace a file it took,
    or the folder it is in, by a link to a file they may not read, which was then read and
    answered questions. Each file is checked again as it is opened."""
    secret = write(tmp_path / "home", "credentials.md", "# Keys\n\nThe key is aardvark.\n")
    folder = tmp_path / "kb"
    for name in ("a.md", "b.md", "c.md"):
        write(folder, name, f"# {name}\n\nThe armadillo {name}.\n")
    write(folder / "sub", "c.md", "# Sub\n\nThe pangolin.\n")

    def swap(done: int, total: int, result: FileResult) -> None:
        # After the first file, while the second is read: the last one is not opened yet.
        if done == 1 and swapped == "file":
            (folder / "sub" / "c.md").unlink()
            (folder / "sub" / "c.md").symlink_to(secret)
        elif done == 1:
            (folder / "sub").rename(folder / "old")
            (folder / "sub").symlink_to(secret.parent, target_is_directory=True)
            (secret.parent / "c.md").symlink_to(secret)

    kb = KnowledgeBase(engine, options=IN_MEMORY)
    report = await kb.add([folder], progress=swap)
    assert [f.outcome for f in report.files] == [Outcome.ADDED] * 3 + [Outcome.FAILED]
    assert report.files[-1].reason.startswith("replaced since the folder was walked")
    assert await kb.search("aardvark") == []
    assert all(d.source.startswith(f"{folder.resolve()}/") for d in await kb.list())


class HangingModel:
    """An embedding model that answers, then fails (`failing`), then hangs (`hanging`) until
    `release` is set, as a served one whose server stopped answering does."""

    dim = 4

    def __init__(self) -> None:
        self.failing = self.hanging = False
        self.release = threading.Event()
        self.hung = 0  # calls that hung

    def embed(self, texts: list[str]) -> Vectors:
        if self.hanging:
            self.hung += 1
            self.release.wait(60)
            raise EmbeddingError("embeddings server unreachable: ReadTimeout")
        if self.failing:
            raise EmbeddingError("embeddings server unreachable: ConnectError")
        return np.full((len(texts), self.dim), 0.5, dtype=np.float32)


async def test_after_an_outage_one_question_tries_the_model_again_not_every_one(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Once knowledge.embedding_retry_s had passed, every question tried the model again
    until one of them failed: with a server that hangs, every question asked meanwhile
    waited knowledge.embedding_timeout_s (30 s), the users' questions in turn. One question
    tries it; the others go on with full text alone while it does."""
    model = HangingModel()
    kb = KnowledgeBase(engine, embedder=model, embedder_retry_s=0.5)
    try:
        await _hangs_once_its_outage_is_over(kb, model, tmp_path, 0.5)
        asked = [asyncio.create_task(kb.search("armadillo")) for _ in range(5)]
        answered = []
        for each in asyncio.as_completed(asked, timeout=10):
            answered.append(await each)
            if len(answered) == 4:
                break
        assert model.hung == 1 and all(answered)
    finally:
        model.release.set()
    assert await asyncio.gather(*asked)


async def _hangs_once_its_outage_is_over(
    kb: KnowledgeBase, model: HangingModel, tmp_path: Path, retry_s: float
) -> None:
    """A document searched with the model, then the model failing (out for `retry_s`), then
    hanging; returns once `retry_s` is over, when the next search tries the model again."""
    await kb.add([write(tmp_path, "a.md", "# Animals\n\nThe armadillo digs.\n")])
    assert await kb.search("armadillo")
    model.failing = True
    assert await kb.search("armadillo")  # the model fails: out for retry_s
    model.hanging = True
    await asyncio.sleep(retry_s + 0.1)  # past knowledge.embedding_retry_s


class TryingModel(HangingModel):
    """A HangingModel that tells when a call has begun to hang."""

    def __init__(self) -> None:
        super().__init__()
        self.trying = threading.Event()

    def embed(self, texts: list[str]) -> Vectors:
        if self.hanging:
            self.trying.set()
        return super().embed(texts)


async def test_a_try_that_outlasts_the_retry_window_is_still_the_only_one(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The question that tries the model again shut the window for the others for
    knowledge.embedding_retry_s only: a try that hung longer (a timeout above the retry
    time, a server that trickles its answer) let the next question try too, and hang. While
    one tries, the others go on with full text alone, however long it takes."""
    model = TryingModel()
    kb = KnowledgeBase(engine, embedder=model, embedder_retry_s=0.2)
    trying = None
    try:
        await _hangs_once_its_outage_is_over(kb, model, tmp_path, 0.2)
        trying = asyncio.create_task(kb.search("armadillo"))
        await asyncio.to_thread(model.trying.wait, 10)  # the try has begun, and hangs
        await asyncio.sleep(0.3)  # the try outlasts knowledge.embedding_retry_s
        later = asyncio.create_task(kb.search("armadillo"))
        done, _ = await asyncio.wait({later}, timeout=10)
        assert done and later.result() and model.hung == 1
    finally:
        model.release.set()
    assert trying is not None and await trying


async def test_rebuilding_the_index_of_many_distinct_words_leaves_the_event_loop_free(
    embedder: WordLlamaEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index is rebuilt in a worker thread, but PyStemmer kept the GIL while it stemmed
    every distinct word in one call, and the words a question may be expanded with, and each
    chunk's place, were listed on the event loop: a list of 300,000 identifiers (each twice)
    stopped every conversation of the worker for 0.7 s, 600,000 for 1.2 s (a helper's
    review). Now each walk over every word or chunk runs off the event loop's thread, and the
    stemmer is given at most STEM_BATCH words a call (the GIL is let go between calls)."""
    calls: list[tuple[int, bool]] = []  # (words in the call, on the event loop's thread)
    loop_thread = threading.get_ident()

    class Counted(Stemmer.Stemmer):  # PyStemmer's public class, its calls counted
        def stemWords(self, words: list[str]) -> list[str]:
            calls.append((len(words), threading.get_ident() == loop_thread))
            return super().stemWords(words)

    off_loop: dict[str, bool] = {}
    real_vocabulary, real_places = expansion.vocabulary, kb_store.chunk_places

    def vocabulary(frequency: object) -> list[str]:
        off_loop["related words"] = threading.get_ident() != loop_thread
        return real_vocabulary(frequency)  # type: ignore[arg-type]

    def places(rows: object) -> object:
        off_loop["places"] = threading.get_ident() != loop_thread
        return real_places(rows)  # type: ignore[arg-type]

    monkeypatch.setattr(lexical.Stemmer, "Stemmer", Counted)
    monkeypatch.setattr(expansion, "vocabulary", vocabulary)
    monkeypatch.setattr(kb_store, "chunk_places", places)
    url = f"sqlite+aiosqlite:///{tmp_path}/kb.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    rnd = random.Random(7)
    ids = ["".join(rnd.choices(string.ascii_lowercase, k=9)) for _ in range(3 * STEM_BATCH)]
    write(tmp_path / "kb", "ids.txt", " ".join(ids + ids))
    kb = KnowledgeBase(engine, embedder=embedder)
    try:
        await kb.add([tmp_path / "kb"])
        calls.clear()
        assert await kb.search(ids[5]) != []  # the first question rebuilds the index
    finally:
        await engine.dispose()
    building = [n for n, on_loop in calls if n > 100]  # the rebuild's, not a question's
    assert building and max(building) <= STEM_BATCH and sum(building) >= len(set(ids))
    assert not any(on_loop for n, on_loop in calls if n > 100)
    assert off_loop == {"related words": True, "places": True}


async def test_the_sample_gives_way_to_the_operator_s_documents(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    kb = KnowledgeBase(engine, options=IN_MEMORY)
    settings = KnowledgeSettings(sample_dir=str(DOCS))
    assert await load_sample_if_empty(kb, settings) is not None
    assert await remove_sample_if_superseded(kb) == 0  # only the sample: it stays
    await kb.add([write(tmp_path, "faq.md", "# FAQ\n\nOur product ships on Mondays.\n")])
    assert await remove_sample_if_superseded(kb) > 0
    assert [Path(d.source).name for d in await kb.list()] == ["faq.md"]
    assert await load_sample_if_empty(kb, settings) is None
    assert [Path(d.source).name for d in await kb.list()] == ["faq.md"]


async def test_migration_0006_round_trip_keeps_search_working(engine_url: str) -> None:
    await migrate.downgrade(engine_url, "0005")
    await migrate.upgrade(engine_url)
    assert await migrate.current(engine_url) == migrate.head()
