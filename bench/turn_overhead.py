"""What Parley adds to a turn over a bare client, next to LangChain (issue 19).

Targets, fixed before measuring (bench/README.md), in one run:
- added ms per turn, one turn at a time (p50): Parley <= 1/3 of LangChain's;
- added ms per turn, 32 conversations at once (p95): Parley <= 1/2 of LangChain's;
- Parley's first turn of a conversation at 32 at once (p95) <= 1.5x a later turn's.

The same stand-in model server (its own process), PostgreSQL and Redis for both. Exit 0 when
every target is met, 1 when one is missed or the bench fails, 2 when LangChain's interpreter
is missing. `python -m bench.turn_overhead [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from bench.bare_client import MODEL, Bare, measure, new_client, percentile
from bench.entry import run_main
from bot.app import Parley
from bot.cli_commands import settle_heap
from bot.settings import Settings
from bot.storage.migrate import upgrade
from bot.types import ConversationKey, Incoming, User

HERE = Path(__file__).parent
ADMIN_URL = os.environ.get(
    "PARLEY_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PARLEY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TOGETHER = 32


class Sink:
    """Reads each reply to its end, as a platform adapter would."""

    async def deliver(self, key: ConversationKey, chunks: AsyncIterator[str], **_: Any) -> None:
        async for _chunk in chunks:
            pass


@contextmanager
def model_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "bench.standin_model", str(port)]
    process = subprocess.Popen(cmd, cwd=HERE.parent)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def wait_for(url: str) -> None:
    async with new_client(url) as client:
        for _ in range(100):
            try:
                (await client.get("/v1/models")).raise_for_status()
                return
            except Exception:  # not listening yet
                await asyncio.sleep(0.1)
    raise RuntimeError("the stand-in model server did not start")


@asynccontextmanager
async def fresh_database(*, durable: bool = True) -> AsyncIterator[str]:
    """A new database, migrated; `durable=False`: its commits do not wait for the disk
    (PostgreSQL's own `synchronous_commit = off` for the database, no Parley setting)."""
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        if not durable:
            await conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    url = sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(url)
        yield url
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def drop_keys(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{prefix}*"):
        await client.delete(key)
    await client.aclose()


async def parley_times(base_url: str, db_url: str, prefix: str, seq: int) -> dict[str, Any]:
    settings = Settings(
        database={"url": db_url},  # type: ignore[arg-type]
        redis={"url": REDIS_URL, "key_prefix": prefix},  # type: ignore[arg-type]
        backend={"kind": "openai", "base_url": base_url, "model": MODEL},  # type: ignore[arg-type]
    )
    async with Parley(settings) as app, new_client(base_url) as client:
        app.manager.attach("bench", Sink())  # type: ignore[arg-type]
        settle_heap()  # as `parley run` does once started

        async def stack(conversation: str, text: str) -> None:
            # A person per conversation, as for LangChain: one sender's 200 messages a
            # minute would be rate limited (conversation.rate_limit_messages).
            key, user = ConversationKey("bench", conversation), User("bench", conversation)
            incoming = Incoming(key, user, text, idempotency_key=uuid.uuid4().hex)
            await app.manager.handle(incoming)

        return await measure(Bare(client).turn, stack, seq, TOGETHER)


def langchain_times(python: str, base_url: str, prefix: str, seq: int) -> dict[str, Any]:
    script = str(HERE / "lc_turns.py")
    args = [python, script, base_url, REDIS_URL, prefix, str(seq), str(TOGETHER)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"LangChain's run failed:\n{done.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def figures(times: dict[str, Any]) -> dict[str, float]:
    """Added ms (stack minus bare): p50 one at a time, p95 together; and the stack's p95 of
    first and later turns together."""

    def ms(name: str, load: str, which: str = "all") -> list[float]:
        rows = times[name][load]
        return [t for n, t in rows if which == "all" or (n == 0) == (which == "first")]

    return {
        "added_p50_sequential": percentile(ms("stack", "sequential"), 50)
        - percentile(ms("bare", "sequential"), 50),
        "added_p95_together": percentile(ms("stack", "together"), 95)
        - percentile(ms("bare", "together"), 95),
        "first_p95_together": percentile(ms("stack", "together", "first"), 95),
        "later_p95_together": percentile(ms("stack", "together", "later"), 95),
    }


def verdict(parley: dict[str, float], langchain: dict[str, float]) -> list[tuple[str, bool]]:
    first_ratio = parley["first_p95_together"] / parley["later_p95_together"]
    return [
        (
            f"sequential p50 added: Parley {parley['added_p50_sequential']:.2f} ms <= 1/3 of "
            f"LangChain {langchain['added_p50_sequential']:.2f} ms",
            parley["added_p50_sequential"] <= langchain["added_p50_sequential"] / 3,
        ),
        (
            f"{TOGETHER} at once p95 added: Parley {parley['added_p95_together']:.2f} ms <= 1/2 "
            f"of LangChain {langchain['added_p95_together']:.2f} ms",
            parley["added_p95_together"] <= langchain["added_p95_together"] / 2,
        ),
        (
            f"Parley first turn p95 {parley['first_p95_together']:.1f} ms <= 1.5x later turn "
            f"p95 {parley['later_p95_together']:.1f} ms (x{first_ratio:.2f})",
            first_ratio <= 1.5,
        ),
    ]


async def run(python: str, seq: int) -> int:
    prefix = f"parley-bench-{uuid.uuid4().hex[:8]}"
    with model_server() as base_url:
        await wait_for(base_url)
        try:
            async with fresh_database() as db_url:
                parley = figures(await parley_times(base_url, db_url, prefix, seq))
            langchain = figures(langchain_times(python, base_url, f"{prefix}-lc:", seq))
            # For reference only (no target): Parley on a database whose commits do not wait
            # for the disk, the durability LangChain's Redis history (no persistence) has.
            async with fresh_database(durable=False) as db_url:
                relaxed = figures(await parley_times(base_url, db_url, f"{prefix}-nd", seq))
        finally:
            await drop_keys(prefix)
    print(json.dumps({"parley": parley, "langchain": langchain}, indent=1))
    print(
        "reference, Parley with synchronous_commit = off: sequential p50 added "
        f"{relaxed['added_p50_sequential']:.2f} ms, {TOGETHER} at once p95 added "
        f"{relaxed['added_p95_together']:.2f} ms"
    )
    results = verdict(parley, langchain)
    for line, ok in results:
        print(("PASS " if ok else "MISS ") + line)
    return 0 if all(ok for _, ok in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 conversations one at a time")
    parser.add_argument("--langchain-python", default="/tmp/lcvenv/bin/python")
    args = parser.parse_args()
    if not Path(args.langchain_python).exists():
        print(f"missing: {args.langchain_python} (see bench/README.md)", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    return asyncio.run(run(args.langchain_python, 4 if args.quick else 20))


if __name__ == "__main__":
    run_main("bench.turn_overhead", main)
