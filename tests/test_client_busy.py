"""A full connection pool of Parley's own model client is not the server's failure: the
request fails as ClientBusy (retried like an unreachable server), and the circuit breaker,
which would cut every user off from a healthy server, does not count it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from backends.base import GenerationRequest
from backends.breaker import BreakerState
from backends.openai_compat import OpenAICompatBackend
from backends.resilience import ResilientBackend
from bot.errors import ClientBusy
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.local_server import serving


def _held_server(release: asyncio.Event) -> Starlette:
    async def chat(request: Request) -> StreamingResponse:
        await request.body()

        async def events() -> AsyncIterator[str]:
            yield 'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
            await release.wait()  # the reply goes on streaming until the test ends it
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def test_a_full_client_pool_fails_without_opening_the_breaker() -> None:
    release = asyncio.Event()
    async with serving(_held_server(release)) as port:
        # connect_s bounds both a connection's opening and the wait for a free one: long
        # enough that the four opening on a loaded machine are not cut off (0.3 s once was,
        # in a CI run), short enough that the fifth's wait for the full pool ends soon.
        settings = BackendSettings(
            kind="openai", base_url=f"http://127.0.0.1:{port}", model="m",
            timeouts={"connect_s": 2.0}, retry={"attempts": 1},  # type: ignore[arg-type]
            breaker={"failure_threshold": 1},  # type: ignore[arg-type]
        )  # fmt: skip
        inner = OpenAICompatBackend(settings, concurrency=1)  # at most 4 connections
        backend = ResilientBackend(inner, settings)
        request = GenerationRequest([ChatMessage(Role.USER, "hello")], max_tokens=8)
        streams = [backend.stream(request) for _ in range(4)]
        async with contextlib.AsyncExitStack() as stack:
            for stream in streams:  # four replies streaming: every connection in use
                await stack.enter_async_context(contextlib.aclosing(stream))
                assert (await anext(stream)).text == "hi"
            with pytest.raises(ClientBusy):
                async for _ in backend.stream(request):
                    pass
            assert backend.breaker.state is BreakerState.CLOSED
            release.set()
        await inner.aclose()
