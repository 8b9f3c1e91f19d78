"""Inputs of the support API that were taken or read wrongly. The real support API over
PostgreSQL and Redis.

An Idempotency-Key outside ASCII was taken or refused by its bytes: HTTP hands a header's
bytes on as Latin-1, so "é" sent as UTF-8 (C3 A9) was taken as the key "Ã©" (202, and the
`message` event named its sender's message by that key, which the sender does not know:
the tab that sent it showed it twice), while "ключ" (whose UTF-8 holds C1 control bytes
as Latin-1) was refused as not printable. A key is now printable ASCII, as the ids clients
make are (a UUID, the widget's); anything else is the same 400, whatever its encoding.

A query parameter given twice was read as its last value, without a word: `?visitor_id=
v_a&visitor_id=v_b` with a server key read v_b's history, `?token=A&token=B` checked B. A
reader in front of Parley (a proxy's rule, a filter, an audit log) may take the first, and
would check one visitor or token while Parley served another, as with a JSON body that names
a key twice, which the API already refuses (400). A repeated query parameter is now 400 too,
naming it, on every endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import Worker, bearer, new_visitor, support_worker

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def worker(postgres_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix,
        backend=ScriptedBackend(lambda _r: "fine"),
    ) as w:  # fmt: skip
        yield w


@pytest.mark.parametrize(
    "key", ["é".encode(), "é".encode("latin-1"), "ключ".encode(), "retry-1\u00a0".encode()]
)
async def test_a_key_outside_ascii_is_refused_whatever_its_encoding(
    worker: Worker, key: bytes
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        headers = {**bearer(visitor["token"]), "Idempotency-Key": key}
        posted = await client.post("/v1/messages", headers=headers, json={"text": "hello"})
        assert posted.status_code == 400, posted.text
        assert posted.json()["error"] == {
            "code": "invalid_request",
            "message": "Idempotency-Key: 1 to 128 printable ASCII characters",
        }
        # Nothing was recorded.
        page = await client.get("/v1/history", headers=bearer(visitor["token"]))
        assert page.json()["messages"] == []


async def test_a_printable_ascii_key_is_taken(worker: Worker) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        headers = {**bearer(visitor["token"]), "Idempotency-Key": "5f1c-9a ~!"}
        first = await client.post("/v1/messages", headers=headers, json={"text": "hello"})
        again = await client.post("/v1/messages", headers=headers, json={"text": "hello"})
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["message_id"] == again.json()["message_id"]


async def test_a_repeated_query_parameter_is_refused_naming_it(worker: Worker) -> None:
    site = await worker.add_site("shop")
    _, secret = await worker.adapter.sites.add_key("shop")
    await worker.adapter.directory.refresh(force=True)
    server = bearer(secret)
    async with worker.client() as client:
        one = await new_visitor(client, site)
        other = await new_visitor(client, site)
        visitor = bearer(one["token"])
        posted = await client.post("/v1/messages", headers=visitor, json={"text": "keep me"})
        assert posted.status_code == 202, posted.text
        both = f"visitor_id={one['visitor_id']}&visitor_id={other['visitor_id']}"
        cases = [
            ("GET", f"/v1/history?{both}", server, "visitor_id"),
            ("GET", "/v1/history?limit=5&limit=6", visitor, "limit"),
            ("GET", f"/v1/events?token={other['token']}&token={one['token']}", {}, "token"),
            ("GET", "/v1/events?last_event_id=0&last_event_id=1-0", visitor, "last_event_id"),
            ("DELETE", f"/v1/visitor?{both}", server, "visitor_id"),
        ]  # fmt: skip
        for method, url, headers, name in cases:
            response = await client.request(method, url, headers=headers)
            assert response.status_code == 400, (url, response.text)
            assert response.json()["error"] == {
                "code": "invalid_request",
                "message": f'the query names "{name}" twice',
            }, url
        # Nothing was erased; one of each is read as before.
        kept = {"visitor_id": one["visitor_id"]}
        page = await client.get("/v1/history", headers=server, params=kept)
    assert page.status_code == 200, page.text
    assert "keep me" in [m["text"] for m in page.json()["messages"]]
