"""Daily token usage in SQL (table token_usage): written once at the end of each turn that
asked the model or was refused by a budget, read by `parley usage` and by the budgets when
their shared counter has to be rebuilt (a new day, or Redis restarted empty).

Writes are upserts that add to the row (INSERT ... ON CONFLICT DO UPDATE, the same SQL on
SQLite and PostgreSQL), so any number of workers can record the same user's turns at once.
Every database failure raises StorageError.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.storage.database import connection
from bot.storage.models import TokenUsageRow

_t = TokenUsageRow


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a budget counts: scope "user" ("PLATFORM:ID") or "site" (a support site's name)."""

    scope: str
    name: str


@dataclass(frozen=True, slots=True)
class Spent:
    """What one turn adds to each of its subjects' rows."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: int = 0
    refused: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageLine:
    day: date
    subject: Subject
    spent: Spent


class UsageLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        backend = engine.url.get_backend_name()
        insert = postgresql.insert if backend == "postgresql" else sqlite.insert
        # Built once with its values as parameters, so SQLAlchemy compiles it once (a
        # statement built per call, with its values in it, is compiled at every turn).
        table = cast(sa.Table, _t.__table__)
        stmt = insert(table)
        added = {name: table.c[name] + stmt.excluded[name] for name in _COUNTS}
        self._add = stmt.on_conflict_do_update(
            index_elements=["day", "scope", "subject"],
            set_={**added, "updated_at": sa.func.now()},
        )

    async def add(self, day: date, subjects: Sequence[Subject], spent: Spent) -> None:
        """Add `spent` to each subject's row of `day` (created at zero when missing)."""
        if not subjects:
            return
        rows = [
            {"day": day, "scope": s.scope, "subject": s.name, **_values(spent)} for s in subjects
        ]
        async with connection(self._engine, single=True) as conn:
            await conn.execute(self._add, rows[0] if len(rows) == 1 else rows)

    async def tokens(self, day: date, subject: Subject) -> int:
        """Tokens `subject` spent on `day`, as recorded so far."""
        query = sa.select(_t.prompt_tokens + _t.completion_tokens).where(
            _t.day == day, _t.scope == subject.scope, _t.subject == subject.name
        )
        async with self._connection() as conn:
            found = (await conn.execute(query)).scalar()
        return int(found or 0)

    async def report(self, since: date, subject: Subject | None = None) -> list[UsageLine]:
        """Every row from `since` on (one subject's, when given), newest day first."""
        query = sa.select(
            _t.day, _t.scope, _t.subject, _t.prompt_tokens, _t.completion_tokens, _t.turns,
            _t.refused,
        ).where(_t.day >= since)  # fmt: skip
        if subject is not None:
            query = query.where(_t.scope == subject.scope, _t.subject == subject.name)
        query = query.order_by(_t.day.desc(), _t.scope.desc(), _t.subject)
        async with self._connection() as conn:
            rows = (await conn.execute(query)).all()
        return [UsageLine(r[0], Subject(r[1], r[2]), Spent(r[3], r[4], r[5], r[6])) for r in rows]

    def _connection(self, *, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        return connection(self._engine, write=write)


_COUNTS = ("prompt_tokens", "completion_tokens", "turns", "refused")


def _values(spent: Spent) -> dict[str, int]:
    return {
        "prompt_tokens": spent.prompt_tokens,
        "completion_tokens": spent.completion_tokens,
        "turns": spent.turns,
        "refused": spent.refused,
    }
