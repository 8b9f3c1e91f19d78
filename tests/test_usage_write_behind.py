"""Token usage written behind (bot.storage.usage): many turns' usage in one statement, read back
exactly, and kept through a failed write until the next one succeeds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.errors import StorageError
from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.models import TokenUsageRow
from bot.storage.usage import Spent, Subject, UsageLog

DAY = date(2026, 12, 2)
ADA, SITE = Subject("user", "test:ada"), Subject("site", "acme")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path}/usage.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    yield engine
    await engine.dispose()


@contextmanager
def writes(engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def on_statement(_c: Any, _cu: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_statement)


async def test_many_turns_are_one_write_and_read_back_exactly(engine: AsyncEngine) -> None:
    usage = UsageLog(engine, flush_s=3600)
    with writes(engine) as inserts:
        for n in range(1, 21):  # 20 turns of one visitor on one site
            await usage.add(DAY, [ADA, SITE], Spent(10 * n, n, turns=1))
        assert inserts == []  # nothing written per turn
        assert await usage.tokens(DAY, ADA) == sum(11 * n for n in range(1, 21))
        assert len(inserts) == 1  # both subjects, 20 turns: one statement
    lines = await usage.report(DAY)
    assert {(line.subject, line.spent.turns) for line in lines} == {(ADA, 20), (SITE, 20)}
    await usage.aclose()


async def test_a_failed_write_keeps_its_sums_for_the_next(engine: AsyncEngine) -> None:
    usage = UsageLog(engine, flush_s=3600)
    await usage.add(DAY, [ADA], Spent(100, 20, turns=1))
    table = sa.Table(TokenUsageRow.__tablename__, sa.MetaData())
    async with engine.begin() as conn:  # the table is gone: the write fails
        await conn.execute(sa.text(f"ALTER TABLE {table.name} RENAME TO usage_away"))
    with pytest.raises(StorageError):
        await usage.flush()
    await usage.add(DAY, [ADA], Spent(1, 2, turns=1))  # a turn meanwhile
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"ALTER TABLE usage_away RENAME TO {table.name}"))
    assert await usage.tokens(DAY, ADA) == 123
    (line,) = await usage.report(DAY)
    assert line.spent == Spent(101, 22, turns=2)
    await usage.aclose()


async def test_closing_writes_what_is_left(engine: AsyncEngine) -> None:
    usage = UsageLog(engine, flush_s=3600)
    await usage.add(DAY, [SITE], Spent(5, 5, refused=1))
    await usage.aclose()
    async with engine.connect() as conn:
        found = (await conn.execute(sa.select(TokenUsageRow.refused))).scalars().all()
    assert found == [1]
