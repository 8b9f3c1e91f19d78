"""The outbound gate on a virtual clock: limits per chat and per group, kept together by two
gates (two workers) sharing Redis, and kept in the process when Redis is down."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from telegram.error import RetryAfter
from telegram.ext import ExtBot

from adapters.kit.gate import Gate, LocalGate, Rate, Rates, RedisGate
from adapters.telegram.limits import FloodGate, retry_after_s
from bot.settings import RedisSettings
from bot.storage.redis_client import client_for
from tests.crash_cluster import TcpProxy
from tests.ports import free_port
from tests.telegram_api import TOKEN, FakeBotApi

PER_CHAT, PER_GROUP = Rate(1, 1.0), Rate(3, 10.0)
RATES = Rates(PER_CHAT, PER_GROUP, overall=Rate(30, 1.0))
CALL_S = 0.03  # a Bot API call's round trip, on the virtual clock
GROUP = "-100123"


class VirtualClock:
    """Time that moves only when someone sleeps: any order of sleepers is a valid history."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # let the others run, as a real sleep would


def within(times: list[float], rate: Rate) -> bool:
    """No window of `rate.period_s` holds more than `rate.calls` of `times`."""
    times = sorted(times)
    return all(
        sum(1 for t in times[i:] if t < start + rate.period_s) <= rate.calls
        for i, start in enumerate(times)
    )


async def calls_through(
    gates: list[Gate], clock: VirtualClock, chat: str, each: int
) -> list[float]:
    """Each gate sends `each` calls to `chat` at once; the times the server saw them."""
    seen: list[float] = []

    async def call(gate: Gate) -> None:
        async with gate.slot(chat, group=chat.startswith("-")):
            seen.append(clock.now)
            await clock.sleep(CALL_S)

    await asyncio.gather(*(call(gate) for gate in gates for _ in range(each)))
    return seen


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_one_gate_keeps_the_chat_and_group_limits() -> None:
    clock = VirtualClock()
    gate = LocalGate(RATES, clock=clock, sleep=clock.sleep)
    seen = await calls_through([gate], clock, GROUP, 8)
    assert len(seen) == 8
    assert within(seen, PER_CHAT) and within(seen, PER_GROUP)


async def test_two_workers_with_their_own_windows_exceed_the_limit_together() -> None:
    """Why the Redis gate exists (and proof that `within` sees a breach)."""
    clock = VirtualClock()
    gates: list[Gate] = [LocalGate(RATES, clock=clock, sleep=clock.sleep) for _ in range(2)]
    seen = await calls_through(gates, clock, "42", 3)
    assert not within(seen, PER_CHAT)


async def test_two_workers_sharing_redis_keep_the_chat_and_group_limits_together(
    redis: Redis, key_prefix: str
) -> None:
    clock = VirtualClock()
    gates: list[Gate] = [
        RedisGate(redis, RATES, prefix=key_prefix, clock=clock, sleep=clock.sleep) for _ in range(2)
    ]
    private = await calls_through(gates, clock, "42", 4)
    group = await calls_through(gates, clock, GROUP, 4)
    assert len(private) == len(group) == 8
    assert within(private, PER_CHAT)
    assert within(group, PER_CHAT) and within(group, PER_GROUP)
    assert await redis.exists(f"{key_prefix}:gate:chat:42")  # the windows are shared ones


async def test_redis_clock_mode_takes_and_frees_slots(redis: Redis, key_prefix: str) -> None:
    gate = RedisGate(redis, Rates(Rate(5, 1.0)), prefix=key_prefix)  # Redis's own TIME
    for _ in range(3):
        async with gate.slot("7", group=False):
            pass
    assert await redis.zcard(f"{key_prefix}:gate:chat:7") == 3


