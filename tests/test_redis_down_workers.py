"""Two workers, Redis killed: the turn lock falls back to a lease in SQL, so a message that
reaches both workers is streamed to the user once, not once per worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from backends.base import Chunk, GenerationRequest
from bot.app import Parley
from bot.settings import Settings
from bot.storage import migrate
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.redis_server import PrivateRedis

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class GatedBackend(ScriptedBackend):
    """Its first answer waits for `gate`: the other worker gets its chance meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.started = 0

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.started += 1
        if not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        async for chunk in super().stream(request):
            yield chunk


async def test_with_redis_down_a_message_at_two_workers_is_answered_once(
    postgres_url: str, private_redis: PrivateRedis, key_prefix: str
) -> None:
    await migrate.upgrade(postgres_url)
    settings = Settings(
        database={"url": postgres_url},  # type: ignore[arg-type]
        redis={"url": private_redis.url, "key_prefix": key_prefix},  # type: ignore[arg-type]
    )
    backend = GatedBackend()
    sinks = [CollectingSink(), CollectingSink()]
    key = ConversationKey("test", "redis-down")
    message = Incoming(key, User("test", "u1", "Ada"), "hello", idempotency_key="down-1")
    async with (
        Parley(settings, backend=backend) as first,
        Parley(settings, backend=backend) as second,
    ):  # type: ignore[arg-type]
        first.manager.attach("test", sinks[0])
        second.manager.attach("test", sinks[1])
        await private_redis.kill()
        await first.manager.submit(message)
        await backend.entered.wait()  # the first worker streams the answer
        await second.manager.submit(message)  # the platform hands the message to another one
        await asyncio.sleep(0.5)  # without the lease the second would be streaming by now
        started = backend.started
        backend.gate.set()  # (before asserting: a failure must not leave the turn hanging)
        assert started == 1
        await first.manager.wait_idle()
        await second.manager.wait_idle()
        assert sinks[0].replies[key] == ["echo: hello"]
        assert sinks[1].replies[key] == []
        assert backend.started == 1
        history = await second.store.history(1, 10)
        assert [m.content for m in history] == ["hello", "echo: hello"]
