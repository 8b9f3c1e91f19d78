"""A support site's knowledge-base collection: documents ingested for one site are never
found (so never cited) for another, nor for the default collection; on the in-memory index
and on the database's own full-text engine, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.knowledge.store import KnowledgeBase
from bot.knowledge.types import Outcome, SearchOptions
from bot.storage import migrate
from bot.storage.database import create_engine

SHOP = "# Returns\n\nShop orders can be returned within thirty days for a full refund.\n"
BLOG = "# Returns\n\nBlog subscriptions are returned by cancelling before the renewal date.\n"


@pytest.mark.parametrize("max_memory_chunks", [100_000, 0], ids=["memory", "database"])
async def test_a_collection_finds_only_its_own_documents(
    database_url: str, tmp_path: Path, max_memory_chunks: int
) -> None:
    await migrate.upgrade(database_url)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "returns.md").write_text(SHOP)
    (tmp_path / "blog").mkdir()
    (tmp_path / "blog" / "returns.md").write_text(BLOG)
    engine = create_engine(database_url)
    try:
        kb = KnowledgeBase(engine, options=SearchOptions(max_memory_chunks=max_memory_chunks))
        await kb.add([tmp_path / "shop"], collection="shop")
        await kb.add([tmp_path / "blog"])
        shop = await kb.search("how are returns handled", collection="shop")
        default = await kb.search("how are returns handled")
        nowhere = await kb.search("how are returns handled", collection="other")
        # Moving a document to another collection is a change, not "unchanged".
        report = await kb.add([tmp_path / "blog"], collection="blog")
        moved = await kb.search("returns", collection="blog")
    finally:
        await engine.dispose()
    assert [p.source for p in shop] == [str(tmp_path / "shop" / "returns.md")]
    assert "Shop orders" in shop[0].text
    assert [p.source for p in default] == [str(tmp_path / "blog" / "returns.md")]
    assert nowhere == []
    assert report.count(Outcome.UPDATED) == 1
    assert [p.source for p in moved] == [str(tmp_path / "blog" / "returns.md")]
