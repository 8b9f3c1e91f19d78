"""Webhook mode: Telegram posts each update to Parley's own HTTP server.

Telegram re-sends an update until it gets a 2xx, so the 200 goes out only after
`handle_update` returned, which means the message is recorded in SQL. The secret header is
compared in constant time; a request without it is refused before anything is read or
stored, and the secret is never logged (uvicorn's access log is off: it would log nothing
secret, but a bot's traffic is its users' business).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import Bot, Update

from bot.errors import StorageError

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def webhook_app(
    handle: Callable[[Update], Awaitable[object]], bot: Bot, secret: str, path: str = "/"
) -> Starlette:
    expected = secret.encode()

    async def receive(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            log.warning("webhook: request without the right secret from %s", _peer(request))
            return Response(status_code=403)
        update = _parse(await request.body(), bot)
        if update is None:
            return Response(status_code=400)
        try:
            await handle(update)
        except StorageError as exc:
            log.error(
                "webhook: update %d not recorded, Telegram will retry: %s", update.update_id, exc
            )
            return Response(status_code=503)
        return Response(status_code=200)

    return Starlette(routes=[Route(path, receive, methods=["POST"])])


def _parse(body: bytes, bot: Bot) -> Update | None:
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise ValueError("not an update")
        return Update.de_json(data, bot)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("webhook: malformed update: %s", exc)
        return None


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside Parley's loop: Parley owns SIGINT/SIGTERM, so uvicorn must not take
    them over; stopping is `should_exit = True`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_for(app: Starlette, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning")
    return EmbeddedServer(config)
