"""The statement budget of a support turn (tests/test_statement_budget.py's counts, for the
support channel): a visitor's message posted to /v1/messages, its `message` event for the
visitor's other tabs, the turn and its answer on the event log, on PostgreSQL and Redis.

Counted as tests/test_statement_budget.py counts: SQL statements through SQLAlchemy's
`before_cursor_execute` on the app's engines, Redis commands with MONITOR (a script is one
round trip; commands inside it are not counted). A change that adds a round trip to a support
turn has to change the numbers here (docs/support.md, "Performance").
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.redis_server import PrivateRedis
from tests.support_helpers import bearer, new_visitor, support_worker
from tests.test_statement_budget import Counts, RedisCommands, counting_sql

pytestmark = pytest.mark.postgres

# Beyond the core's chat turn (tests/test_statement_budget.py, POSTGRES["desk"]: the support
# channel's help desk triggers write the handoff signal, INSERT): the message event's read of the
# kept text (SELECT) before its append and the check that the message was not erased meanwhile
# (SELECT) after it; the answer key's note (UPDATE) before the `answer` event, and the check that
# the answered message was not erased while it streamed (SELECT). Redis: the core's rate limit
# (one script) and window (GET, SET); the API's two counts, the address's and the visitor's
# (INCRBY and PEXPIRE, one pipeline each: two round trips); the event log's scripts: the
# `message` event, the answer's delta (a one-word answer: one), then the `answer`.
SQL = {"WITH": 2, "INSERT": 2, "UPDATE": 3, "SELECT": 3}
REDIS = {"evalsha": 4, "get": 1, "set": 1, "incrby": 2, "pexpire": 2}


async def test_a_support_turn(postgres_url: str, private_redis: PrivateRedis) -> None:
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda _request: "Shipped.")
    async with support_worker(
        postgres_url, redis_url=private_redis.url, key_prefix="budget", backend=backend,
        conversation={"sweep_interval_s": 0, "lock_ttl_s": 60}, budget={"usage_flush_s": 3600},
    ) as worker, worker.client() as client:  # fmt: skip
        site = await worker.add_site("shop")
        visitor = await new_visitor(client, site)
        headers = bearer(visitor["token"])

        async def turn(text: str) -> None:
            posted = await client.post("/v1/messages", headers=headers, json={"text": text})
            assert posted.status_code == 202, posted.text
            await worker.app.manager.wait_idle()

        await turn("hello")  # the conversation's first turn: its window is built
        await turn("and again")
        counts = Counts()
        redis = Redis.from_url(private_redis.url)
        try:
            async with RedisCommands(redis) as commands:
                with counting_sql(worker.app, counts):
                    await turn("where is my order?")
        finally:
            await redis.aclose()
        counts.redis = commands.found
        history = await client.get("/v1/history", headers=headers)
        said = [(m["role"], m["text"]) for m in history.json()["messages"]][-2:]
        assert said == [("user", "where is my order?"), ("assistant", "Shipped.")]
    assert (dict(counts.sql), dict(counts.redis)) == (SQL, REDIS)
