"""A fault-injecting OpenAI-compatible server: a real HTTP server (Starlette on uvicorn, in a
thread) for the resilience tests.

It speaks `/v1/chat/completions` (SSE streaming with usage), `/v1/models`, `/tokenize` and
`/health`. Each chat request draws one fault from `Faults` with a seeded RNG: 503, 429 with
Retry-After, a hang before the stream, a hang during it, a stream cut after `cut_at` chunks,
HTTP 400 "maximum context length", or a malformed event. A good reply is
`"<name>-<n>: w1 w2 ..."`, unique per request, so a test can tell which request a consumer's
text came from and whether any text arrived twice. Every reply sent is kept in `sent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.ports import free_port

MODEL = "fault"
MAX_MODEL_LEN = 4096
CONTEXT_ERROR = "This model's maximum context length is 4096 tokens."


@dataclass
class Faults:
    """Probabilities of each fault per chat request (the rest are answered well)."""

    unavailable: float = 0.0  # 503
    throttled: float = 0.0  # 429 with Retry-After
    hang_before: float = 0.0
    hang_during: float = 0.0
    cut: float = 0.0
    context: float = 0.0
    malformed: float = 0.0
    retry_after_s: float = 0.05
    hang_s: float = 30.0
    cut_at: int = 2
    # False: refuse response_format (a server without structured outputs).
    structured: bool = True
    seed: int = 0


_KINDS = ("unavailable", "throttled", "hang_before", "hang_during", "cut", "context", "malformed")


class FaultServer:
    def __init__(self, name: str, port: int, faults: Faults | None = None) -> None:
        self.name = name
        self.base_url = f"http://127.0.0.1:{port}"
        self.requests: Counter[str] = Counter()  # by path
        self.faults_drawn: Counter[str] = Counter()
        self.sent: list[str] = []  # full text of every reply streamed
        self.peers: set[tuple[str, int]] = set()  # client (host, port): one per TCP connection
        self.configure(faults or Faults())
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models),
                Route("/tokenize", self._tokenize, methods=["POST"]),
                Route("/health", lambda _: Response()),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def configure(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def chat_requests(self) -> int:
        return self.requests["/v1/chat/completions"]

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fault server {self.name} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _draw(self) -> str:
        roll = self._rng.random()
        for kind in _KINDS:
            roll -= getattr(self.faults, kind)
            if roll < 0:
                self.faults_drawn[kind] += 1
                return kind
        return "none"

    async def _chat(self, request: Request) -> Response:
        self.requests[request.url.path] += 1
        if request.client is not None:
            self.peers.add((request.client.host, request.client.port))
        number = self.chat_requests  # before any await: concurrent requests get their own
        body = await request.json()
        if "response_format" in body and not self.faults.structured:
            return _error(400, "response_format is not supported")
        fault = self._draw()
        if fault == "unavailable":
            return _error(503, "overloaded")
        if fault == "throttled":
            headers = {"Retry-After": str(self.faults.retry_after_s)}
            return _error(429, "too many requests", headers)
        if fault == "context":
            return _error(400, CONTEXT_ERROR)
        if fault == "hang_before" and not await _hang_until_gone(request, self.faults.hang_s):
            return Response(status_code=499)  # nobody left to answer (nginx's "client closed")
        limit = int(body.get("max_tokens", 16))
        words = _words(f"{self.name}-{number}", limit)
        self.sent.append("".join(words))
        # As a real server: "length" when the answer ran into max_tokens, else "stop".
        finish = "length" if len(words) >= limit else "stop"
        events = self._events(words, fault, _prompt_tokens(body), finish)
        return StreamingResponse(events, media_type="text/event-stream")

    async def _events(
        self, words: list[str], fault: str, prompt: int, finish: str
    ) -> AsyncIterator[str]:
        if fault == "malformed":
            yield "data: {this is not json\n\n"
        for i, word in enumerate(words):
            if fault == "cut" and i == self.faults.cut_at:
                return  # the connection ends without finish_reason or [DONE]
            if fault == "hang_during" and i == 1:
                await asyncio.sleep(self.faults.hang_s)
            yield _event({"choices": [{"index": 0, "delta": {"content": word}}]})
            await asyncio.sleep(0)
        yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words)}
        yield _event({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    async def _models(self, request: Request) -> Response:
        self.requests[request.url.path] += 1
        return JSONResponse({"data": [{"id": MODEL, "max_model_len": MAX_MODEL_LEN}]})

    async def _tokenize(self, request: Request) -> Response:
        self.requests[request.url.path] += 1
        count = _prompt_tokens(await request.json())
        return JSONResponse({"tokens": list(range(count)), "count": count})


async def _hang_until_gone(request: Request, seconds: float) -> bool:
    """Hang up to `seconds`; False as soon as the client went away, as a real server notices
    (and so no hung handler is left for the shutdown to cancel)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        if await request.is_disconnected():
            return False
        await asyncio.sleep(min(0.05, max(0.0, until - loop.time())))
    return True


def _words(tag: str, count: int) -> list[str]:
    """A reply unique to this request: its tag, then numbered words."""
    return [f"{tag}:"] + [f" w{i}" for i in range(1, max(2, min(count, 12)))]


def _prompt_tokens(body: dict[str, object]) -> int:
    """Whitespace words: a stand-in tokenizer, exact enough for the core's bookkeeping."""
    messages = body.get("messages")
    if isinstance(messages, list):
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        return len(text.split()) + 4 * len(messages)
    return len(str(body.get("prompt", "")).split())


def _event(data: object) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message}}, status, headers=headers)


@contextlib.contextmanager
def fault_server(name: str, faults: Faults | None = None) -> Iterator[FaultServer]:
    """A started FaultServer on a free port, stopped afterwards."""
    server = FaultServer(name, free_port(), faults)
    server.start()
    try:
        yield server
    finally:
        server.stop()
