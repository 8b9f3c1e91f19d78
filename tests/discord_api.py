"""A local stand-in for Discord's REST API (v10), served on 127.0.0.1 for discord.py.

discord.py builds every URL from the class attribute `discord.http.Route.BASE` (public, no
underscore; discord.py itself reassigns it to change the API version), so a test points it
here for the duration of `serving()` and puts it back after. There is no option of `Client`
for another base URL: `proxy` tunnels HTTPS, and `connector` cannot drop TLS.

It keeps Discord's limits where they matter: content of at most 2,000 characters (else 400
with Discord's "Invalid Form Body" error JSON), 5 message sends or edits per 5 s per channel
(else 429 with `retry_after` in the body and Retry-After / X-RateLimit-* headers, and the
`Via` header Discord's edge adds: discord.py treats a 429 without it as a Cloudflare ban). It
records every call with its `allowed_mentions`, and keeps each channel's messages as a reader
sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord.gateway
import discord.http
import yarl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.local_server import serving

TOKEN = "MTAw.TEST-token-never-logged"
BOT_ID = 900
APP_ID = 901
BOT_USER = {"id": str(BOT_ID), "username": "parley", "discriminator": "0", "avatar": None,
            "global_name": "Parley", "bot": True}  # fmt: skip
MAX_CONTENT = 2000
EPOCH = "2026-12-01T12:00:00.000000+00:00"


@dataclass
class Call:
    method: str
    path: str
    channel_id: int
    body: dict[str, Any]
    status: int = 200

    @property
    def allowed_mentions(self) -> Any:
        return self.body.get("allowed_mentions")


@dataclass
class FakeDiscordApi:
    # Sends and edits per channel in any window (Discord: 5 per 5 s).
    per_channel: tuple[int, float] = (5, 5.0)
    retry_after_s: float = 0.05  # what a 429 asks for beyond the window's own wait
    # The next this many sends or edits are answered 429, whatever the window (a storm).
    storm: int = 0
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    # Slash commands as last synced: None for global, else the guild's id -> their names.
    synced: dict[int | None, list[str]] = field(default_factory=dict)
    # Interactions the test created: token -> (channel, created at), and when each was
    # acknowledged (deferred), by token.
    interactions: dict[str, tuple[int, float]] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)
    _seen: dict[int, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    # Attachments on the fake CDN, by file name: `cdn_url(name)` is their URL.
    files: dict[str, bytes] = field(default_factory=dict)
    base_url: str = ""
    # The gateway closes after IDENTIFY with this code when set (4014: "disallowed intents",
    # what Discord sends when Message Content is not switched on).
    gateway_close_code: int | None = None
    # The servers the bot is in, as GUILD_CREATE payloads sent after READY.
    guilds: list[dict[str, Any]] = field(default_factory=list)
    _events: asyncio.Queue[tuple[str, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    identified: list[dict[str, Any]] = field(default_factory=list)
    _originals: dict[str, int] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(10_000))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v10/users/@me", self._me),
                Route("/cdn/{name}", self._file),
                WebSocketRoute("/gateway", self._gateway),
                Route("/api/v10/oauth2/applications/@me", self._application),
                Route("/api/v10/channels/{channel:int}/messages", self._send, methods=["POST"]),
                Route(
                    "/api/v10/channels/{channel:int}/messages/{message:int}",
                    self._edit,
                    methods=["PATCH"],
                ),
                Route("/api/v10/channels/{channel:int}/typing", self._typing, methods=["POST"]),
                Route(
                    "/api/v10/channels/{channel:int}/messages/{message:int}/threads",
                    self._start_thread,
                    methods=["POST"],
                ),
                Route("/api/v10/applications/{app:int}/commands", self._sync, methods=["PUT"]),
                Route(
                    "/api/v10/applications/{app:int}/guilds/{guild:int}/commands",
                    self._sync,
                    methods=["PUT"],
                ),
                Route(
                    "/api/v10/interactions/{interaction:int}/{token}/callback",
                    self._callback,
                    methods=["POST"],
                ),
                Route(
                    "/api/v10/webhooks/{app:int}/{token}/messages/@original",
                    self._edit_original,
                    methods=["PATCH"],
                ),
            ]
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        async with serving(self.app()) as port:
            base, gateway = (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            )
            self.base_url = f"http://127.0.0.1:{port}"
            discord.http.Route.BASE = f"{self.base_url}/api/v10"
            # Like Route.BASE, a public class attribute, the URL every first connection uses.
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
                f"ws://127.0.0.1:{port}/gateway"
            )
            try:
                yield discord.http.Route.BASE
            finally:
                discord.http.Route.BASE = base
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway

    # What a test looks at ---------------------------------------------------------------

    def texts(self, channel_id: int) -> list[str]:
        """The channel's messages from the bot in order, as a reader sees them."""
        return [self.messages[channel_id][k] for k in sorted(self.messages[channel_id])]

    def writes(self, channel_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method in ("POST", "PATCH")
            and not c.path.endswith("/typing")
            and (channel_id is None or c.channel_id == channel_id)
        ]

    def refused(self) -> list[Call]:
        return [c for c in self.calls if c.status == 429]

    def expect_interaction(self, token: str, channel_id: int) -> None:
        """An interaction Discord is about to send: its token's responses go to the channel."""
        self.interactions[token] = (channel_id, time.monotonic())

    def cdn_url(self, name: str) -> str:
        return f"{self.base_url}/cdn/{name}"

    def acknowledged_within(self, token: str) -> float:
        """Seconds from the interaction's creation to its acknowledgement."""
        return self.acknowledged[token] - self.interactions[token][1]

    # Endpoints --------------------------------------------------------------------------

    async def _gateway(self, websocket: WebSocket) -> None:
        """HELLO; after IDENTIFY, READY and the guilds' GUILD_CREATE, then every event pushed
        (`push`), numbered; or a close with `gateway_close_code` when it is set."""
        await websocket.accept()
        hello = {"op": 10, "d": {"heartbeat_interval": 45_000}, "s": None, "t": None}
        await websocket.send_json(hello)
        while True:  # a heartbeat (op 1) may come first
            sent = await websocket.receive_json()
            if sent["op"] == 2:
                break
        self.identified.append(sent)
        if self.gateway_close_code is not None:
            await websocket.close(code=self.gateway_close_code)
            return
        sequence = itertools.count(1)
        ready = {"v": 10, "user": BOT_USER, "session_id": "session-1",
                 "resume_gateway_url": f"ws://{websocket.url.netloc}/gateway",
                 "guilds": [{"id": g["id"], "unavailable": True} for g in self.guilds],
                 "application": {"id": str(APP_ID), "flags": 1 << 19}}  # fmt: skip
        await websocket.send_json({"op": 0, "t": "READY", "s": next(sequence), "d": ready})
        for guild in self.guilds:
            event = {"op": 0, "t": "GUILD_CREATE", "s": next(sequence), "d": guild}
            await websocket.send_json(event)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._acknowledge_heartbeats(websocket))
            while True:
                kind, payload = await self._events.get()
                event = {"op": 0, "t": kind, "s": next(sequence), "d": payload}
                await websocket.send_json(event)

    async def _acknowledge_heartbeats(self, websocket: WebSocket) -> None:
        while True:
            if (await websocket.receive_json())["op"] == 1:
                await websocket.send_json({"op": 11})

    def push(self, kind: str, payload: dict[str, Any]) -> None:
        """A gateway event (MESSAGE_CREATE, INTERACTION_CREATE, ...) for the connected client."""
        self._events.put_nowait((kind, payload))

    async def _start_thread(self, request: Request) -> Response:
        """A thread from a message: it takes the message's id, and the gateway announces it
        (THREAD_CREATE) before any later event, as Discord does."""
        channel, message = request.path_params["channel"], request.path_params["message"]
        body = await request.json()
        self.calls.append(Call("POST", request.url.path, channel, body))
        guild = self.guilds[0]["id"] if self.guilds else None
        thread = {"id": str(message), "type": 11, "name": body["name"], "parent_id": str(channel),
                  "guild_id": guild, "owner_id": str(BOT_ID), "message_count": 0,
                  "member_count": 1, "newly_created": True,
                  "thread_metadata": {"archived": False, "locked": False,
                                      "auto_archive_duration": 1440,
                                      "archive_timestamp": EPOCH}}  # fmt: skip
        self.push("THREAD_CREATE", thread)
        return JSONResponse(thread, status_code=201)

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.calls.append(Call("GET", request.url.path, 0, {}))
        if name not in self.files:
            return JSONResponse({"message": "Not Found", "code": 0}, status_code=404)
        return Response(self.files[name], media_type="application/octet-stream")

    async def _sync(self, request: Request) -> Response:
        body = await request.json()
        guild = request.path_params.get("guild")
        self.synced[guild] = [c["name"] for c in body]
        app = str(request.path_params["app"])
        answer = [
            {"id": str(next(self._ids)), "application_id": app, "version": "1", "type": 1,
             "description": "", "options": [], **c}
            for c in body
        ]  # fmt: skip
        return JSONResponse(answer)

    async def _callback(self, request: Request) -> Response:
        token = request.path_params["token"]
        body = await request.json()
        channel = self.interactions[token][0]
        self.calls.append(Call("POST", request.url.path, channel, body))
        if token in self.acknowledged:
            error = {"message": "Interaction has already been acknowledged.", "code": 40060}
            return JSONResponse(error, status_code=400)
        self.acknowledged[token] = time.monotonic()
        original = next(self._ids)
        self.messages[channel][original] = ""  # "Parley is thinking..." until edited
        self._originals[token] = original
        interaction = {
            "id": str(request.path_params["interaction"]),
            "type": 2,
            "response_message_id": str(original),
            "response_message_loading": True,
            "response_message_ephemeral": False,
        }
        return JSONResponse({"interaction": interaction, "resource": {"type": body["type"]}})

    async def _edit_original(self, request: Request) -> Response:
        token = request.path_params["token"]
        body = await request.json()
        channel = self.interactions[token][0]
        refusal = self._check(Call("PATCH", request.url.path, channel, body))
        if refusal is not None:
            return refusal
        original = self._originals[token]
        self.messages[channel][original] = body["content"]
        return JSONResponse(_message(original, channel, body["content"]))

    async def _me(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bot {TOKEN}":
            return JSONResponse({"message": "401: Unauthorized", "code": 0}, status_code=401)
        return JSONResponse(BOT_USER)

    async def _application(self, request: Request) -> Response:
        return JSONResponse(
            {
                "id": str(APP_ID),
                "name": "Parley",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": {**BOT_USER, "id": "902", "bot": False},
                "verify_key": "0" * 64,
                "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED: the intent is on
            }
        )

    async def _typing(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        self.calls.append(Call("POST", request.url.path, channel, {}, 204))
        return Response(status_code=204)

    async def _send(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        body = await request.json()
        refusal = self._check(Call("POST", request.url.path, channel, body))
        if refusal is not None:
            return refusal
        message_id = next(self._ids)
        self.messages[channel][message_id] = body["content"]
        return JSONResponse(_message(message_id, channel, body["content"]))

    async def _edit(self, request: Request) -> Response:
        channel, message_id = request.path_params["channel"], request.path_params["message"]
        body = await request.json()
        if message_id not in self.messages[channel]:
            return JSONResponse({"message": "Unknown Message", "code": 10008}, status_code=404)
        refusal = self._check(Call("PATCH", request.url.path, channel, body))
        if refusal is not None:
            return refusal
        self.messages[channel][message_id] = body["content"]
        return JSONResponse(_message(message_id, channel, body["content"]))

    def _check(self, call: Call) -> Response | None:
        """Discord's limits on a send or edit; the call is recorded with its status."""
        self.calls.append(call)
        content = call.body.get("content") or ""
        if len(content) > MAX_CONTENT:
            call.status = 400
            return JSONResponse(_too_long(), status_code=400)
        calls, period = self.per_channel
        now = time.monotonic()
        seen = self._seen[call.channel_id]
        while seen and seen[0] <= now - period:
            seen.popleft()
        wait = seen[0] + period - now if len(seen) >= calls else 0.0
        if self.storm > 0 or wait > 0:
            self.storm = max(0, self.storm - 1)
            call.status = 429
            return _rate_limited(wait + self.retry_after_s, calls)
        seen.append(now)
        return None


def _message(message_id: int, channel_id: int, content: str) -> dict[str, Any]:
    return {
        "id": str(message_id),
        "channel_id": str(channel_id),
        "author": BOT_USER,
        "content": content,
        "timestamp": EPOCH,
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
    }


def _too_long() -> dict[str, Any]:
    error = {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
    return {
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {"content": {"_errors": [error]}},
    }


def _rate_limited(retry_after: float, limit: int) -> Response:
    headers = {
        "Retry-After": str(max(1, round(retry_after))),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": "channel-messages",
        "X-RateLimit-Scope": "user",
        "Via": "1.1 google",
    }
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    return JSONResponse(body, status_code=429, headers=headers)
