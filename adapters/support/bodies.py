"""Reading a request: its JSON body as a pydantic model, its Idempotency-Key and its whole
number parameters, each refused with a short ApiError (adapters/support/errors.py)."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from bot.text.storable import REPLACEMENT

from .errors import ApiError, invalid

_Model = TypeVar("_Model", bound=BaseModel)

IDEMPOTENCY_KEY_MAX = 128
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


async def read_body(
    request: Request, model: type[_Model], limit: int, *, optional: bool = False
) -> _Model:
    """The JSON body as `model`: 413 over `limit` bytes (before reading it all when the size
    is declared), 400 when it is not UTF-8, no JSON object or names a key twice, 422 naming
    the first field that is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None and _digits(declared) and int(declared) > limit:
        raise _too_large(limit)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise _too_large(limit)
    if not raw.strip() and optional:
        return model()
    try:
        # UTF-8, as JSON on the wire is (RFC 8259; a leading byte order mark it lets a parser
        # ignore): json.loads guessed UTF-16 or -32 from the bytes, which a filter in front
        # of Parley reads as letters between NULs, and took a message it never checked.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError):  # RecursionError: nesting
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    _lone_surrogates_replaced(data)
    try:
        # Strict: JSON has its own types; "yes" or 1 is no boolean, nor 5 a string.
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise invalid(exc) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different, else 400: Python's json keeps the last of two
    equal keys where another reader (a proxy, a filter in front of Parley) may keep the
    first, and would check one text while Parley records another."""
    data = dict(pairs)
    if len(data) == len(pairs):
        return data
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            # As JSON writes it (escaped where not printable), its first 40 characters.
            shown = json.dumps(key[:40], ensure_ascii=not key.isprintable())
            raise ApiError(400, "malformed_json", f"the body names {shown} twice")
        seen.add(key)
    return data  # not reached: a shorter dict has a key twice


def _lone_surrogates_replaced(data: dict[str, Any]) -> None:
    """JSON may escape half of a UTF-16 pair alone ("\\ud800"), which no text can hold: each
    becomes U+FFFD in place, as the core makes every message storable, so such a message is
    taken (and answered once) rather than refused for an encoding it cannot fix. In a field's
    name too: left as it was, pydantic blamed the whole body ("body: Input should be a valid
    string"), where the field is now named, as any the API does not know."""
    containers: list[Any] = [data]  # dicts and lists, walked without recursion
    while containers:
        container = containers.pop()
        places = container.items() if isinstance(container, dict) else enumerate(container)
        for place, value in list(places):
            if isinstance(place, str) and _LONE_SURROGATE.search(place):
                del container[place]
                place = _LONE_SURROGATE.sub(REPLACEMENT, place)
                container[place] = value
            if isinstance(value, str) and _LONE_SURROGATE.search(value):
                container[place] = _LONE_SURROGATE.sub(REPLACEMENT, value)
            elif isinstance(value, dict | list):
                containers.append(value)


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header, checked: 1 to 128 printable ASCII characters. ASCII: a
    header's other bytes reach here as Latin-1, whatever the client meant, so "é" sent as
    UTF-8 was the key "Ã©", which the `message` event then named and its sender did not know."""
    value = request.headers.get("idempotency-key")
    if value is not None and not (
        0 < len(value) <= IDEMPOTENCY_KEY_MAX and value.isascii() and value.isprintable()
    ):
        told = "Idempotency-Key: 1 to 128 printable ASCII characters"
        raise ApiError(400, "invalid_request", told)
    return value


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the body is larger than {limit} bytes")


def int_param(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not _digits(raw) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_request", f"{name}: a whole number from {low} to {high}")
    return int(raw)


def _digits(text: str) -> bool:
    # ASCII digits only: str.isdigit() takes "²" too, which int() then refuses (a 500).
    return text.isascii() and text.isdigit()
