"""Hostile review of the support channel's web side (prefix atweb): the real app and support
adapter served by uvicorn, on SQLite with the in-memory event log and on PostgreSQL with
Redis, called as an attacker or an odd client would. Each test failed before its fix."""

from __future__ import annotations

import pytest

from tests.support_helpers import bearer, new_visitor, open_stream, support_worker


@pytest.fixture
def backing(request: pytest.FixtureRequest, database_url: str) -> tuple[str, str | None]:
    """The database and the event log: SQLite with this process's memory, PostgreSQL with
    Redis."""
    if database_url.startswith("sqlite"):
        return database_url, None
    redis_url: str = request.getfixturevalue("redis_url")
    return database_url, redis_url


async def test_a_head_request_for_the_event_stream_opens_no_stream(
    backing: tuple[str, str | None], key_prefix: str
) -> None:
    """HEAD /v1/events (Starlette answers HEAD wherever GET is served: an uptime check, a
    link previewer, a proxy probing the URL) got the stream's headers and then a stream
    that never ended: its body was dropped, but it held one of the visitor's and the
    address's stream places, and the kept-alive connection, busy with that endless
    response, hung the client's next request. Now a HEAD is checked like the GET (a bad
    token is 401) and answered with the headers alone: no stream is opened or counted."""
    database_url, redis_url = backing
    async with support_worker(
        database_url, redis_url=redis_url, key_prefix=key_prefix, streams_per_visitor=1
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as probe, w.client() as browser:
            visitor = await new_visitor(browser, site)
            token = visitor["token"]
            refused = await probe.head("/v1/events", headers=bearer(token + "x"))
            head = await probe.head("/v1/events", headers=bearer(token))
            # The visitor's one stream place is free for the browser's stream (429 if not).
            async with open_stream(browser, token):
                pass
            # The same kept-alive connection serves the next request.
            history = await probe.get("/v1/history", headers=bearer(token))
    assert refused.status_code == 401
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""
    # No length: the GET's stream has none, and a HEAD's may only repeat the GET's (RFC 9110,
    # 8.6); "0" told a link previewer or a cache that the stream is empty.
    assert "content-length" not in head.headers
    assert history.status_code == 200


async def test_a_lone_surrogate_in_a_field_name_is_named_like_any_unknown_field(
    backing: tuple[str, str | None], key_prefix: str
) -> None:
    """JSON may escape half of a UTF-16 pair alone in a field's name as well as in its value.
    In a value it becomes U+FFFD; in a name it reached pydantic as it was, and the 422 blamed
    the whole body for not being a string ("body: Input should be a valid string, unable to
    parse raw data as a unicode string"), which names neither the field nor the problem.
    Now the name is made storable too, and refused as any field the API does not know."""
    database_url, redis_url = backing
    async with support_worker(database_url, redis_url=redis_url, key_prefix=key_prefix) as w:
        site = await w.add_site("shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            body = b'{"text": "Where is my order?", "note\\ud800": 1}'
            response = await client.post(
                "/v1/messages",
                headers={**bearer(visitor["token"]), "Content-Type": "application/json"},
                content=body,
            )
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "note\ufffd: Extra inputs are not permitted",
    }
