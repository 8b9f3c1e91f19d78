"""Structured output: a reply that is JSON matching a pydantic model.

    intent = await generate_json(backend, messages, Intent)

The model's JSON schema travels in `GenerationRequest.json_schema`; each backend turns it into
its server's constrained decoding (in-process vLLM: `StructuredOutputsParams(json=...)`;
over HTTP: `response_format` of type `json_schema`), so even a weak model can only produce
text that parses. The reply is still validated with pydantic, and asked for once more when it
does not validate (a reply cut by `max_tokens`, or a server that ignored the schema).

Errors: `StructuredOutputUnsupported` (a BackendError) when the server refuses the schema
request; `InvalidStructuredOutput` when both tries gave JSON that does not validate; other
`BackendError`s as the backend raises them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import pydantic

from backends.base import Backend, GenerationRequest
from bot.errors import BackendError, BackendTimeout, BackendUnavailable, ContextTooLong
from bot.types import ChatMessage

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pydantic.BaseModel)

# Low temperature: a classifier wants the likeliest answer, not a creative one.
DEFAULT_TEMPERATURE = 0.0


class StructuredOutputUnsupported(BackendError):
    """The backend refused a request for schema-constrained output."""


class InvalidStructuredOutput(BackendError):
    """The backend's reply did not validate against the schema, twice."""


async def generate_json(
    backend: Backend,
    messages: Sequence[ChatMessage],
    model: type[M],
    *,
    max_tokens: int = 256,
    temperature: float = DEFAULT_TEMPERATURE,
    session_id: str | None = None,
    attempts: int = 2,
) -> M:
    """A `model` instance from the backend's schema-constrained reply to `messages`."""
    schema = closed_schema(model.model_json_schema())
    problem = ""
    for attempt in range(1, attempts + 1):
        request = GenerationRequest(
            messages=list(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            session_id=session_id,
            json_schema=schema,
        )
        text = await _reply_text(backend, request)
        try:
            return model.model_validate_json(text)
        except pydantic.ValidationError as exc:
            problem = f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
            # Not the reply itself: it quotes the user's message (intents copy it out).
            log.info("structured reply %d invalid (%s), %d characters", attempt, problem, len(text))
    raise InvalidStructuredOutput(
        f"no reply matching {model.__name__} after {attempts} tries ({problem})"
    )


def closed_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with `additionalProperties: false` on every object that does not say: otherwise
    constrained decoding lets a model invent keys until it runs out of tokens."""
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        schema = {**schema, "additionalProperties": False}
    return {
        key: closed_schema(value)
        if isinstance(value, dict)
        else [closed_schema(v) if isinstance(v, dict) else v for v in value]
        if isinstance(value, list)
        else value
        for key, value in schema.items()
    }


async def _reply_text(backend: Backend, request: GenerationRequest) -> str:
    parts: list[str] = []
    try:
        async with contextlib.aclosing(backend.stream(request)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
    except (BackendUnavailable, BackendTimeout, ContextTooLong):
        raise
    except BackendError as exc:
        # Anything else is a refusal of the request itself, most likely of its schema.
        raise StructuredOutputUnsupported(
            f"the backend refused response_format (schema-constrained JSON): {exc}"
        ) from exc
    return "".join(parts)
