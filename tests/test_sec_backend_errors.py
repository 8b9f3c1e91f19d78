"""A model server's error body never reaches the log: servers quote the request in it (vLLM's
validation errors the whole body, context-length errors the prompt), that is the user's text.
A real HTTP server echoes the user's message into every kind of error; the backend that the
bot talks to (retries, fallback chain) is driven through it, and every record logged at DEBUG
is searched for the message. The status, which an operator needs, is still there."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from backends.base import GenerationRequest
from backends.factory import build_resilient_backend
from bot.errors import BackendError, BackendUnavailable, ContextTooLong
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.local_server import serving

# Marked by words no log line has otherwise: hex digits alone ("7c1e", "4111") turn up in the
# object addresses and ports of httpcore's DEBUG lines.
MARK = "quokka-user-text"
CARD = "4111 1111 1111 1111"
USER_TEXT = f"{MARK} my card is {CARD}, do-not-log"

Answer = Callable[[str], Response]


def vllm_validation_error(text: str) -> Response:
    # vLLM's flat error object, quoting the request as pydantic saw it.
    message = f"[{{'type': 'string_type', 'input': {{'role': 'user', 'content': {text!r}}}}}]"
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None,
            "code": 400}  # fmt: skip
    return JSONResponse(body, status_code=400)


def context_error(text: str) -> Response:
    message = f"This model's maximum context length is 1024 tokens. Your messages: {text}"
    error = {"message": message, "type": "BadRequestError", "code": 400}
    return JSONResponse({"error": error}, status_code=400)


def overloaded(text: str) -> Response:
    error = {"message": f"overloaded while serving {text!r}", "type": "ServiceUnavailable"}
    return JSONResponse({"error": error}, status_code=503)


def plain_text_500(text: str) -> Response:
    return PlainTextResponse(f"Internal Server Error: {text}", status_code=500)


def error_event(text: str) -> Response:
    # After the 200 header, vLLM reports a failure as an event with its status in "code".
    error = {"message": f"generation failed for {text}", "type": "InternalServerError", "code": 500}
    return StreamingResponse(
        iter([f"data: {json.dumps({'error': error})}\n\n"]), media_type="text/event-stream"
    )


def echoing_server(answer: Answer) -> Starlette:
    """A model server that answers every chat request, and every count but start()'s probe,
    with an error quoting the user's message."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        return answer(body["messages"][-1]["content"])

    async def tokenize(request: Request) -> Response:
        prompt = (await request.json())["prompt"]
        if prompt == "ping":  # start()'s probe: this server counts tokens
            return JSONResponse({"tokens": [1]})
        return plain_text_500(prompt)

    async def models(_: Request) -> Response:
        return JSONResponse({"data": [{"id": "primary"}, {"id": "second"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )


def chain_settings(port: int) -> BackendSettings:
    url = f"http://127.0.0.1:{port}"
    return BackendSettings(
        kind="openai",
        model="primary",
        base_url=url,
        retry={"attempts": 2, "base_delay_s": 0.0},  # type: ignore[arg-type]
        fallbacks=[{"model": "second", "base_url": url}],  # type: ignore[list-item]
    )


async def fail_once(answer: Answer) -> BackendError:
    """What the chain raises for one question; its counting path is driven too."""
    async with serving(echoing_server(answer)) as port:
        backend = build_resilient_backend(chain_settings(port))
        assert backend is not None
        await backend.start()
        try:
            request = GenerationRequest(messages=[ChatMessage(Role.USER, USER_TEXT)])
            with pytest.raises(BackendError) as caught:
                async for _ in backend.stream(request):
                    pass
            assert await backend.count_tokens([USER_TEXT])  # estimated: the count failed
        finally:
            await backend.aclose()
    return caught.value


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (vllm_validation_error, 400, BackendError),
        (overloaded, 503, BackendUnavailable),
        (plain_text_500, 500, BackendUnavailable),
        (error_event, 500, BackendUnavailable),
    ],
)
async def test_an_error_quoting_the_user_is_logged_without_the_quote(
    caplog: pytest.LogCaptureFixture, answer: Answer, status: int, error: type[BackendError]
) -> None:
    caplog.set_level(logging.DEBUG)
    raised = await fail_once(answer)
    assert isinstance(raised, error)
    text = logged(caplog)
    assert MARK not in text and CARD not in text
    assert MARK not in str(raised)
    assert f"answered {status}" in text  # the fallback chain's warning, the retry's line
    assert "answered 500" in text  # the count that failed, estimated instead


async def test_a_context_error_keeps_its_kind_and_the_error_s_identifiers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    raised = await fail_once(context_error)
    assert isinstance(raised, ContextTooLong)
    assert MARK not in str(raised) and MARK not in logged(caplog)
    message = str(raised)
    assert "answered 400" in message and "type=BadRequestError" in message
    assert "code=400" in message and "characters" in message


def test_identifiers_that_are_not_identifiers_are_withheld_too() -> None:
    from backends.openai_compat import _error_for

    body: dict[str, Any] = {"error": {"message": USER_TEXT, "type": USER_TEXT, "param": "input"}}
    message = str(_error_for(422, body, {}))
    assert MARK not in message
    assert message == (
        f"the server answered 422 (param=input, message withheld, {len(USER_TEXT)} characters)"
    )


@pytest.mark.parametrize("kind", [ValueError, RuntimeError])
def test_an_engine_error_quoting_the_prompt_is_withheld(kind: type[Exception]) -> None:
    """The in-process engine's own errors (a tokenizer's or a chat template's) may quote the
    prompt: the error Parley raises names their kind and size only."""
    from tests.fixtures_vllm import require

    require("vllm")
    from backends.vllm_engine import _vllm_errors_mapped

    with pytest.raises(BackendError) as raised, _vllm_errors_mapped():
        raise kind(f"cannot render message {USER_TEXT!r}")
    assert USER_TEXT not in str(raised.value)
    assert kind.__name__ in str(raised.value)
