"""A Redis that answers and refuses the connection `redis.url` describes (a wrong password,
none where it needs one, a database number it does not have) is a setting to fix: one line at
start, exit status 2, and `parley doctor` says which. It used to be taken for an outage: the
worker started, `/readyz` said `redis: AuthenticationError`, and every answer's delivery on
the support channel failed with a traceback, for good.
A Redis that is down is still waited out (tests/test_readiness.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.app import Parley
from bot.doctor import run_checks
from bot.errors import ConfigError
from bot.settings import Settings
from tests.redis_server import PrivateRedis

pytestmark = pytest.mark.redis


def _settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},  # type: ignore[arg-type]
        knowledge={"load_sample": False},  # type: ignore[arg-type]
        redis={"url": redis_url, "socket_timeout_s": 2},  # type: ignore[arg-type]
    )


async def _start(settings: Settings) -> None:
    async with Parley(settings):
        pass


async def _require_password(private_redis: PrivateRedis, password: str) -> None:
    client: Redis = Redis.from_url(private_redis.url)
    try:
        await client.config_set("requirepass", password)
    finally:
        await client.aclose()


async def test_a_database_number_redis_does_not_have_stops_the_start(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    settings = _settings(tmp_path, private_redis.url.removesuffix("/0") + "/99")
    with pytest.raises(ConfigError, match=r"^redis\.url: Redis has no database with"):
        await _start(settings)


@pytest.mark.parametrize("given", ["", ":not-it-9f3@"])
async def test_a_password_redis_does_not_take_stops_the_start(
    tmp_path: Path, private_redis: PrivateRedis, given: str
) -> None:
    await _require_password(private_redis, "right-password")
    url = private_redis.url.replace("redis://", f"redis://{given}")
    with pytest.raises(ConfigError, match=r"^redis\.url: Redis refused the login") as refused:
        await _start(_settings(tmp_path, url))
    assert "not-it-9f3" not in str(refused.value)  # never the password
    good = private_redis.url.replace("redis://", "redis://:right-password@")
    await _start(_settings(tmp_path, good))


async def test_doctor_names_the_refusal(tmp_path: Path, private_redis: PrivateRedis) -> None:
    await _require_password(private_redis, "right-password")
    out = io.StringIO()
    await run_checks(_settings(tmp_path, private_redis.url), out=out)
    # It said "Redis not reachable: Redis did not answer PING (AuthenticationError)".
    assert "[PROBLEM] cache: Redis refused the login" in out.getvalue(), out.getvalue()


async def test_a_password_changed_under_a_running_worker_is_one_line_per_delivery(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refusing redis.url after the start (its password changed under a running worker:
    each new connection is refused) failed each answer's delivery on the support channel with
    a traceback, as a bug would. It is one line saying what to fix."""
    from redis.exceptions import AuthenticationError

    from bot.conversation.manager import _delivery_failed
    from bot.errors import StorageError
    from bot.types import ConversationKey

    await _require_password(private_redis, "right-password")
    client: Redis = Redis.from_url(private_redis.url.replace("redis://", "redis://:old-one@"))
    try:
        with pytest.raises(AuthenticationError) as refused:  # the real client's refusal
            await client.ping()
    finally:
        await client.aclose()
    try:
        raise StorageError("the event log could not be written") from refused.value
    except StorageError as exc:
        failed = exc
    with caplog.at_level("WARNING", logger="bot.conversation.manager"):
        _delivery_failed(ConversationKey("support", "shop:v1"), failed)
    (record,) = caplog.records
    assert record.exc_info is None  # no traceback
    assert "Redis refused the login" in record.getMessage()
    assert "old-one" not in record.getMessage()
