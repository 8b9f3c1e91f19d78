"""Query expansion (bot.knowledge.expansion): a question's words are joined by the documents'
words nearest to them in the embedding model's eyes, at a lower weight. On real passages (the
Starlette docs of the development set): paraphrases that share no word with their answer now
find it, and a passage found through a related word alone still needs to be close in meaning.
Then the parts: weighted BM25 terms, the vocabulary, the nearest words."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.kb_bench import DEV_DIR
from bot.knowledge import KnowledgeBase
from bot.knowledge.embeddings import WordLlamaEmbedder
from bot.knowledge.expansion import RelatedWords, vocabulary
from bot.knowledge.lexical import LexicalIndex
from bot.knowledge.types import SearchOptions
from bot.storage import migrate
from bot.storage.database import create_engine

STARLETTE_DOCS = DEV_DIR / "starlette" / "docs"
WITHOUT_EXPANSION = SearchOptions(expansion_weight=0)


@pytest.fixture(scope="module")
def wordllama(tmp_path_factory: pytest.TempPathFactory) -> WordLlamaEmbedder:
    return WordLlamaEmbedder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def starlette_url(tmp_path_factory: pytest.TempPathFactory, wordllama: WordLlamaEmbedder) -> str:
    """A SQLite knowledge base holding the Starlette docs, made once for this module (in a
    loop of its own: the tests' loops are per test)."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('kb')}/kb.db"

    async def ingest() -> None:
        await migrate.upgrade(url)
        engine = create_engine(url)
        try:
            report = await KnowledgeBase(engine, embedder=wordllama).add([STARLETTE_DOCS])
            assert not report.failed
        finally:
            await engine.dispose()

    asyncio.run(ingest())
    return url


@pytest.fixture
async def starlette(starlette_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(starlette_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def locations(kb: KnowledgeBase, question: str) -> list[str]:
    return [p.location for p in await kb.search(question, k=3)]


@pytest.mark.parametrize(
    ("question", "section"),
    [
        # "size" -> "large", "larger": the section compresses "large" chunks, at the cost of
        # "larger file sizes".
        ("shrink the size of what the server sends back", "GZipMiddleware"),
        # "page" -> "homepage", "signed" -> "signature", "signup": the section's examples.
        ("only let signed in people open a page", "Permissions"),
    ],
)
async def test_a_paraphrase_finds_its_section_through_the_documents_words(
    starlette: AsyncEngine, wordllama: WordLlamaEmbedder, question: str, section: str
) -> None:
    plain = KnowledgeBase(starlette, embedder=wordllama, options=WITHOUT_EXPANSION)
    expanded = KnowledgeBase(starlette, embedder=wordllama)
    assert section not in await locations(plain, question)
    assert section in await locations(expanded, question)


async def test_a_passage_found_through_a_related_word_alone_must_be_close_in_meaning(
    starlette: AsyncEngine, wordllama: WordLlamaEmbedder
) -> None:
    """ "encrypted" expands to "encryption", "secure", "password"; with a similarity floor no
    passage can reach, only passages holding the question's own word are answers."""
    never_close = SearchOptions(min_similarity=1.0)
    kb = KnowledgeBase(starlette, embedder=wordllama, options=never_close)
    found = await kb.search("encrypted", k=5)
    assert found
    assert all("encrypt" in f"{p.location} {p.text}".lower() for p in found)
    closer = KnowledgeBase(starlette, embedder=wordllama)  # the default floor admits more
    assert len(await closer.search("encrypted", k=5)) > len(found)


def test_a_term_s_weight_scales_its_share_of_the_score() -> None:
    index = LexicalIndex([("", "alpha filler"), ("", "gamma filler")])
    scores = dict(index.search(["alpha", "gamma"], 2, weights=[1.0, 0.5]))
    assert scores[0] == pytest.approx(2 * scores[1])
    # Two forms of one stem count once, with the larger weight.
    assert index.search(["alpha", "alphas"], 2, weights=[0.5, 1.0]) == index.search(["alpha"], 2)


def test_holding_marks_the_rows_with_any_form_of_a_word() -> None:
    index = LexicalIndex([("Migrations", "run them"), ("", "migrating data"), ("", "other")])
    assert index.holding(["migration"]).tolist() == [True, True, False]


def test_the_vocabulary_keeps_words_seen_twice_most_frequent_first() -> None:
    frequency = Counter({"compression": 3, "size": 7, "gz": 9, "2024": 5, "typoo": 1})
    assert vocabulary(frequency) == ["size", "compression"]


def test_nearest_words_above_the_floor_each_once_with_its_best_similarity() -> None:
    axes = np.eye(3, dtype=np.float32)
    between = np.array([0.8, 0.6, 0.0], dtype=np.float32)  # unit length
    related = RelatedWords(["first", "second", "third"], axes)
    found = dict(related.nearest(np.stack([between, axes[0]]), n=2, floor=0.7))
    assert found == {"first": pytest.approx(1.0)}  # "second" (0.6) is below the floor
    assert dict(related.nearest(axes[2:], n=1, floor=0.0)) == {"third": pytest.approx(1.0)}
    assert RelatedWords([], np.zeros((0, 3), dtype=np.float32)).nearest(axes, 2, 0.0) == []
