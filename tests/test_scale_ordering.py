"""200 conversations x 10 messages through two managers sharing PostgreSQL and Redis.

Each conversation sends its messages in order, each to a randomly chosen manager (two workers
behind a load balancer), while the backend answers with random delays, so turns overlap and
bursts get merged. Afterwards SQL must show every conversation in send order, every message
answered exactly once, and the sinks must have delivered exactly the recorded replies.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import text

from bot.app import Parley
from bot.settings import Settings
from bot.storage import migrate
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink, ScriptedBackend, random_delay

CONVERSATIONS = 200
MESSAGES = 10

# Two apps with pools of 20 (and their relaxed and keeper engines): 62 connections at the
# peak here, of PostgreSQL's 100 (tests/conftest.py).
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.many_connections]


def _settings(postgres_url: str, redis_url: str, prefix: str) -> Settings:
    return Settings(
        database={"url": postgres_url, "pool_size": 20},  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": prefix},  # type: ignore[arg-type]
    )


async def _converse(apps: list[Parley], n: int, rng: random.Random, *, twice: bool) -> None:
    key = ConversationKey("load", f"c{n}")
    user = User("load", f"u{n}", f"user {n}")
    for i in range(MESSAGES):
        message = Incoming(key, user, f"c{n}-m{i}", idempotency_key=f"load:{n}:{i}")
        targets = apps if twice else [rng.choice(apps)]
        if twice:
            rng.shuffle(targets)
        for app in targets:
            await app.manager.submit(message)
        await asyncio.sleep(rng.random() * 0.02)


@pytest.mark.parametrize("twice", [False, True], ids=["once", "every-message-twice"])
async def test_order_kept_nothing_lost_nothing_answered_twice(
    postgres_url: str, redis_url: str, key_prefix: str, twice: bool
) -> None:
    settings = _settings(postgres_url, redis_url, key_prefix)
    await migrate.upgrade(postgres_url)
    sinks = [CollectingSink(), CollectingSink()]
    async with AsyncExitStack() as stack:
        apps = []
        for seed, sink in enumerate(sinks):
            backend = ScriptedBackend(delay=random_delay(0.01, seed=seed))
            app = await stack.enter_async_context(Parley(settings, backend=backend))
            app.manager.attach("load", sink)
            apps.append(app)
        rng = random.Random(42)
        await asyncio.gather(
            *(
                _converse(apps, n, random.Random(rng.random()), twice=twice)
                for n in range(CONVERSATIONS)
            )
        )
        for app in apps:
            await app.manager.wait_idle()
        rows = await _messages(apps[0])

    by_conversation: dict[str, list[tuple[int, str, str, int | None]]] = {}
    for row in rows:
        by_conversation.setdefault(row[0], []).append(row[1:])
    assert len(by_conversation) == CONVERSATIONS

    delivered = Counter(
        (key.chat_id, reply)
        for sink in sinks
        for key, replies in sink.replies.items()
        for reply in replies
    )
    for chat_id, messages in by_conversation.items():
        n = chat_id.removeprefix("c")
        users = [
            (mid, content, answered) for mid, role, content, answered in messages if role == "user"
        ]
        replies = {mid: content for mid, role, content, _ in messages if role == "assistant"}
        # Recorded in send order, none lost, none recorded twice.
        assert [c for _, c, _ in users] == [f"c{n}-m{i}" for i in range(MESSAGES)]
        # Every message answered, and the answers come in the same order as the questions.
        answered_by = [a for _, _, a in users]
        assert None not in answered_by
        assert answered_by == sorted(answered_by)
        # Each reply answers exactly the messages that point at it, merged in order.
        for reply_id, content in replies.items():
            asked = [c for _, c, a in users if a == reply_id]
            assert content == "echo: " + "\n\n".join(asked)
        # What the users saw is exactly what was recorded: no reply delivered twice or lost.
        for content in replies.values():
            assert delivered[(chat_id, content)] == 1
    assert sum(delivered.values()) == sum(
        1 for msgs in by_conversation.values() for m in msgs if m[1] == "assistant"
    )


async def _messages(app: Parley) -> list[tuple[str, int, str, str, int | None]]:
    query = text(
        "SELECT c.chat_id, m.id, m.role, m.content, m.answered_by FROM messages m "
        "JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id"
    )
    async with app.store.engine.connect() as conn:
        result = await conn.execute(query)
        return [tuple(r) for r in result.all()]  # type: ignore[misc]
