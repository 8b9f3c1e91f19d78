"""A stand-in OpenAI-compatible model server that streams slowly, for tests that run real
`parley run` processes: /v1/models (with max_model_len, as vLLM reports it) and a streaming
/v1/chat/completions whose reply is `words` words, one every `delay_s`, then the usage chunk
and [DONE], the shapes vLLM sends. No /tokenize: Parley then estimates token counts.

Each request's first word says which user message it answers ("re:<text>"), so a test can
tell the answers apart. With `flaky`, it fails like an overloaded server: a share of requests
answered 503, 429 with Retry-After, or held without a word until the client gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.local_server import serving

MODEL = "slow-model"


@dataclass(frozen=True)
class Flaky:
    unavailable: float = 0.30
    throttled: float = 0.10
    hang: float = 0.05
    retry_after_s: float = 1.0
    seed: int = 7


@dataclass
class SlowModel:
    words: int = 12
    delay_s: float = 0.25
    flaky: Flaky | None = None
    requests: int = 0
    started: int = 0
    finished: int = 0
    # Set when a reply's first word went out: a test can act mid-answer.
    streaming: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.flaky.seed if self.flaky else 0)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._complete, methods=["POST"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def serving(self, port: int = 0) -> AsyncIterator[str]:
        async with serving(self.app(), port) as bound:
            yield f"http://127.0.0.1:{bound}"

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]}
        )

    async def _complete(self, request: Request) -> Response:
        self.requests += 1
        body = await request.json()
        asked = body["messages"][-1]["content"]
        if self.flaky is not None:
            roll = self._rng.random()
            f = self.flaky
            if roll < f.unavailable:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if roll < f.unavailable + f.throttled:
                headers = {"Retry-After": f"{f.retry_after_s:g}"}
                body_ = {"error": {"message": "too many requests"}}
                return JSONResponse(body_, status_code=429, headers=headers)
            if roll < f.unavailable + f.throttled + f.hang:
                while not await request.is_disconnected():  # noqa: ASYNC110 (held until the client gives up)
                    await asyncio.sleep(0.5)
                return Response(status_code=499)
        return StreamingResponse(self._events(asked), media_type="text/event-stream")

    async def _events(self, asked: str) -> AsyncIterator[str]:
        self.started += 1
        for n in range(self.words):
            word = f"re:{asked}" if n == 0 else f"w{n}"
            yield _event({"choices": [{"index": 0, "delta": {"content": f"{word} "}}]})
            self.streaming.set()
            await asyncio.sleep(self.delay_s)
        yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 10, "completion_tokens": self.words, "total_tokens": 22}
        yield _event({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
        self.finished += 1


def _event(data: object) -> str:
    return f"data: {json.dumps(data)}\n\n"
