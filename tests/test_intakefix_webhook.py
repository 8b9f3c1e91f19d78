"""A Telegram webhook update whose text has a lone surrogate (a JSON escape such as
`\\ud800`, which the Bot API passes on), with a model that counts tokens as vLLM's /tokenize
does: answered 200, recorded with U+FFFD, answered once, also when Telegram sends it again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from adapters.telegram.webhook import SECRET_HEADER, webhook_route
from tests.fault_server import MODEL, FaultServer, fault_server
from tests.local_server import serving
from tests.telegram_updates import telegram_stack, text_update

SECRET = "s3cret-webhook-token"


@pytest.fixture
def model() -> Iterator[FaultServer]:
    with fault_server("m") as server:
        yield server


async def test_a_lone_surrogate_in_a_webhook_update_is_answered_once(
    tmp_path: Path, model: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    # json.dumps writes a lone surrogate as the escape \ud800, as a JSON body carries it.
    body = json.dumps(text_update(1, 42, "hello \ud800 lone")).encode()
    assert b"\\ud800" in body
    backend = {"kind": "openai", "base_url": model.base_url, "model": MODEL}
    core = {"backend": backend}
    async with telegram_stack(tmp_path, core=core, stream_interval_s=0.05) as stack:
        app, adapter, api = stack
        route = webhook_route(adapter.read_webhook_body, adapter.act_on, SECRET, "/tg")
        headers = {SECRET_HEADER: SECRET, "content-type": "application/json"}
        async with serving(Starlette(routes=[route])) as port, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{port}/tg"
            first = await client.post(url, content=body, headers=headers)
            await adapter.idle()
            again = await client.post(url, content=body, headers=headers)  # a re-send
        await adapter.idle()
        assert (first.status_code, again.status_code) == (200, 200)
        assert model.requests["/tokenize"] > 1  # the probe, then the message's count
        assert api.texts(42) == model.sent and len(model.sent) == 1
        assert [m.content for m in await app.store.history(1, 10)] == [
            "hello \ufffd lone",
            model.sent[0],
        ]
    assert "Traceback" not in caplog.text
