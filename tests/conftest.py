from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests import services


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
