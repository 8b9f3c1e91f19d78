"""Errors of the support API carry the CORS header for an origin a site lists, also when they
come before the caller's site is known (an expired or bad token, a bad body): the widget must
read a 401 to renew its token. Never for an origin no site lists, never `*`, and not on the
403 that refuses an origin for the caller's site (docs/support.md, "CORS"). The real adapter
over HTTP, on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from adapters.support.sites import Site
from adapters.support.tokens import TokenSigner, load_secret
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    ORIGIN,
    OTHER_ORIGIN,
    SECRET,
    Worker,
    bearer,
    last_user_text,
    new_visitor,
    support_worker,
)

BLOG_ORIGIN = "https://blog.example"


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    async with support_worker(url, redis_url=None, backend=backend) as w:
        yield w


def expired_token(site: Site, visitor_id: str) -> str:
    """A token the server signed, as it would have, a minute past its expiry."""
    token, _ = TokenSigner(load_secret(SecretStr(SECRET)), ttl_s=-60).issue(
        site.id, site.public_key, visitor_id
    )
    return token


async def test_supfix_an_expired_token_is_a_readable_401_and_is_renewed(worker: Worker) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        old = expired_token(site, visitor["visitor_id"])
        sent = await client.post("/v1/messages", headers=bearer(old), json={"text": "hi"})
        assert sent.status_code == 401
        assert sent.json()["error"]["message"].startswith("the token has expired; ")
        assert sent.headers["access-control-allow-origin"] == ORIGIN
        assert sent.headers["vary"] == "Origin"
        # What the widget then does (renewAfter401): the same visitor, a new token.
        renewed = await new_visitor(client, site, visitor_token=old)
        assert renewed["visitor_id"] == visitor["visitor_id"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"text": ""}', 422, "text: String should have at least 1 character"),
        (b'{"text": "a\\u0000b"}', 422, "text: must not contain a NUL character"),
        (b"{}", 422, "text: Field required"),
        (b'{"text": ', 400, "the body is not valid JSON"),
        (b'{"text": "' + b"x" * 70_000 + b'"}', 413, "the body is larger than 64000 bytes"),
    ],
)
async def test_supfix_a_bad_body_is_a_readable_error(
    worker: Worker, body: bytes, status: int, says: str
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        headers = {**bearer(visitor["token"]), "Content-Type": "application/json"}
        sent = await client.post("/v1/messages", headers=headers, content=body)
    assert sent.status_code == status
    assert sent.json()["error"]["message"] == says
    assert sent.headers["access-control-allow-origin"] == ORIGIN


async def test_supfix_a_bad_token_on_the_event_stream_is_a_readable_401(worker: Worker) -> None:
    await worker.add_site("shop")
    async with worker.client() as client:
        refused = await client.get("/v1/events", params={"token": "bad.token"})
    assert refused.status_code == 401
    assert refused.json()["error"] == {"code": "unauthorized", "message": "the token is not valid"}
    assert refused.headers["access-control-allow-origin"] == ORIGIN


async def test_supfix_errors_never_name_an_origin_no_site_lists(worker: Worker) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as own:
        visitor = await new_visitor(own, site)
    old = expired_token(site, visitor["visitor_id"])
    async with worker.client(origin=OTHER_ORIGIN) as stranger:
        answers = [
            await stranger.post("/v1/messages", headers=bearer(old), json={"text": "hi"}),
            await stranger.post("/v1/messages", headers=bearer(visitor["token"]), json={}),
            await stranger.get("/v1/events", params={"token": "bad.token"}),
        ]
    assert [a.status_code for a in answers] == [401, 422, 401]
    assert all("access-control-allow-origin" not in a.headers for a in answers)


async def test_supfix_the_origin_refusal_stays_unreadable_to_another_sites_page(
    worker: Worker,
) -> None:
    """A page of another site (its origin listed, but not by the token's site): its 403 has no
    CORS header, as before; its expired token's 401 (no site known yet) has one."""
    shop = await worker.add_site("shop")
    await worker.add_site("blog", origins=(BLOG_ORIGIN,))
    async with worker.client() as own:
        visitor = await new_visitor(own, shop)
    async with worker.client(origin=BLOG_ORIGIN) as blog:
        moved = await blog.get("/v1/history", headers=bearer(visitor["token"]))
        old = expired_token(shop, visitor["visitor_id"])
        expired = await blog.get("/v1/history", headers=bearer(old))
    assert moved.status_code == 403 and "access-control-allow-origin" not in moved.headers
    assert expired.status_code == 401
    assert expired.headers["access-control-allow-origin"] == BLOG_ORIGIN
    assert all(a.headers.get("access-control-allow-origin") != "*" for a in (moved, expired))
