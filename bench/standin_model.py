"""A stand-in OpenAI-compatible model server for bench.turn_overhead, in its own process:
`/v1/models` and a streaming `/v1/chat/completions` that sends WORDS words at once, the
usage chunk and [DONE], as vLLM does. `python -m bench.standin_model PORT`."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = 8


async def models(_request: Request) -> Response:
    return JSONResponse(
        {"object": "list", "data": [{"id": "standin", "object": "model", "max_model_len": 4096}]}
    )


async def complete(request: Request) -> Response:
    await request.json()
    return StreamingResponse(_events(), media_type="text/event-stream")


async def _events() -> AsyncIterator[str]:
    for n in range(WORDS):
        yield _event({"choices": [{"index": 0, "delta": {"content": f"w{n} "}}]})
    yield _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 10, "completion_tokens": WORDS, "total_tokens": 10 + WORDS}
    yield _event({"choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _event(data: object) -> str:
    return f"data: {json.dumps(data)}\n\n"


APP = Starlette(
    routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", complete, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(APP, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
