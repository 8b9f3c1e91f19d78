"""Daily token usage in SQL (table token_usage): added for each turn that asked the model or
was refused by a budget, read by `parley usage` and by the budgets when their shared counter
has to be rebuilt (a new day, or Redis restarted empty).

Written behind: a turn's usage is added to a sum in memory per day and subject, and the sums
are written every `budget.usage_flush_s` (0.5 s) in one statement, whatever the number of
turns in between; at close, and before this process reads usage back, they are written at
once. A crash of the process loses at most that interval's usage (the answers themselves are
in SQL). Writes are upserts that add to the row (INSERT ... ON CONFLICT DO UPDATE, the same
SQL on SQLite and PostgreSQL), so any number of workers can record the same user's turns at
once. Every database failure of a read raises StorageError; a failed write keeps its sums
for the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import StorageError
from bot.storage.conflicts import insert_on_conflict
from bot.storage.database import all_rows, run_on_connection
from bot.storage.models import TokenUsageRow

log = logging.getLogger(__name__)

_t = TokenUsageRow
_COUNTS = ("prompt_tokens", "completion_tokens", "turns", "refused")
# Adds to the day's row, created at zero when missing.
_ADD = insert_on_conflict(
    _t,
    ["day", "scope", "subject", *_COUNTS],
    ["day", "scope", "subject"],
    update=", ".join(f"{c} = {_t.__tablename__}.{c} + excluded.{c}" for c in _COUNTS)
    + ", updated_at = CURRENT_TIMESTAMP",
)


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
    def __init__(self, engine: AsyncEngine, *, flush_s: float = 0.5) -> None:
        self._engine = engine
        self._flush_s = flush_s
        # Not yet written: per (day, scope, subject), the four counts in _COUNTS' order.
        self._pending: dict[tuple[date, str, str], list[int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        self._autocommit = engine.dialect.name == "postgresql"  # see run_on_connection(single=)
        self._add = _ADD

    async def add(self, day: date, subjects: Sequence[Subject], spent: Spent) -> None:
        """Add `spent` to each subject's row of `day` (created at zero when missing): at the
        next flush, or now when `flush_s` is 0."""
        added = _values(spent)
        for subject in subjects:
            sums = self._pending.setdefault((day, subject.scope, subject.name), [0] * 4)
            for i, name in enumerate(_COUNTS):
                sums[i] += added[name]
        if self._flush_s == 0:
            await self.flush()
        elif self._pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_soon(), name="usage flush")

    async def flush(self) -> None:
        """Write every sum gathered so far, in one statement. On a database failure the sums
        are kept for the next flush, and StorageError is raised."""
        async with self._writing:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            rows = [
                {
                    "day": day,
                    "scope": scope,
                    "subject": name,
                    **dict(zip(_COUNTS, sums, strict=True)),
                }
                for (day, scope, name), sums in pending.items()
            ]
            # Failed before its statement ran to the end: nothing was committed (a
            # transaction is rolled back), so the sums go back to be written next time. Cut
            # off while committing (on PostgreSQL the statement commits itself, so while it
            # ran): whether it committed is unknown, so they are dropped: usage may miss a
            # moment, it is never counted twice.
            executed = False

            async def add(conn: AsyncConnection) -> None:
                nonlocal executed
                await conn.execute(self._add, rows[0] if len(rows) == 1 else rows)
                executed = True

            try:
                await run_on_connection(self._engine, add, single=True)
            except BaseException as exc:
                failed = isinstance(exc, StorageError)  # an error, not a cut: not committed
                if not executed and (failed or not self._autocommit):
                    for key, sums in pending.items():
                        now = self._pending.setdefault(key, [0] * 4)
                        for i, value in enumerate(sums):
                            now[i] += value
                else:
                    log.warning("token usage of %d subjects may be lost (cut off)", len(rows))
                raise

    async def forget(self, subjects: Sequence[Subject]) -> None:
        """Drop the sums not yet written of `subjects` (an erased user's, whose rows are
        deleted next): a later flush would bring the rows, and the user's id, back. A write
        under way ends first, so that it commits before the deletion."""
        names = {(s.scope, s.name) for s in subjects}
        async with self._writing:
            for key in [k for k in self._pending if (k[1], k[2]) in names]:
                del self._pending[key]

    async def aclose(self) -> None:
        """Write what is left (a last try; a database that is down loses it, logged)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()  # its write, if one is under way, is shielded: it finishes
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            await self.flush()
        except StorageError as exc:
            log.warning("token usage of the last turns not recorded: %s", exc)

    async def _flush_soon(self) -> None:
        while self._pending:  # what turns add during a write goes in the next one
            await asyncio.sleep(self._flush_s)
            try:
                # Shielded: cancelled (at close) while writing, the write still completes,
                # and close's own flush waits for it on the lock.
                await asyncio.shield(self.flush())
            except StorageError as exc:  # kept: the next turn's flush tries again
                log.warning("token usage not recorded yet: %s", exc)
                return
            except Exception:  # a bug must not leave an exception nobody retrieves
                log.exception("token usage not recorded")
                return

    async def tokens(self, day: date, subject: Subject) -> int:
        """Tokens `subject` spent on `day`, as recorded so far (this process's sums
        written first)."""
        await self.flush()
        return await self.written(day, subject)

    async def counted(self, day: date, subject: Subject) -> int:
        """What `tokens` says, without writing: SQL's sum plus this process's sums that wait
        for the next flush (a budget check on every turn must not defeat the write-behind)."""
        async with self._writing:  # no flush halfway: its sums neither missed nor twice
            waiting = self._pending.get((day, subject.scope, subject.name))
            unwritten = waiting[0] + waiting[1] if waiting else 0
            return await self.written(day, subject) + unwritten

    async def written(self, day: date, subject: Subject) -> int:
        """Tokens `subject` spent on `day` as SQL holds them (every worker's written sums)."""
        query = sa.select(_t.prompt_tokens + _t.completion_tokens).where(
            _t.day == day, _t.scope == subject.scope, _t.subject == subject.name
        )
        found = await run_on_connection(self._engine, lambda conn: conn.scalar(query))
        return int(found or 0)

    async def report(self, since: date, subject: Subject | None = None) -> list[UsageLine]:
        """Every row from `since` on (one subject's, when given), newest day first."""
        await self.flush()
        query = sa.select(
            _t.day, _t.scope, _t.subject, _t.prompt_tokens, _t.completion_tokens, _t.turns,
            _t.refused,
        ).where(_t.day >= since)  # fmt: skip
        if subject is not None:
            query = query.where(_t.scope == subject.scope, _t.subject == subject.name)
        query = query.order_by(_t.day.desc(), _t.scope.desc(), _t.subject)
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, query))
        return [UsageLine(r[0], Subject(r[1], r[2]), Spent(r[3], r[4], r[5], r[6])) for r in rows]


def _values(spent: Spent) -> dict[str, int]:
    return {
        "prompt_tokens": spent.prompt_tokens,
        "completion_tokens": spent.completion_tokens,
        "turns": spent.turns,
        "refused": spent.refused,
    }
