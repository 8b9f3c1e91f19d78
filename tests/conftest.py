from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from tests import services
from tests.redis_server import private_redis  # noqa: F401  (fixture)

pytest_plugins = ["tests.fixtures_vllm", "tests.fixtures_smollm"]

# Under CI the property-based tests draw the same examples on every run: a new input that
# breaks something is found by a developer's run (random, as by default), not by a landing.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")


@pytest.fixture
def operator_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`parley` as an operator runs it in an empty folder: no PARLEY_* variable from the
    outside, no config/parley.toml, PARLEY_HOME under tmp_path; only what a test writes."""
    for name in list(os.environ):
        if name.upper().startswith("PARLEY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


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


@pytest.fixture(params=["sqlite", "postgres"])
def kb_cli_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The database `parley kb ...` commands run on (a SQLite file, then PostgreSQL), set in
    the environment as an operator would, with full-text search only (no embedding model)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/kb.db"
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("PARLEY_DATABASE__URL", url)
    monkeypatch.setenv("PARLEY_DATABASE__AUTO_MIGRATE", "true")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    return url


@pytest.fixture
async def pg_stores(postgres_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore, str]]:
    """Two stores (two worker processes) on one fresh, migrated PostgreSQL database."""
    await migrate.upgrade(postgres_url)
    stores = SqlStore(create_engine(postgres_url)), SqlStore(create_engine(postgres_url))
    for store in stores:
        await store.start()
    yield stores[0], stores[1], postgres_url
    for store in stores:
        await store.aclose()
