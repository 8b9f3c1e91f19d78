"""History length costs nothing: a conversation's context window rebuilt from SQL (a cold
load: a restart, a cache lost, another worker) at 100,000 earlier messages against 1,000.

    python -m bench.cold_load [--reps 40] [--sqlite]

A fresh PostgreSQL database (PARLEY_BENCH_POSTGRES_URL, an admin URL; default the local
server), dropped at the end; with --sqlite a temporary SQLite file instead. Two conversations
are made through the app (one real turn each, so every row is in the store's own shape), then
filled with earlier user/assistant pairs of about 300 tokens per answer, each user message
marked answered by its reply, as turns leave them. Then the window is dropped from the cache
and loaded again `--reps` times per conversation, alternating; the figure is the p50 ratio.

Target (issue 19, fixed before measuring): cold load at 100,000 earlier messages <= 1.2x the
load at 1,000. Exit status 1 when missed, 2 when the database cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.entry import positive_int, run_main
from bench.support_bench import DEFAULT_PG_ADMIN, InstantBackend
from bot.types import ConversationKey, Incoming, User


class Quiet:
    """The sink: answers are read and dropped."""

    async def deliver(self, key: ConversationKey, chunks: AsyncIterator[str], **_: str) -> None:
        async for _chunk in chunks:
            pass

    async def is_admin(self, incoming: Incoming) -> bool:
        return False


TARGET = 1.2
SIZES = (1_000, 100_000)
ANSWER = "A long answer about configuring the service. " * 30  # about 300 tokens
BATCH = 5_000


@contextlib.asynccontextmanager
async def database(sqlite: bool) -> AsyncIterator[str]:
    if sqlite:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite+aiosqlite:///{folder}/parley.db"
        return
    import asyncpg

    admin = os.environ.get("PARLEY_BENCH_POSTGRES_URL", DEFAULT_PG_ADMIN)
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin, timeout=5)
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rpartition('/')[0]}/{name}".replace("postgresql://", "postgresql+asyncpg://")
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def fill(engine: AsyncEngine, conversation_id: int, pairs: int) -> None:
    """`pairs` earlier user/assistant messages, each user message answered by its reply."""
    from bot.storage.models import MessageRow

    table = cast(sa.Table, MessageRow.__table__)
    insert = sa.insert(table).returning(table.c.id, sort_by_parameter_order=True)
    link = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("uid"))
        .values(answered_by=sa.bindparam("aid"))
    )
    common = {"conversation_id": conversation_id, "kind": "chat"}
    for start in range(0, pairs, BATCH):
        rows = []
        for i in range(start, min(pairs, start + BATCH)):
            rows.append({**common, "role": "user", "content": f"question {i}", "token_count": 8,
                         "idempotency_key": f"bench:{conversation_id}:{i}"})  # fmt: skip
            rows.append({**common, "role": "assistant", "content": ANSWER, "token_count": 300,
                         "idempotency_key": None})  # fmt: skip
        async with engine.begin() as conn:
            ids = (await conn.execute(insert, rows)).scalars().all()
            pairs_of = [{"uid": ids[k], "aid": ids[k + 1]} for k in range(0, len(ids), 2)]
            await conn.execute(link, pairs_of)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("ANALYZE messages"))  # as autovacuum does after a load


async def measure(url: str, reps: int, sizes: tuple[int, ...] = SIZES) -> dict[int, list[float]]:
    from bot.app import Parley
    from bot.conversation.context import ContextLoader
    from bot.conversation.summary import Summarizer
    from bot.settings import load_settings
    from bot.storage.cache import MemoryCache
    from bot.storage.database import create_engine

    settings = load_settings(
        None, database={"url": url, "auto_migrate": True}, knowledge={"load_sample": False}
    )
    times: dict[int, list[float]] = {size: [] for size in sizes}
    async with Parley(settings, backend=InstantBackend()) as app:  # type: ignore[arg-type]
        app.manager.attach("bench", Quiet())
        conversations = {}
        for size in sizes:
            key = ConversationKey("bench", f"chat-{size}")
            user = User("bench", f"u{size}")
            incoming = Incoming(key, user, "hello", idempotency_key=f"bench-first-{size}")
            conversations[size] = (await app.manager.handle(incoming)).conversation_id
        engine = create_engine(url)
        try:
            for size, cid in conversations.items():
                await fill(engine, cid, size // 2)
        finally:
            await engine.dispose()
        # The manager's own loader, as the app builds it (bot/app.py), on an in-process cache.
        summarizer = Summarizer(None, max_tokens=64, count_tokens=app.count_tokens)
        loader = ContextLoader(
            app.store, MemoryCache(), summarizer, budget_tokens=settings.conversation.context_tokens
        )
        for _ in range(reps):
            for size, cid in conversations.items():
                await loader.invalidate(cid)
                began = time.perf_counter()
                window = await loader.load(cid)
                times[size].append((time.perf_counter() - began) * 1000)
                assert window.turns, "the rebuilt window is empty: the fill is not in shape"
    return times


async def main(reps: int, sqlite: bool) -> int:
    try:
        async with database(sqlite) as url:
            times = await measure(url, reps)
    except OSError as exc:
        print(f"cold_load: the database cannot be reached: {exc}")
        return 2
    small, big = (statistics.median(times[size]) for size in SIZES)
    ratio = big / small
    where = "SQLite file" if sqlite else "PostgreSQL"
    print(f"cold context load ({where}, {reps} loads each, p50):")
    for size in SIZES:
        print(f"  {size:>7,} earlier messages: {statistics.median(times[size]):7.2f} ms")
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"ratio {SIZES[1]:,} / {SIZES[0]:,}: {ratio:.2f}x   (target <= {TARGET}x): {verdict}")
    return 0 if ratio <= TARGET else 1


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_load")
    parser.add_argument("--reps", type=positive_int, default=40)
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("PARLEY_") and "BENCH" not in k]:
        del os.environ[name]  # the bench chooses its own setup
    return asyncio.run(main(args.reps, args.sqlite))


if __name__ == "__main__":
    run_main("bench.cold_load", cli)
