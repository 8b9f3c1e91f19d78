"""The support event log's subscription during a Redis outage: one warning line, as
docs/support.md says, not one per try (a worker started while Redis was down logged a
"subscription lost" warning every 0.5, 1, 2, 4 ... s, beside the one its start promised).
A private redis-server (tests/redis_server.py) is killed and started again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from adapters.support import events
from adapters.support.events import RedisEventLog
from tests.redis_server import PrivateRedis

pytestmark = pytest.mark.redis


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == events.__name__ and r.levelno >= logging.WARNING
    ]


class _Back(logging.Handler):
    """Set once the log says the subscription is back (or what `phrase` says)."""

    def __init__(self, phrase: str = "subscription back") -> None:
        super().__init__(logging.INFO)
        self.phrase = phrase
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.phrase in record.getMessage():
            self.seen.set()


@contextlib.asynccontextmanager
async def _event_log(private: PrivateRedis) -> AsyncIterator[RedisEventLog]:
    """An event log on the private Redis, not started; at the end, Redis is started again
    and the log must say its subscription is back (the next try subscribes)."""
    clients = [Redis.from_url(private.url, socket_timeout=1), Redis.from_url(private.url)]
    back = _Back()
    logger = logging.getLogger(events.__name__)
    logger.addHandler(back)
    log_ = RedisEventLog(clients[0], "p", kept=10, ttl_s=60, listener=clients[1])
    try:
        yield log_
        await private.start()
        async with asyncio.timeout(15):
            await back.seen.wait()
    finally:
        logger.removeHandler(back)
        await log_.aclose()
        for client in clients:
            await client.aclose()


async def test_a_start_while_redis_is_down_is_one_warning_line(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger=events.__name__)
    await private_redis.kill()
    monkeypatch.setattr(events, "SUBSCRIBE_WAIT_S", 1.6)  # tries at 0, 0.5 and 1.5 s meanwhile
    async with _event_log(private_redis) as log_:
        await log_.start()
        [line] = _warnings(caplog)
        assert "not answering" in line
    assert len(_warnings(caplog)) == 1  # and the info line once it was back


async def test_a_subscription_lost_while_running_is_one_warning_line_until_it_is_back(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=events.__name__)
    async with _event_log(private_redis) as log_:
        await log_.start()
        assert _warnings(caplog) == []
        await private_redis.kill()
        await asyncio.sleep(2.0)  # tries at about 0, 0.5 and 1.5 s
        tries = [r for r in caplog.records if "subscription lost" in r.getMessage()]
        assert len(tries) >= 3
        [line] = _warnings(caplog)
        assert "subscription lost" in line
    assert len(_warnings(caplog)) == 1


async def test_a_redis_that_stops_answering_is_noticed_and_the_subscription_comes_back(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis frozen (SIGSTOP: a hang, or a network that drops packets; the connection stays
    open): the subscription waited for messages for good, with no line in the log, and every
    stream was woken only by its 5-second re-read, also after Redis was back (an operator's
    trial). Now silence is asked about (PING), no reply is one warning, and the subscription
    comes back once Redis answers again."""
    caplog.set_level(logging.DEBUG, logger=events.__name__)
    monkeypatch.setattr(events, "SILENCE_S", 0.3)
    clients = [Redis.from_url(private_redis.url, socket_timeout=1),
               Redis.from_url(private_redis.url, socket_connect_timeout=1)]  # fmt: skip
    back, lost = _Back(), _Back("subscription lost")
    for handler in (back, lost):
        logging.getLogger(events.__name__).addHandler(handler)
    log_ = RedisEventLog(clients[0], "p", kept=10, ttl_s=60, listener=clients[1])
    try:
        await log_.start()
        await asyncio.sleep(1.0)  # silence answered: Redis replies to each PING
        assert _warnings(caplog) == []
        private_redis.freeze()
        async with asyncio.timeout(10):
            await lost.seen.wait()
        [line] = _warnings(caplog)
        assert "subscription lost (TimeoutError)" in line
        private_redis.thaw()
        async with asyncio.timeout(15):
            await back.seen.wait()
    finally:
        private_redis.thaw()
        for handler in (back, lost):
            logging.getLogger(events.__name__).removeHandler(handler)
        await log_.aclose()
        for client in clients:
            await client.aclose()
    assert len(_warnings(caplog)) == 1
