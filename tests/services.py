"""Real PostgreSQL and Redis for the tests.

Where a server does not answer, its tests skip with the reason; under CI (CI=true) they fail
instead, because `.ci/run` makes sure both servers are up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "PARLEY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PARLEY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The lock file that tests marked `many_connections` hold while they run (conftest.py).
MANY_CONNECTIONS_LOCK = "many-postgres-connections.lock"


def unavailable(what: str, why: object) -> None:
    reason = f"{what} is not reachable ({why}); set PARLEY_TEST_{what.upper()}_URL"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI requires {reason}", pytrace=False)
    pytest.skip(reason)


async def _pg_admin_async(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_admin(sql: str) -> None:
    # In a thread of its own, so it also works from fixtures that run inside an event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _pg_admin_async(sql)).result()


def create_postgres_database() -> str:
    """Create an empty database and return its SQLAlchemy async URL."""
    try:
        import asyncpg
    except ImportError as exc:
        unavailable("postgres", exc)
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        unavailable("postgres", exc)
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name


def drop_postgres_database(url: str) -> None:
    name = url.rpartition("/")[2]
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_redis() -> str:
    try:
        import redis
    except ImportError as exc:
        unavailable("redis", exc)
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        unavailable("redis", exc)
    return REDIS_URL


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder every process of this test run shares: the base folder, or under
    pytest-xdist the one above each worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def many_connections_turn(folder: Path) -> Iterator[None]:
    """Held by one test at a time over every process that shares `folder` (the test run's
    temporary folder: each pytest-xdist worker's parent). PostgreSQL takes 100 connections
    by default, and a test marked `many_connections` holds about a third or more of them (two
    workers with pools of 20, three `parley run` workers); two such tests of files running
    at once (make test) left the later one's workers "too many connections". A process that
    ends lets go of the lock with it (flock)."""
    with (folder / MANY_CONNECTIONS_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
