"""Semantic search with a real served embedding model: vLLM's server running all-MiniLM-L6-v2
(tests/fixtures_vllm.py: embedding_server), whose context is 256 tokens, shorter than many of
the knowledge base's chunks (up to 350)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.knowledge import KnowledgeBase
from bot.knowledge.embeddings import EmbeddingError, ServedEmbedder
from bot.settings import KnowledgeSettings
from bot.storage import migrate
from bot.storage.database import create_engine
from tests.crash_cluster import TcpProxy
from tests.fixtures_vllm import EMBEDDING_MODEL

DIM = 384  # all-MiniLM-L6-v2

# One long section (a chunk of about 330 of the model's tokens) among short ones.
RETRY_TEXT = " ".join(
    [
        "When the database connection is lost in the middle of a statement, the client",
        "reconnects and retries the statement once, provided it is safe to repeat: reads are",
        "always repeated, while writes are repeated only when they carry an idempotency key.",
    ]
    * 5
)
GUIDE = f"""# Guide

## Retries

{RETRY_TEXT}

## Backups

Take a nightly dump of the database with the dump tool and keep seven copies.

## Logging

Log lines are written as JSON to standard error, one object a line.
"""


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path}/kb.db"
    await migrate.upgrade(url)
    made = create_engine(url)
    try:
        yield made
    finally:
        await made.dispose()


def served_settings(base_url: str, **options: object) -> KnowledgeSettings:
    return KnowledgeSettings(
        embedding_base_url=f"{base_url}/v1",
        embedding_model=EMBEDDING_MODEL,
        embedding_timeout_s=120,
        **options,  # type: ignore[arg-type]
    )


async def stored_vector_sizes(engine: AsyncEngine) -> list[int | None]:
    async with engine.connect() as connection:
        rows = await connection.execute(sa.text("SELECT length(embedding) FROM kb_chunks"))
        return [row[0] for row in rows]


async def test_passages_longer_than_the_models_context_are_embedded(
    engine: AsyncEngine, tmp_path: Path, embedding_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "guide.md").write_text(GUIDE)
    kb = KnowledgeBase.from_settings(engine, served_settings(embedding_server))
    with caplog.at_level(logging.WARNING, logger="bot.knowledge"):
        report = await kb.add([tmp_path / "guide.md"])
        # No word in common with the section (stop words aside): found by meaning alone.
        found = await kb.search("what if the network goes away mid-query?")
    assert report.failed == []
    assert await stored_vector_sizes(engine) == [DIM * 4] * 3
    assert found and found[0].location == "Guide > Retries"
    assert "embeddings unavailable" not in caplog.text  # semantic search stayed on


async def test_a_text_the_server_refuses_costs_that_text_alone(embedding_server: str) -> None:
    """Without truncation the server refuses a text over the model's context (HTTP 400):
    the other texts of the batch keep their vectors, the refused one is similar to nothing."""
    served = ServedEmbedder(
        f"{embedding_server}/v1", EMBEDDING_MODEL, timeout_s=120, truncate=False
    )
    texts = ["nightly backups", "word " * 2000, "log lines as JSON"]
    vectors = await asyncio.to_thread(served.embed, texts)
    alone = await asyncio.to_thread(served.embed, [texts[0], texts[2]])
    assert vectors.shape == (3, DIM)
    assert np.allclose(vectors[[0, 2]], alone, atol=1e-5)
    assert not vectors[1].any()
    (query,) = await asyncio.to_thread(served.embed, ["word " * 2000])
    assert not query.any()  # one refused question: found by its words only
    with pytest.raises(EmbeddingError, match="refused every text"):
        await asyncio.to_thread(served.embed, ["word " * 2000, "term " * 2000])
    fresh = ServedEmbedder(f"{embedding_server}/v1", EMBEDDING_MODEL, truncate=False)
    with pytest.raises(EmbeddingError, match="refused every text"):  # its size still unknown
        await asyncio.to_thread(fresh.embed, ["word " * 2000])


async def test_truncation_embeds_the_start_of_a_long_text(embedding_server: str) -> None:
    served = ServedEmbedder(f"{embedding_server}/v1", EMBEDDING_MODEL, timeout_s=120)
    long, start = await asyncio.to_thread(
        served.embed, ["reconnect and retry " * 400, "reconnect and retry " * 60]
    )
    assert float(long @ start) > 0.99  # both cut at the model's 256 tokens


async def test_semantic_search_comes_back_after_the_server_was_unreachable(
    engine: AsyncEngine, tmp_path: Path, embedding_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage of the embeddings server turns semantic search off for a while, not for the
    life of the process: a document added meanwhile is stored without vectors, and once the
    server answers again they are back-filled and questions are found by meaning again."""
    target = urlsplit(embedding_server)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    await proxy.start()
    settings = served_settings(f"http://127.0.0.1:{proxy.port}", embedding_retry_s=0.01)
    kb = KnowledgeBase.from_settings(engine, settings)
    question = "what if the network goes away mid-query?"
    try:
        (tmp_path / "other.md").write_text("# Other\n\nThe dump tool writes nightly copies.\n")
        assert (await kb.add([tmp_path / "other.md"])).failed == []
        proxy.cut(3600)
        (tmp_path / "guide.md").write_text(GUIDE)
        with caplog.at_level(logging.WARNING, logger="bot.knowledge"):
            assert (await kb.add([tmp_path / "guide.md"])).failed == []
            during = await kb.search(question)
            proxy.cut(0)
            await asyncio.sleep(0.05)  # past knowledge.embedding_retry_s
            after = await kb.search(question)
    finally:
        await proxy.aclose()
    assert "Guide > Retries" not in [p.location for p in during]  # words alone: not found
    assert after and after[0].location == "Guide > Retries"
    assert await stored_vector_sizes(engine) == [DIM * 4] * 4  # back-filled
    assert caplog.text.count("embeddings unavailable") == 1  # one line an outage
    assert "embeddings available again" in caplog.text
