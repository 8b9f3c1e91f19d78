"""A local stand-in for the Telegram Bot API, served on 127.0.0.1 for PTB (`base_url`).

It records every call, keeps the chats' messages (as a reader would see them), checks text
the way Telegram does (known tags, proper nesting, Telegram's nesting rules, non-empty after
trimming and at most 4096 UTF-16 units after parsing, else 400 "Bad Request: ..."), and
enforces the documented flood limits: one call per second per chat, 20 per minute per group,
30 per second overall. Over a limit it answers 429 with `parameters.retry_after`, as Telegram
does, and notes which limit and which call it refused.

Link previews: `link_preview_options` comes as a JSON-serialized LinkPreviewOptions in the
form field, as PTB sends it (one that is not a JSON object is 400, as on Telegram). A message
sent or edited without `is_disabled` gets a preview: Telegram's servers fetch its first link
(`url` when given, else an <a href> or a URL in the text) at once, with no one clicking;
`previewed` lists the URLs fetched so.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import math
import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from telegram import Bot

from tests.local_server import serving

TOKEN = "123456:TEST-token-never-logged"
BOT = {"id": 999, "is_bot": True, "first_name": "Parley", "username": "parley_bot"}
_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a"}
_TAGS |= {"blockquote", "tg-spoiler", "span"}
# The first link Telegram would preview: an <a href> of HTML text, or a URL in the text.
_LINK = re.compile(r'<a href="([^"]+)"|(https?://[^\s<>"]+)')


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200
    limit: str = ""
    error: str = ""  # the description of a refusal

    @property
    def fingerprint(self) -> str:
        return json.dumps([self.method, self.params], sort_keys=True, default=str)


@dataclass
class Limits:
    per_chat: tuple[int, float] = (1, 1.0)
    per_group: tuple[int, float] = (20, 60.0)
    overall: tuple[int, float] = (30, 1.0)


UNLIMITED = 10**9


@dataclass
class FakeBotApi:
    limits: Limits = field(default_factory=Limits)
    # Answer every HTML message with "can't parse entities", as Telegram does for bad HTML.
    reject_html: bool = False
    # Refuse HTML with more entities than this with "ENTITIES_TOO_LONG", as Telegram refuses
    # entities too big in all (many long links). None: as Telegram, which takes any number
    # (past 100 it drops the rest's formatting, which the visible text does not show).
    max_entities: int | None = None
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    drafts: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    # URLs Telegram's servers fetched for a link preview (see the module's docstring).
    previewed: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    # (chat_id, user_id) pairs getChatMember reports as administrators.
    admins: set[tuple[int, int]] = field(default_factory=set)
    # Chats whose user blocked the bot: 403 to every message.
    blocked: set[int] = field(default_factory=set)
    # Groups upgraded to a supergroup: old id -> new id. Every call to the old id is refused
    # as Telegram refuses it: 400 with `parameters.migrate_to_chat_id`.
    migrated: dict[int, int] = field(default_factory=dict)
    # method -> how many of its next calls get 502 Bad Gateway (the Bot API's front
    # answering for a server that is down), as Telegram's does.
    failing: dict[str, int] = field(default_factory=dict)
    _seen: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _next_id: int = 1
    # Runs of sequential update ids (`restart_numbering`): the ids each run gave, and the run
    # each waiting update (by object id) belongs to.
    _runs: list[set[int]] = field(default_factory=lambda: [set()])
    _run_of: dict[int, int] = field(default_factory=dict)
    _new_update: asyncio.Event = field(default_factory=asyncio.Event)
    _new_message: asyncio.Event = field(default_factory=asyncio.Event)
    _answered: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/bot{token}/{method}", self._endpoint, methods=["POST", "GET"]),
                Route("/file/bot{token}/{path:path}", self._file, methods=["GET"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        async with serving(self.app()) as port:
            yield f"http://127.0.0.1:{port}/bot"

    async def wait_for_messages(self, chat_id: int, count: int) -> list[str]:
        while len(self.messages[chat_id]) < count:
            self._new_message.clear()
            await self._new_message.wait()
        return self.texts(chat_id)

    def push_update(self, update: dict[str, Any]) -> None:
        self._runs[-1].add(update["update_id"])
        self._run_of[id(update)] = len(self._runs) - 1
        self.updates.append(update)
        self._new_update.set()

    def restart_numbering(self) -> None:
        """What the Bot API does after a week without updates: the next update_id is chosen
        at random, so it may be lower than the offset a client still sends (go-telegram-bot-
        api issue 156 logged offset 727334708 answered with update 117314199, again and
        again): that offset confirms only the earlier run's updates."""
        self._runs.append(set())

    # What a test looks at ---------------------------------------------------------------

    def texts(self, chat_id: int) -> list[str]:
        """The chat's messages in order, as a reader sees them."""
        return [self.messages[chat_id][k] for k in sorted(self.messages[chat_id])]

    def sent(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method
            and c.status == 200
            and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    @staticmethod
    def link_preview_options(call: Call) -> dict[str, Any] | None:
        """The call's LinkPreviewOptions as Telegram reads them; None when not sent."""
        sent = call.params.get("link_preview_options")
        return None if sent is None else dict(json.loads(sent))

    @property
    def rejected(self) -> list[Call]:
        return [c for c in self.calls if c.status == 429]

    # The API ----------------------------------------------------------------------------

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds, looked at after each call the API answered."""
        while not condition():
            self._answered.clear()
            await self._answered.wait()

    async def _endpoint(self, request: Request) -> Response:
        try:
            return await self._answer(request)
        finally:
            self._answered.set()

    async def _answer(self, request: Request) -> Response:
        method = request.path_params["method"]
        params = await _params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        if request.path_params["token"] != TOKEN:
            return _error(call, 401, "Unauthorized")
        if self.failing.get(method, 0) > 0:
            self.failing[method] -= 1
            return _error(call, 502, "Bad Gateway")
        if (limited := self._flood_check(call)) is not None:
            return limited
        if params.get("chat_id") in self.blocked:
            return _error(call, 403, "Forbidden: bot was blocked by the user")
        if (new_id := self.migrated.get(params.get("chat_id", 0))) is not None:
            description = "Bad Request: group chat was upgraded to a supergroup chat"
            return _error(call, 400, description, migrate_to_chat_id=new_id)
        if self.reject_html and params.get("parse_mode") == "HTML":
            return _error(call, 400, "Bad Request: can't parse entities: unsupported tag")
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return _error(call, 404, "Not Found")
        result = await handler(params) if asyncio.iscoroutinefunction(handler) else handler(params)
        if isinstance(result, Response):
            call.status = result.status_code
            call.error = json.loads(bytes(result.body)).get("description", "")
            return result
        return JSONResponse({"ok": True, "result": result})

    def _flood_check(self, call: Call) -> Response | None:
        chat = call.params.get("chat_id")
        if chat is None:
            return None
        windows = [("overall", "*", self.limits.overall), ("chat", str(chat), self.limits.per_chat)]
        if int(chat) < 0:
            windows.append(("group", str(chat), self.limits.per_group))
        for name, key, (limit, period) in windows:
            seen = self._seen[f"{name}:{key}"]
            while seen and seen[0] <= call.at - period:
                seen.popleft()
            if len(seen) >= limit:
                wait = max(1, math.ceil(seen[0] + period - call.at))
                call.limit = name
                return _error(call, 429, f"Too Many Requests: retry after {wait}", wait)
        for name, key, _ in windows:
            self._seen[f"{name}:{key}"].append(call.at)
        return None

    def _getMe(self, params: dict[str, Any]) -> object:
        return BOT

    def _setMyCommands(self, params: dict[str, Any]) -> object:
        return True

    _deleteWebhook = _setWebhook = _sendChatAction = _answerCallbackQuery = _setMyCommands

    async def _getUpdates(self, params: dict[str, Any]) -> object:
        offset = int(params.get("offset", 0) or 0)
        for waiting in self.updates:  # set in `updates` directly: the current run's
            if id(waiting) not in self._run_of:
                self._run_of[id(waiting)] = len(self._runs) - 1
                self._runs[-1].add(waiting["update_id"])
        # The offset confirms the updates below it of the run that gave the id before it (or
        # failing that, of the latest run that gave an id below it), and every earlier run's;
        # not a later run's (see restart_numbering).
        exact = [n for n, ids in enumerate(self._runs) if offset - 1 in ids]
        below = exact or [n for n, ids in enumerate(self._runs) if any(i < offset for i in ids)]
        if below:
            run = below[-1]
            self.updates = [
                u
                for u in self.updates
                if self._run_of[id(u)] > run
                or (self._run_of[id(u)] == run and u["update_id"] >= offset)
            ]
            self._run_of = {id(u): self._run_of[id(u)] for u in self.updates}
        if not self.updates and float(params.get("timeout", 0) or 0) > 0:
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                # Answering early (empty) is allowed; it keeps shutdown quick.
                await asyncio.wait_for(self._new_update.wait(), min(float(params["timeout"]), 0.5))
        return self.updates

    def _getChatMember(self, params: dict[str, Any]) -> object:
        chat, user = params["chat_id"], params["user_id"]
        status = "administrator" if (chat, user) in self.admins else "member"
        person = {"id": user, "is_bot": False, "first_name": "Someone"}
        if status == "administrator":
            return {"status": status, "user": person, "can_be_edited": False,
                    "is_anonymous": False, "can_manage_chat": True, "can_delete_messages": True,
                    "can_manage_video_chats": True, "can_restrict_members": True,
                    "can_promote_members": False, "can_change_info": True,
                    "can_invite_users": True, "can_post_stories": False,
                    "can_edit_stories": False, "can_delete_stories": False}  # fmt: skip
        return {"status": status, "user": person}

    def _getChat(self, params: dict[str, Any]) -> object:
        chat = params["chat_id"]
        kind = "private" if chat > 0 else "supergroup" if chat < -(10**12) else "group"
        gifts = {"unlimited_gifts": True, "limited_gifts": True, "unique_gifts": True,
                 "premium_subscription": True, "gifts_from_channels": True}  # fmt: skip
        return {"id": chat, "type": kind, "title": "Team", "accent_color_id": 0,
                "max_reaction_count": 11, "accepted_gift_types": gifts}  # fmt: skip

    def _sendMessage(self, params: dict[str, Any]) -> object:
        chat = params["chat_id"]
        shown = _visible(params, self.max_entities)
        if isinstance(shown, Response):
            return shown
        message_id = self._next_id
        self._next_id += 1
        self.messages[chat][message_id] = shown
        self._preview(params)
        self._new_message.set()
        return _message(chat, message_id, shown)

    def _editMessageText(self, params: dict[str, Any]) -> object:
        chat, message_id = params["chat_id"], params["message_id"]
        shown = _visible(params, self.max_entities)
        if isinstance(shown, Response):
            return shown
        if message_id not in self.messages[chat]:
            return _bad("Bad Request: message to edit not found")
        if self.messages[chat][message_id] == shown:
            return _bad("Bad Request: message is not modified")
        self.messages[chat][message_id] = shown
        self._preview(params)
        return _message(chat, message_id, shown)

    def _preview(self, params: dict[str, Any]) -> None:
        options = json.loads(params.get("link_preview_options") or "{}")
        if options.get("is_disabled"):
            return
        link = _LINK.search(str(params.get("text", "")))
        url = options.get("url") or (link and (link[1] or link[2]))
        if url:
            self.previewed.append(html.unescape(url))

    def _sendMessageDraft(self, params: dict[str, Any]) -> object:
        shown = _visible(params, self.max_entities)
        if isinstance(shown, Response):
            return shown
        if params["chat_id"] < 0:
            return _bad("Bad Request: drafts are only for private chats")
        self.drafts[params["chat_id"]].append(shown)
        return True

    def _getFile(self, params: dict[str, Any]) -> object:
        file_id = params["file_id"]
        size = len(self.files[file_id])
        return {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_size": size,
            "file_path": file_id,
        }

    async def _file(self, request: Request) -> Response:
        return Response(self.files[request.path_params["path"]])


_INTS = {"chat_id", "message_id", "draft_id", "message_thread_id", "offset", "user_id"}


async def _params(request: Request) -> dict[str, Any]:
    form = await request.form()
    return {k: int(v) if k in _INTS else v for k, v in form.items() if isinstance(v, str)}


def _message(chat: int, message_id: int, text: str) -> dict[str, Any]:
    kind = "private" if chat > 0 else "supergroup"
    return {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat, "type": kind},
        "text": text,
        "from": BOT,
    }


def _error(
    call: Call, status: int, description: str, retry_after: int = 0, **parameters: int
) -> Response:
    call.status = status
    call.error = description
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after:
        parameters["retry_after"] = retry_after
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=status)


def _bad(description: str) -> Response:
    return JSONResponse(
        {"ok": False, "error_code": 400, "description": description}, status_code=400
    )


# What Telegram takes for no text: what tdlib's clean_input_string removes or makes a space
# (control characters, U+2028-U+202E: line and paragraph separators, the direction
# embeddings and overrides, three combining marks) and what its strip_empty_characters drops
# (whitespace and the spaces it lists, zero-width characters, direction marks, the byte order
# mark, the Braille blank, the object replacement character and Unicode's tag characters).
_TELEGRAM_EMPTY = re.compile(
    "[\\s\x00-\x08\x0e-\x1b\u030a\u0333\u033f\u180e\u200b-\u200f\u2028-\u202e"
    "\u2800\ufeff\ufffc\U000e0000-\U000e007f]"
)


def _visible(params: dict[str, Any], max_entities: int | None) -> str | Response:
    text = params.get("text", "")
    if "link_preview_options" in params:
        try:
            options = json.loads(params["link_preview_options"])
        except ValueError:
            options = None
        if not isinstance(options, dict):
            return _bad("Bad Request: can't parse link preview options JSON object")
    if params.get("parse_mode") == "HTML":
        try:
            text = _HtmlChecker.text_of(text, max_entities)
        except ValueError as exc:
            return _bad(f"Bad Request: can't parse entities: {exc}")
        except _TooManyEntities:
            # The server's MTProto error, passed on as Bot API errors are (PTB shows it as
            # "Entities_too_long").
            return _bad("Bad Request: ENTITIES_TOO_LONG")
    if not _TELEGRAM_EMPTY.sub("", text):  # Telegram trims the text first
        return _bad("Bad Request: message text is empty")
    if len(text.encode("utf-16-le")) // 2 > 4096:
        return _bad("Bad Request: message is too long")
    return str(text)


class _TooManyEntities(Exception):
    pass


class _HtmlChecker(HTMLParser):
    """Telegram's HTML rules: known tags only, every tag closed in order; entities (each tag
    is one; pre's code is part of the pre) not more than `max_entities`, where given."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.out: list[str] = []
        self.entities = 0

    @classmethod
    def text_of(cls, html: str, max_entities: int | None = None) -> str:
        checker = cls()
        checker.feed(html)
        checker.close()
        if checker.open:
            raise ValueError(f"can't find end tag corresponding to start tag {checker.open[-1]}")
        if max_entities is not None and checker.entities > max_entities:
            raise _TooManyEntities
        return "".join(checker.out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            raise ValueError(f"unsupported start tag {tag!r}")
        if (reason := _misplaced(tag, self.open)) is not None:
            raise ValueError(reason)
        if not (tag == "code" and self.open[-1:] == ["pre"]):
            self.entities += 1
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            raise ValueError(f"unexpected end tag {tag!r}")

    def handle_data(self, data: str) -> None:
        self.out.append(data)


def _misplaced(tag: str, open_tags: list[str]) -> str | None:
    """Telegram's nesting rules: nothing inside code (but pre's own code), no quote in a
    quote, no link in a link."""
    inside = open_tags[-1] if open_tags else ""
    if inside == "pre" and tag == "code":
        return None
    if {"code", "pre"} & set(open_tags):
        return f"{tag!r} inside code"
    if tag in open_tags and tag in ("blockquote", "a"):
        return f"{tag!r} inside {tag!r}"
    return None


@contextlib.asynccontextmanager
async def unlimited_bot() -> AsyncIterator[tuple[FakeBotApi, Bot]]:
    """A stand-in without flood limits and a PTB `Bot` talking to it (no FloodGate), for
    tests of what is sent rather than when."""
    api = FakeBotApi(Limits((UNLIMITED, 1.0), (UNLIMITED, 1.0), (UNLIMITED, 1.0)))
    async with api.serving() as base_url, Bot(TOKEN, base_url=base_url) as bot:
        yield api, bot
