"""Two workers starting together on one SQLite file both load the sample knowledge base: the
one that loses the race for a document found it "added by another process at the same time;
run again" and warned so for every sample document, though the other process had just loaded
the same file (an operator's report). Now the sample's loser is quiet; a `parley kb add` that
loses keeps its message (its operator may have meant other content)."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from bot.knowledge import KnowledgeBase, load_sample_if_empty
from bot.knowledge.types import Outcome
from bot.settings import KnowledgeSettings
from bot.storage import migrate
from bot.storage.database import create_engine

RACED = "added by another process at the same time"


class InStepEmbedder:
    """An embedder that lets a call through only once another store's call for the same file
    arrived: both stores then looked for the document (and found none) before either writes
    it, the race of two workers starting together, every time."""

    dim = 8

    def __init__(self) -> None:
        self.together = threading.Barrier(2, timeout=30)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.together.wait()
        vectors = np.ones((len(texts), self.dim), dtype=np.float32)
        unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return unit


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/kb.db"
    await migrate.upgrade(url)
    return url


@pytest.fixture
def guide(tmp_path: Path) -> Path:
    folder = tmp_path / "guide"
    folder.mkdir()
    (folder / "intro.md").write_text("# Intro\n\nParley answers questions.\n")
    return folder


async def test_two_workers_loading_the_sample_together_are_quiet(
    sqlite_url: str, guide: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = InStepEmbedder()
    first, second = create_engine(sqlite_url), create_engine(sqlite_url)
    settings = KnowledgeSettings(sample_dir=str(guide), semantic=False)
    try:
        kbs = [KnowledgeBase(e, embedder=embedder) for e in (first, second)]
        with caplog.at_level(logging.INFO, logger="bot.knowledge"):
            reports = await asyncio.gather(*(load_sample_if_empty(kb, settings) for kb in kbs))
        documents = await kbs[0].list()
    finally:
        await first.dispose()
        await second.dispose()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == []
    outcomes = sorted(f.outcome.name for r in reports if r for f in r.files)
    assert outcomes == [Outcome.ADDED.name, Outcome.UNCHANGED.name]
    assert [d.source.rsplit("/", 1)[-1] for d in documents] == ["intro.md"]


async def test_a_kb_add_that_loses_the_race_keeps_its_message(sqlite_url: str, guide: Path) -> None:
    embedder = InStepEmbedder()
    first, second = create_engine(sqlite_url), create_engine(sqlite_url)
    try:
        kbs = [KnowledgeBase(e, embedder=embedder) for e in (first, second)]
        reports = await asyncio.gather(*(kb.add([guide]) for kb in kbs))
    finally:
        await first.dispose()
        await second.dispose()
    reasons = [f.reason for r in reports for f in r.failed]
    assert len(reasons) == 1 and RACED in reasons[0]
