"""The agent API: a help desk's back end acts on a support conversation through the core's
desk (bot/handoff), with the site's secret server key (docs/support-desk.md).

    GET  /v1/handoff?visitor_id=       the conversation's handoff state
    POST /v1/handoff/take              an agent takes the conversation over (409 `taken`
                                       when another agent has it, unless `force`)
    POST /v1/handoff/give-back         the agent gives it back to the bot
    POST /v1/handoff/messages          the agent's reply (Idempotency-Key: posted once per
                                       conversation; reused with another body: 422)

Only a server key (`Authorization: Bearer sk_...`) is accepted: never the public widget key,
never a visitor token, since either is in a browser. A conversation is named by its visitor
within the key's site, so no key reaches another site's conversation; one that has never
written is 404. Also here: `StreamBridge`, which puts the desk's state changes on the
conversation's event stream as `handoff` events for the widget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.handoff.desk import AGENT_KEY_PREFIX
from bot.handoff.types import (
    Desk,
    DeskAway,
    DeskEvent,
    EventKind,
    HandoffError,
    HandoffState,
    HandoffStatus,
)
from bot.outage import is_outage
from bot.storage.base import Store
from bot.storage.database import run_on_connection
from bot.storage.models import ConversationRow
from bot.text.storable import storable
from bot.types import ConversationKey

from .auth import PLATFORM, Authenticator, bearer, check_origin, checked_visitor_id
from .bodies import idempotency_key, read_body
from .errors import ApiError, forbidden, unauthorized
from .events import EventLog
from .history import handoff_id
from .schemas import (
    AgentMessageAccepted,
    AgentMessageRequest,
    AgentRequest,
    HandoffEvent,
    HandoffStatusBody,
    TakeRequest,
)
from .sites import SECRET_PREFIX, Site

_Request = TypeVar("_Request", bound=AgentRequest)
# The widget's header for the public site key: sent here, it is refused as one (403), not as
# a missing key (401).
SITE_KEY_HEADER = "x-parley-site-key"
STATE_CHANGES = frozenset({EventKind.REQUESTED, EventKind.TAKEN, EventKind.RETURNED})


def unavailable() -> ApiError:
    return ApiError(503, "unavailable", "the help desk is not running on this server")


class AgentApi:
    def __init__(
        self,
        auth: Authenticator,
        engine: AsyncEngine,
        store: Store,
        desk: Desk | None,
        *,
        max_body_bytes: int,
        max_message_chars: int,
    ) -> None:
        self._auth = auth
        self._engine = engine
        self._store = store
        self._desk = desk
        self._max_body = max_body_bytes
        self._max_chars = max_message_chars

    async def status(self, request: Request) -> Response:
        """The conversation's handoff state."""
        site = await self._server_site(request)
        visitor = checked_visitor_id(request.query_params.get("visitor_id") or "")
        key = await self._conversation(site, visitor)
        with _conflicts(key):
            return _status(key, await self._the_desk().status(key))

    async def take(self, request: Request) -> Response:
        """An agent takes the conversation: the bot stops answering it. Taking it from another
        agent is 409 unless the body says `"force": true` (a supervisor reassigning it)."""
        key, body = await self._agent_request(request, TakeRequest)
        desk = self._the_desk()
        with _conflicts(key):
            # Read, then change: two agents taking one conversation in the same instant both
            # get it, the later one last; it is a race between people, not a lost message.
            now = await desk.status(key)
            if not body.force and _held_by_another(now, body.agent):
                told = "another agent has this conversation; send force: true to take it"
                raise ApiError(409, "taken", told)
            return _status(key, await desk.take(key, body.agent))

    async def give_back(self, request: Request) -> Response:
        """The agent gives the conversation back: the bot answers the next message."""
        key, body = await self._agent_request(request, AgentRequest)
        with _conflicts(key):
            return _status(key, await self._the_desk().give_back(key, body.agent))

    async def message(self, request: Request) -> Response:
        """The agent's reply: delivered to the visitor, translated into its language.

        An Idempotency-Key belongs to the conversation (so two visitors' keys never meet). A
        retry with the same key and body gets the first message's id and changes nothing
        (also once the conversation went back to the bot); the same key with another text
        or agent is 422 `idempotency_mismatch` (as Stripe does), never a 202 for a message
        that was not sent."""
        idempotency = idempotency_key(request)
        key, body = await self._agent_request(request, AgentMessageRequest)
        if len(body.text) > self._max_chars:
            told = f"text: {len(body.text)} characters; the limit is {self._max_chars}"
            raise ApiError(413, "too_long", told)
        scoped = _scoped_key(key, idempotency)
        first = await self._sent(scoped) if idempotency else None
        if first is not None:  # a retry: nothing to change, whatever the state is now
            first.check(body)
            return _accepted(key, first.id)
        with _conflicts(key):
            message_id = await self._the_desk().agent_message(
                key, body.text, agent=body.agent, idempotency_key=scoped
            )
        if idempotency:  # a request racing this one with the same key may have won
            sent = await self._sent(scoped)
            if sent is not None:
                sent.check(body)
        return _accepted(key, message_id)

    # -- parts ---------------------------------------------------------------------------------

    async def _agent_request(
        self, request: Request, model: type[_Request]
    ) -> tuple[ConversationKey, _Request]:
        site = await self._server_site(request)
        body = await read_body(request, model, self._max_body)
        return await self._conversation(site, body.visitor_id), body

    async def _server_site(self, request: Request) -> Site:
        token = bearer(request)
        if token is None and request.headers.get(SITE_KEY_HEADER):
            raise forbidden("the agent API takes a server key, never the public site key")
        if token is None:
            raise unauthorized("send Authorization: Bearer <server key>")
        if not token.startswith(SECRET_PREFIX):
            raise forbidden("the agent API takes a server key, never a site or visitor token")
        site = await self._auth.server_site(token)
        check_origin(request, site)
        return site

    async def _sent(self, scoped: str) -> _Sent | None:
        """The agent message recorded with this key, if any."""
        found = await self._store.message_by_key(AGENT_KEY_PREFIX + scoped)
        return _Sent(found.id, found.content, found.user_id) if found is not None else None

    async def _conversation(self, site: Site, visitor_id: str) -> ConversationKey:
        """The site's conversation with this visitor; 404 when it has none."""
        key = ConversationKey(PLATFORM, f"{site.name}:{visitor_id}")
        c = ConversationRow
        stmt = sa.select(c.id).where(
            c.platform == key.platform, c.chat_id == key.chat_id, c.thread_id == ""
        )
        if await run_on_connection(self._engine, lambda conn: conn.scalar(stmt)) is None:
            raise ApiError(404, "not_found", "no conversation with this visitor on this site")
        return key

    def _the_desk(self) -> Desk:
        if self._desk is None:
            raise unavailable()
        return self._desk


