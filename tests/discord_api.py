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
sees them. Discord's global limit (50 requests a second per bot) is kept too, answered with a
429 whose body says `global: true`.

It also keeps each channel's log (everyone's messages, as `GET /channels/{id}/messages`
returns them: newest first, `after` / `before` / `limit`), so that a message posted while the
bot is away (`post`) is there for a backfill to read; the channels and members a REST client
can fetch (a channel in `unreadable`, whose history the bot may not read, refuses a read
with 403 50001, and a reply to a message there with 403 160002, as Discord does); and an
interaction's token, which stops working when the test says it expired
(`expire`: Discord's 15 minutes, answered 401 "Invalid Webhook Token"). An interaction
acknowledged twice is 400 (40060 "Interaction has already been acknowledged."), one whose
3 s the test says are over (`forget`) 404 (10062 "Unknown interaction"); one whose
acknowledgement is taken but answered 502 (`lose_ack`) is 40060 when discord.py retries it.
An interaction's response is deferred (type 5: "thinking..." in the channel until edited) or
a message (type 4, its `data.content`); an ephemeral one (`data.flags` 64) is its user's
alone, in no reader's view of the channel: `ephemeral` keeps it, by token.

The gateway speaks enough of Discord's protocol for discord.py's reconnects and shards: a
RECONNECT (op 7) on request (`reconnect`), after which a RESUME is answered RESUMED or, when
the session is not resumable, INVALID_SESSION (op 9, false), so the client identifies afresh
and gets a new READY; an IDENTIFY's `shard` [id, count] gets the guilds of that shard
(`(guild_id >> 22) % count`), and events go to the shard of their guild (DMs: shard 0).

Embeds: each message keeps its flags as Discord does: those it was sent with (a send's or a
follow-up's `flags`, an interaction response's `data.flags`), replaced only by an edit that
names `flags`. A bot message whose flags lack SUPPRESS_EMBEDS (1 << 2) has its links fetched
by Discord's unfurler as soon as it shows them, with no one clicking: `unfurled` lists them.
As on Discord, a link in code or written in angle brackets (<https://...>, and a masked
link's [text](<https://...>)) is shown without an embed, whatever the flags.

Ids are snowflakes of the current time, so that discord.py's `created_at` of a message is
when the test made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import discord.gateway
import discord.http
import discord.utils
import yarl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.local_server import serving

TOKEN = "MTAw.TEST-token-never-logged"
BOT_ID = 900
APP_ID = 901
BOT_USER = {"id": str(BOT_ID), "username": "parley", "discriminator": "0", "avatar": None,
            "global_name": "Parley", "bot": True}  # fmt: skip
MAX_CONTENT = 2000
# An interaction response's type that is a message (CHANNEL_MESSAGE_WITH_SOURCE; 5 defers),
# and the message flag that shows it to the interaction's user alone.
MESSAGE_WITH_SOURCE = 4
EPHEMERAL = 1 << 6
EPOCH = "2026-12-01T12:00:00.000000+00:00"
# Discord's limit on every request of a bot, in any second.
GLOBAL_LIMIT = (50, 1.0)
SUPPRESS_EMBEDS = 1 << 2
# A link Discord's unfurler fetches, found as Discord's client finds one: from its scheme to a
# space or "<", not ending in . , : ; " ' ] or ) (so a masked link's target ends before its
# ")"). Not one in code, shown as written; not one written <like this> (a masked link's
# [text](<like this>) too), which Discord shows with no embed: a link starting with "<" whose
# run closes with ">" (the client's reading: what follows the ">" is not the link's).
# A fence left open is no code block to Discord: "```" shows as it is, the rest as Markdown;
# nor is a backtick after a backslash (shown as a backtick). An inline span closes with as
# many backticks as opened it, not followed by another (Discord's Markdown).
_CODE = re.compile(r"(?<!\\)(?:```.*?```|(`+)(?:[^`\n]|[^`\n][^\n]*?[^`\n])\1(?!`))", re.S)
_LINK = re.compile(r"<?https?://[^\s<]+[^<.,:;\"')\]\s]", re.I)
_WRAPPED = re.compile(r"<https?://[^\s<>]+>", re.I)
# What the gateway queue carries to ask a shard's connection for a RECONNECT.
_RECONNECT = "__reconnect__"


class Snowflakes:
    """Ids as Discord makes them: the time in their high bits, increasing."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self, at: datetime | None = None) -> int:
        if at is not None:  # an id from another time (an old interaction), not in sequence
            return discord.utils.time_snowflake(at)
        self._last = max(self._last + 1, discord.utils.time_snowflake(discord.utils.utcnow()))
        return self._last


next_id = Snowflakes()


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """Discord's rule: a guild's events go to shard (guild_id >> 22) % shard_count."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


@dataclass
class Call:
    method: str
    path: str
    channel_id: int
    body: dict[str, Any]
    status: int = 200
    at: float = field(default_factory=time.monotonic)

    @property
    def allowed_mentions(self) -> Any:
        return self.body.get("allowed_mentions")


@dataclass
class FakeDiscordApi:
    # Sends and edits per channel in any window (Discord: 5 per 5 s).
    per_channel: tuple[int, float] = (5, 5.0)
    retry_after_s: float = 0.05  # what a 429 asks for beyond the window's own wait
    # Every request of the bot in any window (Discord: 50 per second).
    global_limit: tuple[int, float] = GLOBAL_LIMIT
    # The next this many sends or edits are answered 429, whatever the window (a storm).
    storm: int = 0
    # The next this many sends or edits are answered 503 (Discord's API down behind its
    # front), which discord.py raises at once as DiscordServerError.
    down: int = 0
    # The next this many sends or edits are answered as Cloudflare answers a host it banned
    # for a while (too many invalid requests): 429 with an HTML page and no Via header, which
    # discord.py raises at once (no retry_after to wait).
    banned: int = 0
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    # Each of the bot's messages' flags, by channel and id (see the module's docstring).
    flags: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    # Links Discord's unfurler fetched to embed them in the bot's messages.
    unfurled: list[str] = field(default_factory=list)
    # Every channel's log as a reader's client fetches it: message id -> REST payload.
    history: dict[int, dict[int, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    # Channels and members a client can fetch over REST, as Discord returns them.
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    members: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    # Channels whose history the bot may not read (no Read Message History): 403, 50001; a
    # send that replies to a message there (a message_reference) is refused too: 403, 160002.
    unreadable: set[int] = field(default_factory=set)
    # The next this many channel reads (a channel fetched, a page of its log) are answered
    # 503, which discord.py raises at once as DiscordServerError (Discord failing a moment).
    failing_reads: int = 0
    # Slash commands as last synced: None for global, else the guild's id -> their names
    # (context-menu commands too; `synced_types` has each one's type: 1 slash, 3 message).
    synced: dict[int | None, list[str]] = field(default_factory=dict)
    synced_types: dict[str, int] = field(default_factory=dict)
    # Interactions the test created: token -> (channel, created at), and when each was
    # acknowledged (deferred), by token; tokens past their 15 minutes.
    interactions: dict[str, tuple[int, float]] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)
    # Ephemeral interaction responses (flags 64), by token: seen by the interaction's user
    # alone, they are no message of the channel (`messages`, `texts`).
    ephemeral: dict[str, str] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    # Interactions whose 3 s to be acknowledged are over (a replay Discord sent late): their
    # acknowledgement is 404 Unknown interaction (10062).
    forgotten: set[str] = field(default_factory=set)
    # Interactions whose acknowledgement Discord takes but whose answer is lost on the way
    # back (a 502 from its front): discord.py sends it again, and that one is 40060.
    lost_acks: set[str] = field(default_factory=set)
    # The next read of a channel's log waits (`hold_log_read`): (taken, release) events.
    held_log_read: tuple[asyncio.Event, asyncio.Event] | None = None
    # The next acknowledgement taken is answered late (`hold_ack`): (taken, release) events.
    held_ack: tuple[asyncio.Event, asyncio.Event] | None = None
    _seen: dict[int, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _seen_overall: deque[float] = field(default_factory=deque)
    # Attachments on the fake CDN, by file name: `cdn_url(name)` is their URL. A file named
    # in `held` is served once its event is set (a slow download).
    files: dict[str, bytes] = field(default_factory=dict)
    held: dict[str, asyncio.Event] = field(default_factory=dict)
    base_url: str = ""
    # The gateway closes after IDENTIFY with this code when set (4014: "disallowed intents",
    # what Discord sends when Message Content is not switched on).
    gateway_close_code: int | None = None
    # The application's flags (GET /oauth2/applications/@me): by default the Message Content
    # intent is on (GATEWAY_MESSAGE_CONTENT_LIMITED); 0: it is off.
    app_flags: int = 1 << 19
    # The servers the bot is in, as GUILD_CREATE payloads sent after READY.
    guilds: list[dict[str, Any]] = field(default_factory=list)
    # Events for each shard's connection; kept while it is away (a resume gets them).
    _queues: dict[int, asyncio.Queue[tuple[str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )
    identified: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    # The bot's shards: which connection an event goes to is decided when it is pushed.
    shard_count: int = 1
    # Whether the next RESUME of a shard is accepted (`reconnect`).
    _resumable: dict[int, bool] = field(default_factory=dict)
    _sequences: dict[int, Iterator[int]] = field(default_factory=dict)
    _originals: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _notices: set[asyncio.Future[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for guild in self.guilds:
            for channel in [*guild["channels"], *guild["threads"]]:
                self.channels[int(channel["id"])] = {**channel, "guild_id": guild["id"]}

    def app(self) -> Starlette:
        channel = "/api/v10/channels/{channel:int}"
        return Starlette(
            routes=[
                Route("/api/v10/users/@me", self._me),
                Route("/cdn/{name}", self._file),
                WebSocketRoute("/gateway", self._gateway),
                Route("/api/v10/oauth2/applications/@me", self._application),
                Route(channel, self._channel, methods=["GET"]),
                Route(channel, self._modify_channel, methods=["PATCH"]),
                Route(f"{channel}/messages", self._send, methods=["POST"]),
                Route(f"{channel}/messages", self._logs, methods=["GET"]),
                Route(f"{channel}/messages/{{message:int}}", self._edit, methods=["PATCH"]),
                Route(f"{channel}/typing", self._typing, methods=["POST"]),
                Route(
                    f"{channel}/messages/{{message:int}}/threads",
                    self._start_thread,
                    methods=["POST"],
                ),
                Route("/api/v10/guilds/{guild:int}/members/{user:int}", self._member),
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
                Route(
                    "/api/v10/webhooks/{app:int}/{token}/messages/@original",
                    self._delete_original,
                    methods=["DELETE"],
                ),
                # Follow-up messages: the interaction's webhook, no channel permission needed.
                Route("/api/v10/webhooks/{app:int}/{token}", self._follow_up, methods=["POST"]),
                Route(
                    "/api/v10/webhooks/{app:int}/{token}/messages/{message:int}",
                    self._edit_follow_up,
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

    # What a test does ------------------------------------------------------------------

    def push(self, kind: str, payload: dict[str, Any], *, shard: int | None = None) -> None:
        """A gateway event (MESSAGE_CREATE, INTERACTION_CREATE, ...) for the connected client,
        on its guild's shard, or on `shard` (an interaction Discord delivers again to another
        process); a MESSAGE_CREATE also goes into the channel's log."""
        if kind == "MESSAGE_CREATE":
            self.post(payload)
        if shard is None:
            guild = payload.get("guild_id")
            shard = shard_of(int(guild) if guild else None, self.shard_count)
        self._queues[shard].put_nowait((kind, payload))

    def post(self, payload: dict[str, Any]) -> None:
        """A message in the channel's log only, never delivered over the gateway: sent while
        the bot was stopped or disconnected."""
        stored = {k: v for k, v in payload.items() if k != "member"}  # REST leaves it out
        channel, author = int(payload["channel_id"]), payload["author"]
        self.history[channel][int(payload["id"])] = stored
        if "member" in payload:
            member = {**payload["member"], "user": author}
            self.members[(int(payload["guild_id"]), int(author["id"]))] = member
        elif channel not in self.channels:  # a DM channel, with its one recipient
            self.channels[channel] = {"id": str(channel), "type": 1, "recipients": [author]}

    def delete(self, channel_id: int, message_id: int, guild_id: int | None = None) -> None:
        """The sender (or a moderator) deletes a message: gone from the log and from what the
        channel shows (an edit of it is 404 Unknown Message), MESSAGE_DELETE on the gateway."""
        self.history[channel_id].pop(message_id, None)
        self.messages[channel_id].pop(message_id, None)
        event: dict[str, Any] = {"id": str(message_id), "channel_id": str(channel_id)}
        if guild_id is not None:
            event["guild_id"] = str(guild_id)
        self.push("MESSAGE_DELETE", event)

    def reconnect(self, *, resume: bool, shard: int = 0) -> None:
        """Discord asks the shard's client to reconnect (op 7); its RESUME is then accepted,
        or refused so that it identifies afresh (a new READY)."""
        self._resumable[shard] = resume
        self._queues[shard].put_nowait((_RECONNECT, {}))

    def expire(self, token: str) -> None:
        """The interaction's 15 minutes are over: its token no longer edits its response."""
        self.expired.add(token)

    def forget(self, token: str) -> None:
        """The interaction's 3 s to be acknowledged are over: Discord no longer knows it."""
        self.forgotten.add(token)

    def hold_log_read(self) -> tuple[asyncio.Event, asyncio.Event]:
        """The next read of a channel's log is answered once the second event is set; the
        first is set when the read arrives (a slow read, held where a test needs it)."""
        self.held_log_read = (asyncio.Event(), asyncio.Event())
        return self.held_log_read

    def hold_ack(self) -> tuple[asyncio.Event, asyncio.Event]:
        """The next acknowledgement Discord takes is answered once the second event is set;
        the first is set when it is taken (a slow answer: the interaction is acknowledged,
        and a second delivery's defer is 40060, before its worker knows it deferred it)."""
        self.held_ack = (asyncio.Event(), asyncio.Event())
        return self.held_ack

    def lose_ack(self, token: str) -> None:
        """The interaction's acknowledgement is taken, and its answer lost (502)."""
        self.lost_acks.add(token)

    def expect_interaction(self, token: str, channel_id: int) -> None:
        """An interaction Discord is about to send: its token's responses go to the channel."""
        self.interactions[token] = (channel_id, time.monotonic())

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

    def suppressed(self, channel_id: int) -> list[bool]:
        """Whether each of the channel's messages from the bot, in order, has its embeds
        suppressed."""
        flags = self.flags[channel_id]
        return [bool(flags.get(k, 0) & SUPPRESS_EMBEDS) for k in sorted(self.messages[channel_id])]

    def reads(self, channel_id: int | None = None) -> list[Call]:
        """The channel-log reads (GET .../messages), of one channel or of all."""
        return [
            c
            for c in self.calls
            if c.method == "GET"
            and c.path.endswith("/messages")
            and (channel_id is None or c.channel_id == channel_id)
        ]

    def refused(self) -> list[Call]:
        return [c for c in self.calls if c.status == 429]

    def cdn_url(self, name: str) -> str:
        return f"{self.base_url}/cdn/{name}"

    def acknowledged_within(self, token: str) -> float:
        """Seconds from the interaction's creation to its acknowledgement."""
        return self.acknowledged[token] - self.interactions[token][1]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, checked after every request the fake answers."""
        async with self._changed:
            await self._changed.wait_for(condition)

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._changed_soon()

    def _changed_soon(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.ensure_future(notify())
        self._notices.add(task)  # kept until done, so that none is collected unfinished
        task.add_done_callback(self._notices.discard)

    # The gateway ------------------------------------------------------------------------

    async def _gateway(self, websocket: WebSocket) -> None:
        """HELLO; an IDENTIFY gets READY and the shard's guilds' GUILD_CREATE, a RESUME gets
        RESUMED or INVALID_SESSION; then every event pushed for the shard, numbered; or a
        close with `gateway_close_code` when it is set."""
        await websocket.accept()
        hello = {"op": 10, "d": {"heartbeat_interval": 45_000}, "s": None, "t": None}
        try:
            await websocket.send_json(hello)
            while True:  # a heartbeat (op 1) may come first
                sent = await websocket.receive_json()
                if sent["op"] in (2, 6):
                    break
            if sent["op"] == 6:
                shard = await self._resume(websocket, sent)
            else:
                shard = await self._identify(websocket, sent)
            if shard is None:
                return
            async with asyncio.TaskGroup() as tasks:
                beats = tasks.create_task(self._acknowledge_heartbeats(websocket))
                await self._relay(websocket, shard)
                beats.cancel()
        except (WebSocketDisconnect, ExceptionGroup, RuntimeError):
            return  # the client went away (a reconnect, the end of a test)

    async def _identify(self, websocket: WebSocket, sent: dict[str, Any]) -> int | None:
        self.identified.append(sent)
        if self.gateway_close_code is not None:
            await websocket.close(code=self.gateway_close_code)
            return None
        shard, count = sent["d"].get("shard", [0, 1])
        if count != self.shard_count:  # Discord closes with 4011 "sharding required" etc.
            await websocket.close(code=4010)  # "invalid shard"
            return None
        sequence = self._sequences[shard] = itertools.count(1)
        guilds = [g for g in self.guilds if shard_of(int(g["id"]), self.shard_count) == shard]
        ready = {"v": 10, "user": BOT_USER, "session_id": f"session-{shard}",
                 "resume_gateway_url": f"ws://{websocket.url.netloc}/gateway",
                 "guilds": [{"id": g["id"], "unavailable": True} for g in guilds],
                 "shard": [shard, self.shard_count],
                 "application": {"id": str(APP_ID), "flags": 1 << 19}}  # fmt: skip
        await websocket.send_json({"op": 0, "t": "READY", "s": next(sequence), "d": ready})
        for guild in guilds:
            event = {"op": 0, "t": "GUILD_CREATE", "s": next(sequence), "d": guild}
            await websocket.send_json(event)
        self._changed_soon()  # `until` a number of shards identified
        return int(shard)

    async def _resume(self, websocket: WebSocket, sent: dict[str, Any]) -> int | None:
        self.resumed.append(sent)
        shard = int(sent["d"]["session_id"].rpartition("-")[2])
        if not self._resumable.get(shard, True):
            await websocket.send_json({"op": 9, "d": False, "s": None, "t": None})
            await websocket.receive_json()  # until the client closes
            return None
        event = {"op": 0, "t": "RESUMED", "s": next(self._sequences[shard]), "d": {}}
        await websocket.send_json(event)
        return shard

    async def _relay(self, websocket: WebSocket, shard: int) -> None:
        sequence = self._sequences[shard]
        while True:
            kind, payload = await self._queues[shard].get()
            if kind == _RECONNECT:
                await websocket.send_json({"op": 7, "d": None, "s": None, "t": None})
                return
            event = {"op": 0, "t": kind, "s": next(sequence), "d": payload}
            await websocket.send_json(event)

    async def _acknowledge_heartbeats(self, websocket: WebSocket) -> None:
        while True:
            if (await websocket.receive_json())["op"] == 1:
                await websocket.send_json({"op": 11})

    # REST -------------------------------------------------------------------------------

    async def _start_thread(self, request: Request) -> Response:
        """A thread from a message: it takes the message's id, and the gateway announces it
        (THREAD_CREATE) before any later event, as Discord does; a later GUILD_CREATE lists
        it among the guild's active threads."""
        channel, message = request.path_params["channel"], request.path_params["message"]
        body = await request.json()
        if message in self.channels:  # Discord opens one thread per message
            self._record(Call("POST", request.url.path, channel, body, 400))
            refused = {"message": "A thread has already been created for this message",
                       "code": 160004}  # fmt: skip
            return JSONResponse(refused, status_code=400)
        self._record(Call("POST", request.url.path, channel, body))
        thread = self.open_thread(channel, message, body["name"])
        self.push("THREAD_CREATE", thread)
        return JSONResponse(thread, status_code=201)

    def open_thread(
        self, channel: int, message: int, name: str, *, listed: bool = True
    ) -> dict[str, Any]:
        """A thread the bot opened on `message`. `listed`: in the guild's threads that a
        GUILD_CREATE sends; not for one another session of the bot has just opened, which
        this session does not know of yet."""
        guild = self.guilds[0]["id"] if self.guilds else None
        thread = {"id": str(message), "type": 11, "name": name, "parent_id": str(channel),
                  "guild_id": guild, "owner_id": str(BOT_ID), "message_count": 0,
                  "member_count": 1, "newly_created": True,
                  "thread_metadata": {"archived": False, "locked": False,
                                      "auto_archive_duration": 1440,
                                      "archive_timestamp": EPOCH}}  # fmt: skip
        self.channels[message] = thread
        if message in self.history[channel]:  # Discord's message says which thread it started
            self.history[channel][message]["thread"] = thread
        if self.guilds and listed:
            self.guilds[0]["threads"].append(thread)
        return thread

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        self._record(Call("GET", request.url.path, 0, {}))
        if name in self.held:
            await self.held[name].wait()
        if name not in self.files:
            return JSONResponse({"message": "Not Found", "code": 0}, status_code=404)
        return Response(self.files[name], media_type="application/octet-stream")

    async def _channel(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        refusal = self._check_global(Call("GET", request.url.path, channel, {}))
        if refusal is not None:
            return refusal
        if (failing := self._read_fails()) is not None:
            return failing
        if channel not in self.channels:
            return JSONResponse({"message": "Unknown Channel", "code": 10003}, status_code=404)
        return JSONResponse(self.channels[channel])

    async def _modify_channel(self, request: Request) -> Response:
        """A thread renamed (Modify Channel): Discord's 100-character limit on a name is kept,
        and the gateway announces it (THREAD_UPDATE)."""
        channel = request.path_params["channel"]
        body = await request.json()
        call = Call("PATCH", request.url.path, channel, body)
        refusal = self._check(call)
        if refusal is not None:
            return refusal
        if channel not in self.channels:
            call.status = 404
            return JSONResponse({"message": "Unknown Channel", "code": 10003}, status_code=404)
        name = body.get("name")
        if name is not None and not 1 <= len(name) <= 100:
            call.status = 400
            invalid = {"message": "Invalid Form Body", "code": 50035}
            return JSONResponse(invalid, status_code=400)
        self.rename(channel, name or self.channels[channel]["name"])
        return JSONResponse(self.channels[channel])

    def rename(self, channel: int, name: str) -> None:
        """A channel or thread given another name (by the bot, or a member: THREAD_UPDATE)."""
        self.channels[channel] = {**self.channels[channel], "name": name}
        self.push("THREAD_UPDATE", self.channels[channel])

    async def _logs(self, request: Request) -> Response:
        """Discord's order: the `limit` messages next to the cursor, newest first."""
        channel = request.path_params["channel"]
        if self.held_log_read is not None:
            (taken, release), self.held_log_read = self.held_log_read, None
            taken.set()
            await release.wait()
        refusal = self._check_global(Call("GET", request.url.path, channel, {}))
        if refusal is not None:
            return refusal
        if (failing := self._read_fails()) is not None:
            return failing
        if channel in self.unreadable:
            return JSONResponse({"message": "Missing Access", "code": 50001}, status_code=403)
        query = request.query_params
        limit = min(int(query.get("limit", 50)), 100)
        ids = sorted(self.history[channel])
        if "after" in query:
            ids = [i for i in ids if i > int(query["after"])][:limit]
        else:
            before = int(query.get("before", 2**63))
            ids = [i for i in ids if i < before][-limit:]
        return JSONResponse([self.history[channel][i] for i in reversed(ids)])

    def _read_fails(self) -> Response | None:
        if self.failing_reads <= 0:
            return None
        self.failing_reads -= 1
        return JSONResponse({"message": "Service Unavailable", "code": 0}, status_code=503)

    async def _member(self, request: Request) -> Response:
        guild, user_id = request.path_params["guild"], request.path_params["user"]
        refusal = self._check_global(Call("GET", request.url.path, 0, {}))
        if refusal is not None:
            return refusal
        member = self.members.get((guild, user_id))
        if member is None:
            return JSONResponse({"message": "Unknown Member", "code": 10007}, status_code=404)
        return JSONResponse(member)

    async def _sync(self, request: Request) -> Response:
        body = await request.json()
        guild = request.path_params.get("guild")
        self.synced[guild] = [c["name"] for c in body]
        self.synced_types.update({c["name"]: c.get("type", 1) for c in body})
        app = str(request.path_params["app"])
        answer = [
            {"id": str(next_id()), "application_id": app, "version": "1", "type": 1,
             "description": "", "options": [], **c}
            for c in body
        ]  # fmt: skip
        return JSONResponse(answer)

    async def _callback(self, request: Request) -> Response:
        token = request.path_params["token"]
        body = await request.json()
        channel = self.interactions[token][0]
        self._record(Call("POST", request.url.path, channel, body))
        if token in self.forgotten:
            return JSONResponse({"message": "Unknown interaction", "code": 10062}, status_code=404)
        if token in self.acknowledged:
            error = {"message": "Interaction has already been acknowledged.", "code": 40060}
            return JSONResponse(error, status_code=400)
        data = body.get("data") or {}
        content = str(data.get("content", "")) if body["type"] == MESSAGE_WITH_SOURCE else ""
        if len(content) > MAX_CONTENT:
            return JSONResponse(_too_long(), status_code=400)
        self.acknowledged[token] = time.monotonic()
        lost = token in self.lost_acks
        self.lost_acks.discard(token)
        original = next_id()
        flags = int(data.get("flags", 0))
        if flags & EPHEMERAL:  # its user's alone: in no reader's view of the channel
            self.ephemeral[token] = content
        else:  # a message, or a deferred response: "Parley is thinking..." until edited
            self.messages[channel][original] = content
            self.flags[channel][original] = flags
        self._originals[token] = original
        if lost:
            return JSONResponse({"message": "Bad Gateway", "code": 0}, status_code=502)
        if self.held_ack is not None:
            (taken, release), self.held_ack = self.held_ack, None
            taken.set()
            await release.wait()
        interaction = {
            "id": str(request.path_params["interaction"]),
            "type": 2,
            "response_message_id": str(original),
            "response_message_loading": body["type"] != MESSAGE_WITH_SOURCE,
            "response_message_ephemeral": bool(flags & EPHEMERAL),
        }
        resource: dict[str, Any] = {"type": body["type"]}
        if body["type"] == MESSAGE_WITH_SOURCE:  # the message it created
            resource["message"] = _message(original, channel, content, flags)
        return JSONResponse({"interaction": interaction, "resource": resource})

    async def _edit_original(self, request: Request) -> Response:
        """The deferred response edited by the interaction's token: through the interaction
        (discord.py's `edit_original_response`), or the application's webhook with that token
        (`Webhook.edit_message` of "@original", from any process), the one route. Never
        acknowledged, no response to edit: 404 Unknown Message."""
        original = self._originals.get(request.path_params["token"], 0)
        return await self._by_token(request, "PATCH", original)

    async def _delete_original(self, request: Request) -> Response:
        """The deferred response deleted: 204, and gone (editing it then is 404 Unknown
        Message, as on Discord)."""
        token = request.path_params["token"]
        if token not in self.interactions or token not in self._originals:
            self._record(Call("DELETE", request.url.path, 0, {}, 404))
            return JSONResponse({"message": "Unknown Webhook", "code": 10015}, status_code=404)
        channel = self.interactions[token][0]
        call = Call("DELETE", request.url.path, channel, {})
        if token in self.expired:
            call.status = 401
            self._record(call)
            error = {"message": "Invalid Webhook Token", "code": 50027}
            return JSONResponse(error, status_code=401)
        original = self._originals[token]
        if original not in self.messages[channel]:
            call.status = 404
            self._record(call)
            return JSONResponse({"message": "Unknown Message", "code": 10008}, status_code=404)
        refusal = self._check(call)
        if refusal is not None:
            return refusal
        call.status = 204  # recorded by _check, as accepted
        del self.messages[channel][original]
        return Response(status_code=204)

    async def _follow_up(self, request: Request) -> Response:
        return await self._by_token(request, "POST", next_id())

    async def _edit_follow_up(self, request: Request) -> Response:
        return await self._by_token(request, "PATCH", request.path_params["message"])

    async def _by_token(self, request: Request, method: str, message_id: int) -> Response:
        """A message written through the interaction's token (its response or a follow-up):
        401 once the token expired, else the channel's limits apply."""
        token = request.path_params["token"]
        body = await request.json()
        if token not in self.interactions or request.path_params["app"] != APP_ID:
            # No interaction of this application has that token.
            self._record(Call(method, request.url.path, 0, body, 404))
            return JSONResponse({"message": "Unknown Webhook", "code": 10015}, status_code=404)
        channel = self.interactions[token][0]
        if token in self.expired:
            self._record(Call(method, request.url.path, channel, body, 401))
            error = {"message": "Invalid Webhook Token", "code": 50027}
            return JSONResponse(error, status_code=401)
        if method == "PATCH" and message_id not in self.messages[channel]:  # deleted
            self._record(Call(method, request.url.path, channel, body, 404))
            return JSONResponse({"message": "Unknown Message", "code": 10008}, status_code=404)
        refusal = self._check(Call(method, request.url.path, channel, body))
        if refusal is not None:
            return refusal
        self._write(channel, message_id, body)
        flags = self.flags[channel][message_id]
        return JSONResponse(_message(message_id, channel, body["content"], flags))

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
                "flags": self.app_flags,
            }
        )

    async def _typing(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        refusal = self._check_global(Call("POST", request.url.path, channel, {}, 204))
        if refusal is not None:
            return refusal
        return Response(status_code=204)

    async def _send(self, request: Request) -> Response:
        channel = request.path_params["channel"]
        body = await request.json()
        call = Call("POST", request.url.path, channel, body)
        refusal = self._check(call)
        if refusal is not None:
            return refusal
        if body.get("message_reference") and channel in self.unreadable:
            call.status = 403
            refused = {"message": "Cannot reply without permission to read message history",
                       "code": 160002}  # fmt: skip
            return JSONResponse(refused, status_code=403)
        message_id = next_id()
        self._write(channel, message_id, body)
        sent = _message(message_id, channel, body["content"], self.flags[channel][message_id])
        self.history[channel][message_id] = sent
        return JSONResponse(sent)

    async def _edit(self, request: Request) -> Response:
        channel, message_id = request.path_params["channel"], request.path_params["message"]
        body = await request.json()
        if message_id not in self.messages[channel]:
            return JSONResponse({"message": "Unknown Message", "code": 10008}, status_code=404)
        refusal = self._check(Call("PATCH", request.url.path, channel, body))
        if refusal is not None:
            return refusal
        self._write(channel, message_id, body)
        edited = _message(message_id, channel, body["content"], self.flags[channel][message_id])
        self.history[channel][message_id] = edited
        return JSONResponse(edited)

    def _write(self, channel: int, message_id: int, body: dict[str, Any]) -> None:
        """The message as it now shows: its content, and its flags (kept by an edit that does
        not name them); its links unfurled unless its embeds are suppressed."""
        self.messages[channel][message_id] = body["content"]
        if "flags" in body or message_id not in self.flags[channel]:
            self.flags[channel][message_id] = int(body.get("flags") or 0)
        if not self.flags[channel][message_id] & SUPPRESS_EMBEDS:
            self.unfurled.extend(unfurlable(body["content"] or ""))

    def _check(self, call: Call) -> Response | None:
        """Discord's limits on a send or edit; the call is recorded with its status."""
        refusal = self._check_global(call)
        if refusal is not None:
            return refusal
        if self.banned > 0:
            self.banned -= 1
            call.status = 429
            page = "<!DOCTYPE html>\n<html><title>Access denied | discord.com</title></html>\n"
            return Response(page, status_code=429, media_type="text/html")
        if self.down > 0:
            self.down -= 1
            call.status = 503
            return JSONResponse({"message": "Service Unavailable", "code": 0}, status_code=503)
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

    def _check_global(self, call: Call) -> Response | None:
        """Discord's global limit on every request; the call is recorded with its status."""
        self._record(call)
        calls, period = self.global_limit
        now = time.monotonic()
        seen = self._seen_overall
        while seen and seen[0] <= now - period:
            seen.popleft()
        if len(seen) >= calls:
            call.status = 429
            return _rate_limited(seen[0] + period - now + self.retry_after_s, calls, glob=True)
        seen.append(now)
        return None


def unfurlable(content: str) -> list[str]:
    """The links of `content` that Discord's unfurler fetches (see _LINK)."""
    found = _LINK.findall(_CODE.sub(" ", content))
    return [link for link in found if not _WRAPPED.match(link)]


def _message(message_id: int, channel_id: int, content: str, flags: int = 0) -> dict[str, Any]:
    return {
        "flags": flags,
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


def _rate_limited(retry_after: float, limit: int, *, glob: bool = False) -> Response:
    headers = {
        "Retry-After": str(max(1, round(retry_after))),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": "channel-messages",
        "X-RateLimit-Scope": "global" if glob else "user",
        "Via": "1.1 google",
    }
    if glob:
        headers["X-RateLimit-Global"] = "true"
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": glob}
    return JSONResponse(body, status_code=429, headers=headers)
