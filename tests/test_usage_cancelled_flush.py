"""A usage flush cancelled after its statement ran is never written twice (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import migrate
from bot.storage.database import create_engine, create_relaxed_engine
from bot.storage.usage import Spent, Subject, UsageLog
from tests import services

DAY = date(2026, 12, 2)
ADA = Subject("user", "test:ada")


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/usage.db"
    else:
        url = services.create_postgres_database()
    await migrate.upgrade(url)
    durable = create_engine(url, pool_size=2)
    relaxed = create_relaxed_engine(durable, pool_size=2)  # what bot/app.py hands UsageLog
    yield relaxed
    await relaxed.dispose()
    await durable.dispose()
    if request.param == "postgresql":
        services.drop_postgres_database(url)


async def test_a_flush_cancelled_after_its_write_is_not_counted_twice(
    engine: AsyncEngine,
) -> None:
    usage = UsageLog(engine, flush_s=3600)
    await usage.add(DAY, [ADA], Spent(100, 0, turns=1))
    flushing = asyncio.create_task(usage.flush())

    def cancel_once_written(*_: Any) -> None:  # e.g. aclose() cancelling the flusher task
        event.remove(engine.sync_engine, "after_cursor_execute", cancel_once_written)
        flushing.cancel()

    event.listen(engine.sync_engine, "after_cursor_execute", cancel_once_written)
    await asyncio.gather(flushing, return_exceptions=True)
    await usage.aclose()  # writes "what is left"
    assert await usage.tokens(DAY, ADA) == 100