@dataclasses.dataclass(frozen=True, slots=True)
class _Sent:
    """An agent message recorded under an Idempotency-Key: what a retry must repeat."""

    id: int
    text: str
    agent: str

    def check(self, body: AgentMessageRequest) -> None:
        if self.text != storable(body.text) or self.agent != body.agent:
            told = "this Idempotency-Key was used with another text or agent"
            raise ApiError(422, "idempotency_mismatch", told)


def _scoped_key(key: ConversationKey, idempotency: str | None) -> str:
    """The stored key: the conversation's, and a digest of the client's (its 128 characters
    and the ids would not fit the column whole, and a cut one could meet another)."""
    if idempotency is None:
        return f"agent:{uuid.uuid4().hex}"  # no key: every request is a new message
    digest = hashlib.sha256(idempotency.encode("utf-8", "surrogatepass")).hexdigest()
    return f"agent:{key.chat_id}:{digest}"


def _accepted(key: ConversationKey, message_id: int) -> JSONResponse:
    out = AgentMessageAccepted(message_id=str(message_id), conversation_id=key.chat_id)
    return JSONResponse(out.model_dump(), status_code=202)


def _held_by_another(status: HandoffStatus, agent: str) -> bool:
    return (
        status.state is HandoffState.HUMAN
        and bool(status.agent)
        and status.agent.casefold() != agent.casefold()
    )


@contextlib.contextmanager
def _conflicts(key: ConversationKey) -> Iterator[None]:
    """What the conversation's state does not allow (a reply before anyone took it): 409. The
    desk names the conversation by its core key ("support:shop:v_..."); the message uses the
    API's `conversation_id` ("shop:v_..."), as every response and the docs do."""
    try:
        yield
    except HandoffError as exc:
        told = str(exc).replace(str(key), key.chat_id)
        raise ApiError(409, "conflict", told) from None


def _status(key: ConversationKey, status: HandoffStatus) -> JSONResponse:
    since = status.since.astimezone(UTC).isoformat() if status.since else None
    body = HandoffStatusBody(
        conversation_id=key.chat_id,
        state=status.state.value,
        reason=status.reason.value if status.reason else None,
        detail=status.detail,
        since=since,
        agent=status.agent,
    )
    return JSONResponse(body.model_dump())


class StreamBridge:
    """The desk's state changes for support conversations, as `handoff` events on the
    conversation's stream. Agent messages are not here: the sink delivers them as `agent`
    events, in order with the answers (adapters/support/adapter.py)."""

    platforms: frozenset[str] | None = frozenset({PLATFORM})

    def __init__(self, events: EventLog) -> None:
        self._events = events

    async def publish(self, event: DeskEvent) -> None:
        if event.kind not in STATE_CHANGES or event.key.platform != PLATFORM:
            return
        data = HandoffEvent(
            id=handoff_id(event.at),
            state=event.state.value,
            reason=event.reason.value if event.reason else None,
            agent=event.agent,
        )
        try:
            await self._events.append(event.key.chat_id, [("handoff", data.model_dump())])
        except Exception as exc:
            # The log out of reach (a Redis restart): the desk keeps the event until it is
            # back. Dropped after five quick tries, the widget went on showing the bot, or
            # "Connecting you with a person...", for ever (a helper's review).
            if is_outage(exc):
                raise DeskAway(f"the event log is out of reach ({type(exc).__name__})") from exc
            raise
