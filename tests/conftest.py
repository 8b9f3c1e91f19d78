from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.storage import migrate
from tests import services
from tests.redis_server import private_redis  # noqa: F401  (fixture)

pytest_plugins = ["tests.fixtures_vllm", "tests.fixtures_smollm"]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy asyncpg URL), dropped afterwards."""
    url = services.create_postgres_database()
    yield url
    services.drop_postgres_database(url)


@pytest.fixture
def redis_url() -> str:
    return services.check_redis()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"parley-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, then PostgreSQL (the contract suites' pair)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    url: str = request.getfixturevalue("postgres_url")
    await migrate.upgrade(url)
    return url
