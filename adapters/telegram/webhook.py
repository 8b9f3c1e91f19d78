"""Webhook mode: Telegram posts each update to Parley's HTTP server (adapters.kit.http).

Telegram re-sends an update until it gets a 2xx, so the 200 goes out only after the update
was acted on, which for a message means it is recorded in SQL; a database that cannot take it
gets 503 and Telegram tries again. A body that is not an update Parley can read (not JSON, a
message that is a string, text that is a number, a date out of range, JSON nested past
Python's limits) gets 400: re-sending it would never help. The secret header is compared in
constant time; a request without it is refused before anything is read or stored, and the
secret is never logged (uvicorn's access log is off: a bot's traffic is its users' business).
A request without the secret, which anyone can send, is logged at most once a minute
(bot.logthrottle): the first at once.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import Bot, Update

from bot.errors import StorageError
from bot.logthrottle import ThrottledLog

from .translate import Action, BotIdentity, translate

T = TypeVar("T")

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Refusals told in the log before the sender is known to be Telegram (bot.logthrottle).
REFUSALS = frozenset({"wrong secret"})


class MalformedUpdate(ValueError):
    """The body is not an update this bot can read."""


def webhook_route(
    read: Callable[[bytes], T],
    act: Callable[[T], Awaitable[object]],
    secret: str,
    path: str,
    *,
    refusals: ThrottledLog | None = None,
) -> Route:
    """POST `path`: `read` turns the body into an action (MalformedUpdate: 400), `act` does it
    (StorageError: 503, so that Telegram re-sends). `refusals`: the log of refused requests
    (a new one: at most one line a minute)."""
    expected = secret.encode()
    refused = refusals if refusals is not None else ThrottledLog(log, REFUSALS)

    async def receive(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            refused.warning(
                "wrong secret", "webhook: request without the right secret from %s", _peer(request)
            )
            return Response(status_code=403)
        try:
            action = read(await request.body())
        except MalformedUpdate as exc:
            log.warning("webhook: malformed update: %s", exc)
            return Response(status_code=400)
        try:
            await act(action)
        except StorageError as exc:
            log.error("webhook: update not recorded, Telegram will retry: %s", exc)
            return Response(status_code=503)
        return Response(status_code=200)

    return Route(path, receive, methods=["POST"])


def parse_update(body: bytes, bot: Bot) -> Update:
    """An Update from a webhook body, or MalformedUpdate (never another exception)."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise MalformedUpdate("not an update")
        return Update.de_json(data, bot)
    except MalformedUpdate:
        raise
    except Exception as exc:  # what PTB raises on odd shapes varies: TypeError, KeyError, ...
        raise MalformedUpdate(type(exc).__name__) from None


def read_update(body: bytes, bot: Bot, me: BotIdentity) -> tuple[int, Action]:
    """A webhook body as (update_id, action), or MalformedUpdate (never another exception):
    PTB keeps fields of the wrong type as they came, so translating can fail too."""
    update = parse_update(body, bot)
    try:
        return update.update_id, translate(update, me)
    except Exception as exc:  # a number for text, a string for a chat, ...
        raise MalformedUpdate(type(exc).__name__) from None


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"
