"""Unknown paths and methods under /v1 answer in the API's documented error format
(`{"error": {...}}`, docs/support.md), not Starlette's plain text, with CORS headers for an
origin a site lists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.doubles import ScriptedBackend
from tests.support_helpers import ORIGIN, OTHER_ORIGIN, Worker, support_worker


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    async with support_worker(url, redis_url=None, backend=ScriptedBackend()) as w:
        await w.add_site("shop")
        yield w


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nope", 404, "not_found"),
        ("POST", "/v1/handoff/nope", 404, "not_found"),
        ("GET", "/v1/messages", 405, "method_not_allowed"),
        ("PUT", "/v1/visitor", 405, "method_not_allowed"),
    ],
)
async def test_sup_unknown_routes_and_methods_answer_json_errors(
    worker: Worker, method: str, path: str, status: int, code: str
) -> None:
    async with worker.client() as client:
        response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert response.headers["access-control-allow-origin"] == ORIGIN
    if status == 405:
        assert "POST" in response.headers["allow"] or "DELETE" in response.headers["allow"]


async def test_sup_an_origin_no_site_lists_gets_no_cors_header(worker: Worker) -> None:
    async with worker.client(origin=OTHER_ORIGIN) as client:
        response = await client.get("/v1/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert "access-control-allow-origin" not in response.headers


async def test_sup_the_endpoints_and_pages_still_answer(worker: Worker) -> None:
    """The API lives in an app of its own under /v1: its routes, the OpenAPI document and the
    widget (outside /v1) are where they were."""
    async with worker.client() as client:
        assert (await client.get("/v1/openapi.json")).json()["openapi"]
        assert (await client.get("/widget.js")).status_code == 200
        refused = await client.post("/v1/visitors")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    # No site named, but an origin some site lists: the page may read why (docs/support.md).
    assert refused.headers.get("access-control-allow-origin") == ORIGIN
