"""A fake Chatwoot for tests: a real HTTP server (Starlette under uvicorn, on a free port)
with the two application API endpoints an agent bot uses, and Chatwoot's webhooks, signed as
Chatwoot 4.13+ signs them, sent to Parley.

API (Chatwoot's status codes and error bodies):
    GET  /api                                                  {version, ..., data_services}
    GET  /api/v1/profile   401 "not authorized for bots" for the bot's token (bots may call
                           only a few endpoints), 401 "Invalid Access Token", or a profile
    POST /api/v1/accounts/{a}/conversations/{c}/messages      {content, message_type, private}
    POST /api/v1/accounts/{a}/conversations/{c}/toggle_status  {status}
    401 {"error": "Invalid Access Token"} without the right api_access_token header;
    404 {"error": "Resource could not be found"} for a conversation it does not have;
    422 {"message": ...} for a body it cannot take; 429 with Retry-After when told to.

Webhooks, like Chatwoot's listeners: every message created (the contact's, an agent's note,
and Parley's own answers, which come back) goes to the agent bot as `message_created`
(`Message#webhook_data`); a status change goes to the agent bot as `conversation_opened` /
`conversation_resolved` and to the account webhook as `conversation_status_changed` and
`conversation_updated` (`Conversations::EventDataPresenter#push_data`, with
`changed_attributes`), as does an assignment (`conversation_updated` only). Each is signed:
X-Chatwoot-Signature `sha256=HMAC(secret, "<timestamp>.<body>")`, X-Chatwoot-Timestamp,
X-Chatwoot-Delivery. Like Chatwoot (lib/webhooks/trigger.rb: RestClient with `timeout: 5`, the
error rescued and logged), each delivery waits `webhook_timeout_s` for Parley's answer, then
gives up: recorded with status 0 and never sent again (Chatwoot's agent bot job retries only
429 and 500 answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from markdown_it import MarkdownIt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.local_server import serving

TOKEN = "fake-chatwoot-agent-bot-token"
USER_TOKEN = "fake-chatwoot-user-access-token"  # a person's profile token, not the bot's
BOT_SECRET = "fake-chatwoot-agent-bot-webhook-secret"
ACCOUNT_SECRET = "fake-chatwoot-account-webhook-secret"
ACCOUNT = 7
BOT = {"id": 3, "name": "Parley", "type": "agent_bot"}
# The person USER_TOKEN belongs to: what it posts is that user's message, as in Chatwoot.
TOKEN_USER = {"id": 1, "name": "Sam Admin", "type": "user"}
STATUSES = ("open", "pending", "resolved", "snoozed")
# Chatwoot's dashboard renders message content with markdown-it (MessageFormatter.js).
MARKDOWN = MarkdownIt("js-default", {"html": False, "breaks": True, "typographer": True})
_TAG = re.compile(r"<[^>]*>")
# Chatwoot renders Liquid in every outgoing message it creates (Message's Liquidable concern,
# before_create): `{{ contact.email }}` becomes the contact's address. Text between two
# backticks is wrapped in {% raw %} first (`modified_liquid_content`). Rendered here: raw
# blocks, the variables of LIQUID_DROPS (an unknown one is nil: nothing), any other tag nothing.
_LIQUID_CODE = re.compile(r"`(.*?)`", re.S)
_LIQUID = re.compile(
    r"\{%-?\s*raw\s*-?%\}(.*?)\{%-?\s*endraw\s*-?%\}|\{\{-?(.*?)-?\}\}|\{%.*?%\}", re.S
)
CONVERSATION_PATH = "/api/v1/accounts/{account:int}/conversations/{conversation:int}"


@dataclass
class Call:
    path: str
    body: Any
    status: int


@dataclass
class Conversation:
    account_id: int
    id: int
    status: str
    contact: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    assignee: dict[str, Any] | None = None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class FakeChatwoot:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.webhook_url = ""  # Parley's, set once it serves
        self.calls: list[Call] = []
        self.deliveries: list[tuple[str, int]] = []  # (event, Parley's status code)
        self.conversations: dict[tuple[int, int], Conversation] = {}
        self.clock = clock
        self._ids = itertools.count(1000)
        self._failures: list[tuple[int, str]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=30)
        self.last_answer = ""  # the body of Parley's answer to the last webhook
        self.version = "4.13.0"  # what GET /api reports
        self.failing_services = False
        self.port = 0  # where the API listens, once it serves
        # How long a delivery waits for Parley's answer: Chatwoot's RestClient timeout.
        self.webhook_timeout_s = 5.0
        # Set: public messages Parley posts wait for it (held on their way to the contact);
        # `on_public_post` is awaited as each arrives, after that wait.
        self.hold_public_posts: asyncio.Event | None = None
        self.on_public_post: Callable[[], Awaitable[None]] | None = None

    # -- the test's side ---------------------------------------------------------------------

    def conversation(
        self, conversation_id: int, status: str = "pending", *, account: int = ACCOUNT
    ) -> Conversation:
        contact = {
            "id": 500 + conversation_id,
            "name": "Kim",
            "email": f"kim{conversation_id}@customer.example",
            "phone_number": "+15550100",
            "type": "contact",
        }
        conv = Conversation(account, conversation_id, status, contact)
        self.conversations[(account, conversation_id)] = conv
        return conv

    def fail_next(self, status: int = 429, retry_after: str = "1") -> None:
        """The next API call gets `status` (with Retry-After)."""
        self._failures.append((status, retry_after))

    async def contact_says(self, conv: Conversation, text: str, **delivery: Any) -> int:
        """The contact writes; the webhook goes out now. Returns Parley's status code."""
        message = self.new_message(conv, text, "incoming", private=False, sender=conv.contact)
        return await self.send(self.message_payload(conv, message), **delivery)

    async def contact_sends_file(self, conv: Conversation, file_type: str = "image") -> int:
        """The contact sends an attachment alone (a photo, a PDF): `content` null and the
        attachment in `attachments` (`Attachment#push_event_data`), as Chatwoot sends it."""
        message = self.new_message(conv, None, "incoming", private=False, sender=conv.contact)
        ident = next(self._ids)
        extension = {"image": "png", "file": "pdf"}.get(file_type)
        message["attachments"] = [
            {
                "id": ident,
                "message_id": message["id"],
                "file_type": file_type,
                "account_id": conv.account_id,
                "extension": extension,
                "data_url": f"http://127.0.0.1:{self.port}/rails/active_storage/{ident}",
                "thumb_url": "",
                "file_size": 48213,
            }
        ]
        return await self.send(self.message_payload(conv, message))

    async def agent_writes(self, conv: Conversation, text: str, *, private: bool = True) -> int:
        agent = conv.assignee or {"id": 42, "name": "Alex", "type": "user"}
        message = self.new_message(conv, text, "outgoing", private=private, sender=agent)
        return await self.send(self.message_payload(conv, message))

    async def agent_sets_status(self, conv: Conversation, status: str) -> None:
        """An agent changes the status in Chatwoot's UI."""
        await self._set_status(conv, status)
        await self.settle()

    async def send(
        self,
        payload: dict[str, Any],
        *,
        secret: str = BOT_SECRET,
        age_s: float = 0.0,
        times: int = 1,
    ) -> int:
        """POST one webhook to Parley (`times` identical deliveries, as Chatwoot's retries)."""
        body = json.dumps(payload, ensure_ascii=False).encode()  # as Rails sends it
        timestamp = str(int(self.clock() - age_s))
        headers = {
            "Content-Type": "application/json",
            "X-Chatwoot-Signature": sign(secret, timestamp, body),
            "X-Chatwoot-Timestamp": timestamp,
            "X-Chatwoot-Delivery": str(uuid.uuid4()),
        }
        status = 0
        for _ in range(times):
            try:
                response = await self._http.post(
                    self.webhook_url, content=body, headers=headers,
                    timeout=self.webhook_timeout_s,
                )  # fmt: skip
            except httpx.TimeoutException:  # Chatwoot hangs up, logs it, never sends it again
                status, self.last_answer = 0, ""
            else:
                status, self.last_answer = response.status_code, response.text
            self.deliveries.append((str(payload.get("event")), status))
        return status

    async def settle(self) -> None:
        """Wait until every webhook the fake decided to send was answered."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    def public_replies(self, conv: Conversation) -> list[str]:
        """What the contact sees from the bot: outgoing, not private."""
        return [
            m["content"]
            for m in conv.messages
            if m["message_type"] == "outgoing"
            and not m["private"]
            and m["sender"] in (BOT, TOKEN_USER)
        ]

    def private_notes(self, conv: Conversation) -> list[str]:
        return [
            m["content"] for m in conv.messages if m["private"] and m["sender"] in (BOT, TOKEN_USER)
        ]

    def notes_html(self, conv: Conversation) -> list[str]:
        """The bot's private notes as the dashboard renders them (MessageFormatter: markdown-it
        with html off, breaks and typographer on; its linkify needs linkify-it, not here)."""
        return [MARKDOWN.render(note) for note in self.private_notes(conv)]

    def notes_shown(self, conv: Conversation) -> list[str]:
        """What an agent reads of each note: the rendered HTML's text."""
        return [html.unescape(_TAG.sub("", page)) for page in self.notes_html(conv)]

    def api_calls(self, suffix: str) -> list[Call]:
        return [c for c in self.calls if c.path.endswith(suffix)]

    # -- payloads ------------------------------------------------------------------------------

    def new_message(
        self,
        conv: Conversation,
        text: str | None,
        kind: str,
        *,
        private: bool,
        sender: dict[str, Any],
    ) -> dict[str, Any]:
        message = {
            "id": next(self._ids),
            "content": text,
            "message_type": kind,
            "private": private,
            "sender": sender,
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "content_type": "text",
            "content_attributes": {},
        }
        conv.messages.append(message)
        return message

    def message_payload(self, conv: Conversation, message: dict[str, Any]) -> dict[str, Any]:
        """`Message#webhook_data` with the event name, as the agent bot receives it."""
        return {
            "event": "message_created",
            **{k: v for k, v in message.items()},
            "additional_attributes": {},
            "source_id": None,
            "account": {"id": conv.account_id, "name": "Shop"},
            "inbox": {"id": 1, "name": "Website"},
            "conversation": self.conversation_data(conv),
        }

    def conversation_data(self, conv: Conversation) -> dict[str, Any]:
        now = int(self.clock())
        last = conv.messages[-1] if conv.messages else None
        kinds = {"incoming": 0, "outgoing": 1, "activity": 2}
        pushed = []
        if last is not None:
            pushed.append(
                {
                    **last,
                    "message_type": kinds[last["message_type"]],
                    "account_id": conv.account_id,
                    "conversation_id": conv.id,
                    "created_at": now,
                }
            )
        return {
            "additional_attributes": {},
            "can_reply": True,
            "channel": "Channel::WebWidget",
            "contact_inbox": {"source_id": f"src-{conv.id}", "inbox_id": 1},
            "id": conv.id,
            "inbox_id": 1,
            "messages": pushed,
            "labels": [],
            "meta": {"sender": conv.contact, "assignee": conv.assignee, "team": None},
            "status": conv.status,
            "custom_attributes": {},
            "snoozed_until": None,
            "unread_count": 0,
            "priority": None,
            "waiting_since": 0,
            "agent_last_seen_at": 0,
            "contact_last_seen_at": 0,
            "last_activity_at": now,
            "timestamp": now,
            "created_at": now,
            "updated_at": float(now),
        }

    # -- the API -------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api", self._api_index, methods=["GET"]),
                Route("/api/v1/profile", self._profile, methods=["GET"]),
                Route(f"{CONVERSATION_PATH}/messages", self._create_message, methods=["POST"]),
                Route(f"{CONVERSATION_PATH}/toggle_status", self._toggle, methods=["POST"]),
            ]
        )

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        async with serving(self.app()) as port:
            self.port = port
            try:
                yield f"http://127.0.0.1:{port}"
                await self.settle()
            finally:
                await self._http.aclose()

    async def _api_index(self, request: Request) -> Response:
        """`ApiController#index`: the version and health, no token needed."""
        healthy = "failing" if self.failing_services else "ok"
        return JSONResponse(
            {
                "version": self.version,
                "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "queue_services": "ok",
                "data_services": healthy,
            }
        )

    async def _profile(self, request: Request) -> Response:
        """`Api::V1::ProfilesController#show` behind `Api::BaseController`'s token checks: an
        unknown token, then a bot's token on an endpoint not on the bots' list, are refused."""
        token = request.headers.get("api_access_token")
        if token == USER_TOKEN:
            return JSONResponse(TOKEN_USER)
        if token == TOKEN:
            message = "Access to this endpoint is not authorized for bots"
            return JSONResponse({"error": message}, status_code=401)
        return JSONResponse({"error": "Invalid Access Token"}, status_code=401)

    async def _checked(self, request: Request) -> tuple[Conversation | None, Any, Response | None]:
        try:
            body = await request.json()
        except ValueError:
            body = None
        refusal: Response | None = None
        conv = self.conversations.get(
            (request.path_params["account"], request.path_params["conversation"])
        )
        if request.headers.get("api_access_token") not in (TOKEN, USER_TOKEN):
            refusal = JSONResponse({"error": "Invalid Access Token"}, status_code=401)
        elif self._failures:
            status, retry_after = self._failures.pop(0)
            refusal = JSONResponse(
                {"error": "Too many requests"},
                status_code=status,
                headers={"Retry-After": retry_after},
            )
        elif conv is None:
            refusal = JSONResponse({"error": "Resource could not be found"}, status_code=404)
        elif not isinstance(body, dict):
            refusal = JSONResponse({"message": "invalid body"}, status_code=422)
        code = refusal.status_code if refusal is not None else 200
        self.calls.append(Call(request.url.path, body, code))
        return conv, body, refusal

    async def _create_message(self, request: Request) -> Response:
        conv, body, refusal = await self._checked(request)
        if refusal is not None:
            return refusal
        assert conv is not None
        content = body.get("content")
        kind = body.get("message_type", "outgoing")
        if not isinstance(content, str) or not content or len(content) > 150_000:
            return self._unprocessable(request, "Content is too long or missing")
        if kind not in ("outgoing", "incoming") or not isinstance(body.get("private", False), bool):
            return self._unprocessable(request, "Message type is invalid")
        if kind == "outgoing":
            content = liquid(content, conv)
        if kind == "outgoing" and not body.get("private", False):
            if self.hold_public_posts is not None:
                await self.hold_public_posts.wait()
            if self.on_public_post is not None:
                await self.on_public_post()
        message = self.new_message(
            conv, content, kind, private=body.get("private", False), sender=_poster(request)
        )
        self._later(self.send(self.message_payload(conv, message)))
        return JSONResponse({**message, "conversation_id": conv.id, "account_id": conv.account_id})

    async def _toggle(self, request: Request) -> Response:
        conv, body, refusal = await self._checked(request)
        if refusal is not None:
            return refusal
        assert conv is not None
        status = body.get("status")
        if status not in STATUSES:
            return self._unprocessable(request, "Status is not included in the list")
        await self._set_status(conv, status)
        payload = {"success": True, "current_status": status, "conversation_id": conv.id}
        return JSONResponse({"meta": {}, "payload": payload})

    def _unprocessable(self, request: Request, message: str) -> Response:
        self.calls[-1].status = 422
        return JSONResponse({"message": message}, status_code=422)

    async def _set_status(self, conv: Conversation, status: str) -> None:
        if conv.status == status:
            return  # Chatwoot fires no event for a status that did not change
        previous, conv.status = conv.status, status
        data = self.conversation_data(conv)
        bot_event = {"open": "conversation_opened", "resolved": "conversation_resolved"}
        if status in bot_event:
            self._later(self.send({**data, "event": bot_event[status]}))
        # The account webhook, subscribed to both events as docs/support-desk.md says: a
        # status change is also a conversation_updated (its allowed_keys hold `status`).
        changed = [{"status": {"previous_value": previous, "current_value": status}}]
        for event in ("conversation_status_changed", "conversation_updated"):
            account_event = {**data, "event": event, "changed_attributes": changed}
            self._later(self.send(account_event, secret=ACCOUNT_SECRET))

    async def agent_assigns(self, conv: Conversation, agent: dict[str, Any] | None) -> None:
        """An agent (un)assigns the conversation in Chatwoot's UI: a conversation_updated to
        the account webhook (no status change, so no status event)."""
        previous = conv.assignee
        conv.assignee = agent
        changed = [{"assignee_id": {"previous_value": (previous or {}).get("id"),
                                    "current_value": (agent or {}).get("id")}}]  # fmt: skip
        event = {**self.conversation_data(conv), "event": "conversation_updated",
                 "changed_attributes": changed}  # fmt: skip
        self._later(self.send(event, secret=ACCOUNT_SECRET))
        await self.settle()

    def _later(self, sending: Any) -> None:
        """Chatwoot sends webhooks from a job queue, after the API call answered."""
        task = asyncio.create_task(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


# -- Parley wired to it ------------------------------------------------------------------------


@dataclass
class ChatwootWorker:
    app: Any  # bot.app.Parley
    adapter: Any  # adapters.chatwoot.adapter.ChatwootAdapter
    fake: FakeChatwoot

    async def idle(self) -> None:
        """Every turn answered, every desk event handed on, every webhook answered, until
        nothing moves (an answer's echo, a status change's webhooks)."""
        seen = -1
        while seen != len(self.fake.calls) + len(self.fake.deliveries):
            seen = len(self.fake.calls) + len(self.fake.deliveries)
            await self.fake.settle()
            await self.adapter.idle()
            await self.app.desk.idle()
            await self.fake.settle()


@asynccontextmanager
async def chatwoot_worker(
    database_url: str,
    backend: object | None,
    *,
    handoff: dict[str, Any] | None = None,
    conversation: dict[str, Any] | None = None,
    listening: Callable[[int], None] | None = None,
    **section: Any,
) -> AsyncIterator[ChatwootWorker]:
    """`listening`: told the fake's port once it listens, before the adapter starts (and
    checks that Chatwoot answers): a proxy in front of it is aimed there. `handoff`,
    `conversation`: those settings sections."""
    from adapters.chatwoot.adapter import ChatwootAdapter
    from adapters.chatwoot.settings import ChatwootSettings
    from adapters.kit.runner import host_for
    from bot.app import Parley
    from bot.settings import load_settings

    fake = FakeChatwoot()
    async with fake.serving() as base_url:
        if listening is not None:
            listening(fake.port)
        chatwoot = {
            "url": base_url,
            "api_access_token": TOKEN,
            "webhook_secret": BOT_SECRET,
            "account_webhook_secret": ACCOUNT_SECRET,
            "retries": 2,
            **section,
        }
        settings = load_settings(
            None,
            database={"url": database_url},
            knowledge={"load_sample": False, "semantic": False},
            adapters=["chatwoot"],
            chatwoot=chatwoot,
            handoff=handoff or {},
            conversation=conversation or {},
        )
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            adapter_settings = settings.section("chatwoot")
            assert isinstance(adapter_settings, ChatwootSettings)
            host = host_for(app)
            adapter = ChatwootAdapter(host, adapter_settings)
            app.intake.register("chatwoot", adapter, adapter_settings.access)
            async with adapter, serving(host.http.app()) as port:
                fake.webhook_url = f"http://127.0.0.1:{port}/chatwoot/webhook"
                worker = ChatwootWorker(app, adapter, fake)
                yield worker
                await worker.idle()


class ChatwootHarness:
    """For the adapter contract suite (tests/adapter_harness.py): one contact in one pending
    conversation; what it sees is the bot's public messages there."""

    limit = 150_000  # Chatwoot's longest message content
    length = staticmethod(len)
    groups = False

    def __init__(self, worker: ChatwootWorker) -> None:
        self.app = worker.app
        self.worker = worker
        self.conv = worker.fake.conversation(1)

    async def send(self, text: str, *, group: bool = False, admin: bool = False) -> None:
        status = await self.worker.fake.contact_says(self.conv, text)
        assert status == 200, status

    def seen(self, *, group: bool = False) -> list[str]:
        return self.worker.fake.public_replies(self.conv)

    async def idle(self) -> None:
        await self.worker.idle()


@asynccontextmanager
async def chatwoot_harness(
    tmp_path: Any, backend: object | None, **sections: Any
) -> AsyncIterator[ChatwootHarness]:
    async with chatwoot_worker(
        f"sqlite+aiosqlite:///{tmp_path}/parley.db", backend, **sections
    ) as w:
        yield ChatwootHarness(w)


def _poster(request: Request) -> dict[str, Any]:
    """Who a message posted with this request's token is from: the bot, or the token's user."""
    return TOKEN_USER if request.headers.get("api_access_token") == USER_TOKEN else BOT


def liquid(content: str, conv: Conversation) -> str:
    """`content` as Chatwoot stores an outgoing message: its Liquid rendered (see _LIQUID)."""
    drops = {
        "contact.name": conv.contact.get("name"),
        "contact.email": conv.contact.get("email"),
        "contact.phone_number": conv.contact.get("phone_number"),
        "conversation.display_id": conv.id,
    }

    def render(found: re.Match[str]) -> str:
        if found.group(1) is not None:
            return found.group(1)
        if found.group(2) is not None:
            value = drops.get(found.group(2).split("|")[0].strip())
            return "" if value is None else str(value)
        return ""

    wrapped = _LIQUID_CODE.sub(lambda m: "{% raw %}`" + m.group(1) + "`{% endraw %}", content)
    return _LIQUID.sub(render, wrapped)