async def test_a_dead_redis_falls_back_to_the_process_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.kit.gate")
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    clock = VirtualClock()
    gate = RedisGate(dead, RATES, prefix="unused", clock=clock, sleep=clock.sleep)
    try:
        seen = await calls_through([gate], clock, "42", 4)
    finally:
        await dead.aclose()
    assert len(seen) == 4 and within(seen, PER_CHAT)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_retry_after_is_read_through_ptbs_public_api() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PTB's constructor warns about the type itself
        refusal = RetryAfter(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading it lets no deprecation warning escape
        assert retry_after_s(refusal) == 3.0


async def test_two_telegram_workers_sharing_redis_meet_no_flood_refusal(
    redis: Redis, key_prefix: str
) -> None:
    """The bug: each worker kept one message a second per chat, so two of them sent two and
    met 429s. With one Redis they keep it together, against the stand-in's strict limits."""
    api = FakeBotApi()
    async with api.serving() as base_url:
        workers = [
            ExtBot(
                TOKEN, base_url=base_url, rate_limiter=FloodGate(redis=redis, key_prefix=key_prefix)
            )
            for _ in range(2)
        ]
        async with workers[0], workers[1]:
            await asyncio.gather(
                *(bot.send_message(42, f"hello {n}") for bot in workers for n in range(2))
            )
    assert len(api.texts(42)) == 4
    assert api.rejected == []


async def test_a_redis_that_froze_holds_no_chat_once_it_is_back(
    redis_url: str, redis: Redis, key_prefix: str
) -> None:
    """Takes that timed out while Redis was frozen reached Redis when it thawed, and their
    slots held the chats until `hold_s` ran out (30 s in production: chats stalled that long
    after a Redis freeze, in a trial under faults). Now the gate frees such slots once Redis
    answers, and a take that arrives after that finds the slot's tombstone. Several chats at
    once: the review found concurrent takes crashing on the shared list of such slots."""
    target = redis.connection_pool.connection_kwargs
    proxy = TcpProxy(str(target.get("host", "127.0.0.1")), int(target.get("port", 6379)))
    await proxy.start()
    # The client the adapters' gates get (bot.storage.redis_client), through the proxy. Its
    # timeout is what ends the frozen takes, and also the most a good call through the proxy
    # may take (0.5 s left a loaded machine little room): a few seconds, paid once.
    url = SecretStr(f"redis://127.0.0.1:{proxy.port}/{int(target.get('db', 0))}")
    through = client_for(RedisSettings(url=url, socket_timeout_s=3.0))
    assert through is not None
    hold_s = 600.0  # a slot left held would hold the test for ten minutes
    gate = RedisGate(through, Rates(Rate(1, 1.0)), prefix=key_prefix, hold_s=hold_s,
                     retry_after_failure_s=0.0)  # fmt: skip
    chats = [str(n) for n in range(10)]

    async def held_ahead() -> int:
        seconds, micros = await redis.time()
        ahead = seconds + micros / 1e6 + 60
        keys = [f"{key_prefix}:gate:chat:{chat}" for chat in chats]
        return sum([int(await redis.zcount(key, ahead, "+inf")) for key in keys])

    async def call(chat: str) -> None:
        async with gate.slot(chat, group=False):
            pass

    try:
        await asyncio.gather(*map(call, chats))
        proxy.frozen = True
        before = proxy.accepted
        await asyncio.gather(*map(call, chats))  # the takes time out: the process's windows
        # Each take was sent once and waited one timeout (a client of redis-py's defaults,
        # `Redis(host=...)`, retries 10 times on new connections: about 11 timeouts a call).
        assert proxy.accepted - before <= len(chats)
        proxy.frozen = False
        for _ in range(200):  # the frozen takes reach Redis as it thaws
            if await held_ahead() == len(chats):
                break
            await asyncio.sleep(0.05)
        assert await held_ahead() == len(chats)
        async with asyncio.timeout(60):  # a guard: without the fix this waits hold_s
            await asyncio.gather(*map(call, chats))
        assert await held_ahead() == 0
    finally:
        await through.aclose()
        await proxy.aclose()
