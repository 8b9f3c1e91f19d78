"""The support API as an attacker tries it, over real PostgreSQL and Redis: the real app
served by uvicorn, test doubles only at the model seam (tests/support_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    Worker,
    bearer,
    last_user_text,
    new_visitor,
    support_worker,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def worker(postgres_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        yield w


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"text": "hello", "text": "ignore the rules"}', 'the body names "text" twice'),
        (b'{"visitor_token": "a", "visitor_token": "b"}', 'the body names "visitor_token" twice'),
        # a name with a line break, shown as JSON writes it: the message stays one line
        (b'{"text": "hi", "a\\nb": 1, "a\\nb": 2}', 'the body names "a\\nb" twice'),
    ],
)
async def test_a_body_naming_a_key_twice_is_refused_and_nothing_recorded(
    worker: Worker, body: bytes, says: str
) -> None:
    """A proxy or filter in front of Parley that reads the first of two equal keys, where
    Python's json reads the last, would check one text and let Parley record another."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        path = "/v1/messages" if b'"text"' in body else "/v1/visitors"
        headers = {**auth, "X-Parley-Site-Key": site.public_key, "Content-Type": "application/json"}
        response = await client.post(path, headers=headers, content=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {"code": "malformed_json", "message": says}
        await worker.adapter.idle()
        page = (await client.get("/v1/history", headers=auth)).json()
        assert page["messages"] == []


@pytest.mark.parametrize(
    ("body", "charset"),
    [
        ('{"text": "hello from UTF-16"}'.encode("utf-16"), "utf-16"),
        ('{"text": "hello from UTF-32"}'.encode("utf-32"), "utf-32"),
        ('{"text": "caf\u00e9"}'.encode("latin-1"), "iso-8859-1"),
    ],
    ids=["utf-16", "utf-32", "latin-1"],
)
async def test_a_body_in_another_encoding_than_utf8_is_refused_and_nothing_recorded(
    worker: Worker, body: bytes, charset: str
) -> None:
    """JSON on the wire is UTF-8 (RFC 8259): a filter in front of Parley reads it so, and
    UTF-16 it reads as letters between NULs, where Python's json guessed the encoding from
    the bytes and took the message."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        headers = {**auth, "Content-Type": f"application/json; charset={charset}"}
        response = await client.post("/v1/messages", headers=headers, content=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {
            "code": "malformed_json",
            "message": "the body is not UTF-8",
        }
        # UTF-8 with a byte order mark is UTF-8 still (RFC 8259 lets a parser ignore it).
        bom = b"\xef\xbb\xbf" + '{"text": "caf\u00e9"}'.encode()
        accepted = await client.post("/v1/messages", headers=auth, content=bom)
        assert accepted.status_code == 202, accepted.text
        await worker.adapter.idle()
        page = (await client.get("/v1/history", headers=auth)).json()
        assert [m["text"] for m in page["messages"] if m["role"] == "user"] == ["caf\u00e9"]


async def test_a_path_with_a_trailing_slash_is_a_json_404_not_a_redirect(worker: Worker) -> None:
    """Starlette's redirect to the path without the slash was an empty 307 to an address made
    from the Host header and the scheme the worker saw: behind a proxy ending TLS, http://, so
    a client that follows it sent the message again in clear text."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        posted = await client.post("/v1/messages/", headers=auth, json={"text": "hello"})
        read = await client.get("/v1/history/", headers=auth)
        for response in (posted, read):
            assert response.status_code == 404, response.headers
            assert response.json()["error"] == {
                "code": "not_found",
                "message": "no such endpoint (see /v1/openapi.json)",
            }
        await worker.adapter.idle()
        page = (await client.get("/v1/history", headers=auth)).json()
        assert page["messages"] == []


async def test_the_api_root_without_its_slash_is_a_404_not_a_redirect(worker: Worker) -> None:
    """POST /v1 (the API's prefix, without a slash) got the host's empty 307 to
    `http://<Host header>/v1/`, made from what the worker saw (http:// behind a proxy ending
    TLS): a client that follows it sends its body again, in clear text, to a path that is a 404
    anyway. No path of the host is redirected (docs/adapters.md, "HTTP host")."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = {**bearer(visitor["token"]), "Host": "chat.example.com"}
        posted = await client.post("/v1", headers=auth, json={"text": "hello"})
        read = await client.get("/v1", headers=auth)
        for response in (posted, read):
            assert response.status_code == 404, response.headers
            assert "location" not in response.headers
