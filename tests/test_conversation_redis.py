"""The conversation manager with Redis as its cache, and Redis dying under it."""

from __future__ import annotations

from pathlib import Path

from bot.app import Parley
from bot.settings import Settings
from bot.storage import keys
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.redis_server import PrivateRedis

KEY = ConversationKey("test", "redis-chat")
USER = User("test", "u1", "Ada")


def _prompt(backend: ScriptedBackend, turn: int) -> list[str]:
    return [m.content for m in backend.requests[turn].messages if m.role is not Role.SYSTEM]


async def test_redis_stopped_mid_conversation_answers_with_context_from_sql(
    database_url: str, private_redis: PrivateRedis, key_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        database={"url": database_url},  # type: ignore[arg-type]
        redis={"url": private_redis.url, "key_prefix": key_prefix, "retry_after_failure_s": 0.1},  # type: ignore[arg-type]
    )
    backend, sink = ScriptedBackend(), CollectingSink()
    texts = ["one", "two", "three", "four", "five", "six"]

    async def say(i: int) -> None:
        await app.manager.handle(Incoming(KEY, USER, texts[i], idempotency_key=f"r{i}"))

    async with Parley(settings, backend=backend) as app:
        app.manager.attach("test", sink)
        for i in range(3):
            await say(i)
        await private_redis.kill()
        await say(3)
        await say(4)
        await private_redis.start()  # back, and empty: it keeps nothing on disk
        await say(5)

    assert sink.replies[KEY] == [f"echo: {t}" for t in texts]
    for turn in (3, 4, 5):
        expected = [x for t in texts[:turn] for x in (t, f"echo: {t}")] + [texts[turn]]
        assert _prompt(backend, turn) == expected


async def test_a_stale_window_in_redis_is_not_trusted(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """A window cached before the latest turns (as a failed write can leave) is rebuilt."""
    settings = Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": key_prefix},  # type: ignore[arg-type]
    )
    backend = ScriptedBackend()
    async with Parley(settings, backend=backend) as app:
        app.manager.attach("test", CollectingSink())

        async def say(text: str) -> None:
            await app.manager.handle(Incoming(KEY, USER, text, idempotency_key=text))

        await say("first")
        stale = await app.manager._context.load(1)
        await say("second")
        await app.cache.set(keys.window(1), stale.dumps())  # as a failed write leaves it
        await say("third")
    contents = [m.content for m in backend.requests[-1].messages[1:]]
    assert contents == ["first", "echo: first", "second", "echo: second", "third"]
