"""An event stream's position past the newest event of its conversation's log. Event ids are
time-based (`<ms>-<seq>`): a Last-Event-ID from before the server's clock was set back (an NTP
step), from a log that expired or was lost since, or made up, is past every event the log will
hold for a while, and a stream that sent only events after it delivered nothing until the
log's ids passed it: a visitor's live chat went silent. A stream opened with such an id starts
after the newest event (since 4f4b2cc; the first test guards it through the API); one already
open whose log starts again below its last id sends that log from its first (the second test
failed before: silent). The real support API over PostgreSQL, its event log in Redis (and in
memory)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from adapters.support import events
from adapters.support.events import event_key
from bot.storage import keys, migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    Worker,
    bearer,
    data,
    last_user_text,
    new_visitor,
    open_stream,
    support_worker,
)

pytestmark = [pytest.mark.postgres]

# Far past any id the log makes now: written when the clock was ahead.
AHEAD = f"{2**62}-0"


@pytest.fixture(params=["redis", "memory"])
async def worker(
    request: pytest.FixtureRequest, postgres_url: str, key_prefix: str
) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        yield w


async def test_a_stream_opened_past_the_newest_event_gets_the_next_messages_events(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        token = visitor["token"]
        async with open_stream(client, token, last_event_id="0-0") as stream:
            await client.post("/v1/messages", headers=bearer(token), json={"text": "first"})
            newest = (await stream.until_answers(1))[-1].id
        for ahead in (f"{event_key(newest)[0] + 3_600_000}-0", AHEAD):  # an hour; far
            async with open_stream(client, token, last_event_id=ahead) as stream:
                posted = await client.post(
                    "/v1/messages", headers=bearer(token), json={"text": f"after {ahead}"}
                )
                assert posted.status_code == 202, posted.text
                got = await stream.until_answers(1)
            assert got[0].event == "message" and data(got[0])["text"] == f"after {ahead}"
            assert data(got[-1]) == {
                "reply_to": posted.json()["message_id"],
                "text": f"You said after {ahead}",
                "sources": [],
            }
            assert all(event_key(e.id) > event_key(newest) for e in got)  # nothing earlier
            newest = got[-1].id


@pytest.mark.redis
async def test_an_open_stream_whose_log_starts_again_below_it_goes_on(
    postgres_url: str, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream sent an event written while Redis's clock was ahead; then the log was lost
    (it expired, or Redis restarted without its data) and the clock set back: the new log's
    ids are all below the stream's last id, and the open stream sent none of them."""
    import redis.asyncio as aioredis

    monkeypatch.setattr(events, "RECHECK_S", 0.1)  # how soon an open stream looks again
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    client_redis = aioredis.Redis.from_url(redis_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            token = visitor["token"]
            log_key = keys.support_events(key_prefix, f"shop:{visitor['visitor_id']}")
            earlier = {"id": "notice-x", "reply_to": None, "text": "earlier", "recorded": False}
            await client_redis.xadd(log_key, {"n": "notice", "d": json.dumps(earlier)}, id=AHEAD)
            try:
                async with open_stream(client, token, last_event_id="0-0") as stream:
                    (first,) = await stream.next(1)
                    assert first.id == AHEAD
                    await client_redis.delete(log_key)  # lost, as when it expires
                    posted = await client.post(
                        "/v1/messages", headers=bearer(token), json={"text": "still there?"}
                    )
                    assert posted.status_code == 202, posted.text
                    got = (await stream.until_answers(2))[1:]
            finally:
                await client_redis.delete(log_key)
                await client_redis.aclose()
    assert got[0].event == "message" and data(got[0])["text"] == "still there?", got
    assert data(got[-1])["text"] == "You said still there?"
