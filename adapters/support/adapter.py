"""The support adapter: mounts the API (adapters/support/api.py) on Parley's HTTP host and is
the core's sink for the `support` platform: each answer becomes `delta` events as it streams
and one `answer` event at its end (or one `notice`), appended to the conversation's event log
(adapters/support/events.py), which every worker's streams read.

Conversation key: platform "support", chat id "<site>:<visitor>". The adapter holds no
product rules: access, rate limits of the conversation, documents and sentences are the
core's; what is here is the API's own protection (keys, origins, tokens, per-visitor and
per-address request limits, body sizes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from bot.conversation.manager import OutputAway
from bot.conversation.sink import Author, Shown, current_author, current_shown
from bot.errors import StorageError
from bot.outage import Outage, is_outage
from bot.storage.base import Cache
from bot.storage.cache import build_cache
from bot.storage.database import create_engine
from bot.storage.redis_client import client_for
from bot.types import ConversationKey, Incoming

from . import answers, openapi, pages
from .agent_api import AgentApi, StreamBridge
from .api import Handler, SupportApi, endpoint, failed, refusal_log
from .auth import PLATFORM, Authenticator, answer_origin, cors_headers, preflight_headers
from .errors import ApiError, forbidden
from .events import (
    AlreadyAnswered,
    AlreadyNoticed,
    EventLog,
    LogUnreachable,
    Outbox,
    build_event_log,
)
from .history import SupportHistory, delivered, notice_id
from .schemas import AgentEvent
from .settings import SupportSettings
from .sites import REFRESH_S, SiteDirectory, SiteStore
from .tokens import TokenSigner, load_secret
from .webhooks import WebhookBridge

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from adapters.kit.runner import AdapterHost

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds between looks at an event log found out of reach; answers wait for it meanwhile.
LOG_RETRY_S = 2.0
# The piece of the core's delivery (bot.conversation.sink.Shown) that holds the answer's key
# in the event log (events.EventLog.append's `once`).
ANSWER_PIECE = 0


def create(host: AdapterHost, settings: SupportSettings) -> SupportAdapter:
    return SupportAdapter(host, settings)


class SupportAdapter:
    platform = PLATFORM

    def __init__(self, host: AdapterHost, settings: SupportSettings) -> None:
        self._host = host
        self._settings = settings
        core = host.settings
        self._engine: AsyncEngine = create_engine(
            core.database.url.get_secret_value(),
            pool_size=core.database.pool_size,
            timeout_s=core.database.timeout_s,
        )
        self._cache: Cache = build_cache(core.redis)
        # Commands and the subscription apart: a subscription blocks its connection for good.
        self._redis = client_for(core.redis)
        self._listening = client_for(core.redis, max_connections=2, subscriber=True)
        self.events: EventLog = build_event_log(
            self._redis,
            core.redis.key_prefix,
            kept=settings.events_kept,
            ttl_s=settings.events_ttl_s,
            listener=self._listening,
        )
        # Redis for the event log: answers wait while it is out of reach (see deliver).
        self._log_outage = Outage(LOG_RETRY_S, meanwhile="web-chat answers wait", logger=log)
        # What the API logs of the requests that anyone can make fail: a line a minute at most.
        self.refused = refusal_log()
        self.sites = SiteStore(self._engine)
        self.directory = SiteDirectory(self.sites)
        signer = TokenSigner(load_secret(settings.token_secret), settings.token_ttl_s)
        if settings.token_secret is None and (not core.database.is_sqlite or core.redis.url):
            # parley doctor says so too; a worker started without it said nothing, and a
            # second worker on another machine then refused every visitor of the first.
            log.warning(
                "support.token_secret is not set: visitor tokens are signed with a secret "
                "kept in this machine's data folder, which workers on other machines refuse; "
                "set PARLEY_SUPPORT__TOKEN_SECRET, the same on every worker"
            )
        self._auth = Authenticator(self.directory, signer)
        self._history = SupportHistory(self._engine, host.store, host.usage)
        self.api = SupportApi(
            settings,
            intake=host.intake,
            cache=self._cache,
            directory=self.directory,
            signer=signer,
            events=self.events,
            history=self._history,
            max_message_chars=core.conversation.max_message_chars,
        )
        # The core's desk (bot/handoff); None where the core runs without one.
        self._desk = host.desk
        self.agent_api = AgentApi(
            self._auth,
            self._engine,
            host.store,
            self._desk,
            max_body_bytes=settings.max_body_bytes,
            max_message_chars=core.conversation.max_message_chars,
        )
        self.webhooks = WebhookBridge(
            settings.webhooks,
            settings.webhook,
            attempts=settings.webhook_attempts,
            timeout_s=settings.webhook_timeout_s,
            backoff_max_s=settings.webhook_backoff_max_s,
        )

    async def __aenter__(self) -> Self:
        await self.directory.refresh(force=True)
        await self.events.start()
        if self._desk is not None:
            self._desk.attach(StreamBridge(self.events))
            if self.webhooks.enabled:
                self._desk.attach(self.webhooks)
        for route in self.routes():
            self._host.http.mount(route)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.events.end_streams()
        await self.webhooks.aclose()
        await self.events.aclose()
        await self._cache.aclose()
        for client in (self._redis, self._listening):
            if client is not None:
                await client.aclose()
        await self._engine.dispose()

    def routes(self) -> list[BaseRoute]:
        """The API as an app of its own under /v1: its unknown paths and methods are answered
        by its exception handler, in the API's error format."""
        api = self.api
        v1: list[BaseRoute] = [
            self._route("/visitors", api.visitors, "POST"),
            self._route("/messages", api.messages, "POST"),
            self._route("/events", api.events, "GET"),
            self._route("/history", api.history, "GET"),
            self._route("/visitor", api.erase, "DELETE"),
            self._route("/handoff", self.agent_api.status, "GET"),
            self._route("/handoff/take", self.agent_api.take, "POST"),
            self._route("/handoff/give-back", self.agent_api.give_back, "POST"),
            self._route("/handoff/messages", self.agent_api.message, "POST"),
            Route("/openapi.json", self._openapi, methods=["GET"]),
            Route("/docs", self._docs, methods=["GET"]),
        ]
        app = Starlette(routes=v1, exception_handlers={HTTPException: self._unrouted})
        # "/v1/messages/" is no endpoint (404, as JSON), not Starlette's empty 307 to the path
        # without the slash: its address was built from the Host header and the scheme the
        # worker saw, http:// behind a proxy ending TLS, and a client following it sent the
        # request again in clear text.
        app.router.redirect_slashes = False
        routes: list[BaseRoute] = [Mount("/v1", app=app)]
        routes.extend(pages.routes(self._settings))  # the widget and its demo page
        return routes

    async def run(self) -> None:
        """Requests arrive on the HTTP host; meanwhile keep the sites and keys current. A
        stop (cancellation) ends the open event streams, so that the HTTP server can close:
        their clients reconnect, with Last-Event-ID, to a worker that is not stopping."""
        try:
            while True:
                await asyncio.sleep(REFRESH_S)
                try:  # forced: the prompt and collection the core reads are never older
                    await self.directory.refresh(force=True)
                except Exception as exc:  # the database is away: the last known sites stay
                    log.warning("support: sites not refreshed: %s", type(exc).__name__)
        finally:
            self.events.end_streams()

    async def idle(self) -> None:
        await self._host.intake.idle()

    async def is_admin(self, incoming: Incoming) -> bool:
        return False  # one visitor per conversation: no groups, no admins

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        conversation = key.chat_id
        author = current_author()
        if author is not None:  # a person at the help desk speaks, not the bot
            await self._deliver_agent(key, author, chunks)
            return
        answered = await self.api.message_id(key, reply_to)
        await self._log_reachable(conversation)
        shown = current_shown()
        # An earlier attempt at this delivery noted its answer's key (see _put_answer): this
        # one appends under the same key, so that only one of them lands an `answer`.
        once = shown.pieces.get(ANSWER_PIECE) if shown is not None else None
        outbox = Outbox(self.events, conversation, once=None if once is None else str(once))
        try:
            try:
                await self._put_answer(outbox, chunks, answered, shown)
            finally:
                await outbox.close()
        except AlreadyAnswered as exc:
            # An earlier attempt's answer landed meanwhile (an append that had timed out):
            # left pending, its delivery kept, and the next attempt records that answer.
            log.info("support: an earlier attempt at this answer is in the log; kept")
            raise OutputAway(PLATFORM) from exc
        except AlreadyNoticed:
            # An earlier attempt's notice landed (its append timed out): the visitor has it,
            # and the core records it as said.
            log.info("support: this notice is in the log already; not said twice")
        except LogUnreachable as exc:
            # Left pending for the sweep to answer afresh once the log is back: an answer
            # nobody may ever see is neither recorded nor cut off (its first delta then tells
            # the client to drop what got out of this one).
            self._log_outage.failed(exc.__cause__ or exc)
            raise OutputAway(PLATFORM) from exc
        self._log_outage.succeeded()
        try:
            # A message never kept (a sender not allowed gets a notice) was not erased.
            erased = answered is not None and await self.api.erased_meanwhile(key, reply_to)
        except StorageError as exc:
            # The answer is out, but SQL is out of reach: left as a worker killed here leaves
            # it, the next attempt records the answer as it landed (never as cut off).
            log.info("support: answer sent; it is recorded once the database is back")
            raise OutputAway(PLATFORM) from exc
        if erased:
            # Erased while streaming: what was appended since must not outlive it.
            await self.events.erase(conversation)

    async def _put_answer(
        self,
        outbox: Outbox,
        chunks: AsyncIterator[str],
        answered: str | None,
        shown: Shown | None,
    ) -> None:
        """The answer's events: its deltas (`first` on the first of this attempt, so a client
        drops what an earlier attempt showed) and the `answer`, or one `notice`. Before the
        `answer` or `notice` is sent, its key is noted with the core's delivery in SQL
        (`Shown.showed`, as piece ANSWER_PIECE): an attempt whose `answer` may have landed
        (its append timed out, its worker was killed before the core recorded it) is then
        finished by the next attempt recording that answer (shown_answer), never by a second
        one; a notice that landed is not appended again by the next attempt (AlreadyNoticed),
        which may answer instead."""
        parts: list[str] = []
        pending = aiter(chunks)
        async for chunk in pending:
            if not chunk:
                continue
            if not parts and chunk in answers.notice_texts():
                rest = [c async for c in pending if c]
                if not rest:  # the core's sentence, said whole: a notice, not an answer
                    await _keyed(outbox, shown)
                    outbox.put("notice", _notice(chunk, answered, outbox.once, shown))
                    return
                parts.extend([chunk, *rest])
                text = "".join(parts)
                outbox.put("delta", {"reply_to": answered, "text": text, "first": True})
                break
            parts.append(chunk)
            outbox.put("delta", {"reply_to": answered, "text": chunk, "first": len(parts) == 1})
        text = "".join(parts)
        await _keyed(outbox, shown)
        outbox.put("answer", {"reply_to": answered, "text": text, "sources": answers.sources(text)})

    async def shown_answer(
        self, key: ConversationKey, pieces: Mapping[int, str | int]
    ) -> str | None:
        """The text of the `answer` an earlier attempt at this delivery appended under the key
        it noted (bot.conversation.sink.KeepsAnswers); None: none landed. OutputAway while
        the log is out of reach: whether it landed is not known yet."""
        once = pieces.get(ANSWER_PIECE)
        if once is None:
            return None
        found = await self._on_log(self.events.answered(key.chat_id, str(once)))
        if found is None:
            return None
        text: str = json.loads(found.data)["text"]
        return text

    async def ensure_reachable(self, key: ConversationKey) -> None:
        """The core asks before a turn runs (bot.conversation.sink.Reachable): while the
        event log is out of reach the turn waits without asking the model."""
        await self._log_reachable(key.chat_id)

    async def _log_reachable(self, conversation: str) -> None:
        """While the event log is out of reach a turn waits (OutputAway) without asking the
        model, except for one look at the log every LOG_RETRY_S."""
        if not self._log_outage.down:
            return
        if not self._log_outage.should_try():
            raise OutputAway(PLATFORM)
        await self._on_log(self.events.latest(conversation))

    async def _on_log(self, call: Awaitable[T]) -> T:
        """`call` to the event log; its being out of reach is OutputAway (the turn waits)."""
        try:
            result = await call
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._log_outage.failed(exc)
            raise OutputAway(PLATFORM) from exc
        self._log_outage.succeeded()
        return result

    async def _deliver_agent(
        self, key: ConversationKey, author: Author, chunks: AsyncIterator[str]
    ) -> None:
        """An agent's reply as one `agent` event: its name, the text in the visitor's language
        and, when that is a translation, the original and a mark saying so. Dropped with the
        log when the visitor erased its data meanwhile (while the reply was translated).
        While the event log is out of reach it waits like a bot's answer (OutputAway): it
        was a failed turn, and after three an apology in the agent's name replaced it."""
        conversation = key.chat_id
        await self._log_reachable(conversation)
        text, translated = delivered("".join([chunk async for chunk in chunks]), author.text)
        event = AgentEvent(
            text=text,
            name=author.name,
            translated=translated,
            original=author.text if translated else "",
            language=author.language,
            reply_to="" if author.message_id is None else str(author.message_id),
        )
        await self._on_log(self.events.append(conversation, [("agent", event.model_dump())]))
        if not await self._history.holds(key):
            await self.events.erase(conversation)

    def system_prompt_for(self, key: ConversationKey) -> str | None:
        """The site's own system prompt (None: the core's); for the conversation manager."""
        site = self.directory.cached(key.chat_id.partition(":")[0])
        return site.system_prompt if site is not None and site.system_prompt else None

    def collection_for(self, key: ConversationKey) -> str:
        """The knowledge-base collection the site's answers cite ("": the default)."""
        site = self.directory.cached(key.chat_id.partition(":")[0])
        return site.collection if site is not None else ""

    def _route(self, path: str, handler: Handler, method: str) -> Route:
        async def route(request: Request) -> Response:
            if request.method == "OPTIONS":
                return await self._preflight(request)
            return await handler(request)

        # The preflight too: it reads the sites, which may fail like any handler.
        route.__name__ = handler.__name__
        wrapped = endpoint(route, origins=lambda: self.directory.all_origins, refused=self.refused)
        return Route(path, wrapped, methods=[method, "OPTIONS"])

    async def _preflight(self, request: Request) -> Response:
        origin = await self._auth.preflight_allowed(request)
        if origin is None:
            return forbidden("this origin is not allowed").response()
        return Response(status_code=204, headers=preflight_headers(origin))

    async def _unrouted(self, request: Request, exc: Exception) -> Response:
        """No such endpoint (404) or method (405, with Allow), as JSON; with the CORS header
        for an origin some site lists (no site is named), so the page can read why."""
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        if exc.status_code == 404:
            code, message = "not_found", "no such endpoint (see /v1/openapi.json)"
        elif exc.status_code == 405:
            code, message = "method_not_allowed", f"{request.method} is not allowed here"
        else:
            code, message = "invalid_request", exc.detail
        response: Response = ApiError(exc.status_code, code, message, exc.headers).response()
        try:
            origin = await self._auth.preflight_allowed(request)
        except Exception as failure:
            # The sites could not be reloaded: answered as an endpoint answers it (an outage
            # is a JSON 503 with Retry-After, not Starlette's plain-text 500), with the CORS
            # header for the origins as last loaded.
            response = failed(request, failure, self.refused)
            origin = answer_origin(request, self.directory.all_origins)
        if origin is not None:
            response.headers.update(cors_headers(origin))
        return response

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def _docs(self, request: Request) -> Response:
        return HTMLResponse(openapi.docs_page(), headers=openapi.DOCS_HEADERS)


def _notice(
    text: str, answered: str | None, once: str | None, shown: Shown | None
) -> dict[str, object]:
    """A `notice` event's data. Said in a turn, it is recorded as the answer to the messages
    it names (`answered`: the newest), and its id is the history's row's. Said outside any
    turn (`shown` None: the intake's refusal, "not allowed", of a message it does not take,
    which may be the retry of one kept earlier) it is recorded nowhere: `recorded` false, and
    an id of its own, so that no client waits for a history to show it, nor takes it for
    the notice a history shows for the message it names."""
    recorded = shown is not None
    said_id = notice_id(answered if recorded else None, once)
    return {"id": said_id, "reply_to": answered, "text": text, "recorded": recorded}


async def _keyed(outbox: Outbox, shown: Shown | None) -> None:
    """Give the outbox the delivery's key in the event log, noted with the core's delivery
    first (none outside a turn: a notice the core says aside is not run again)."""
    if outbox.once is None and shown is not None:
        once = uuid.uuid4().hex
        if not await shown.showed(ANSWER_PIECE, once):
            # The database is out of reach: an `answer` sent under a key SQL does not hold
            # would be sent again by the attempt that finishes this delivery. Left pending,
            # it is answered afresh (its first delta marked `first`) once SQL is back.
            log.info("support: the answer's key was not noted; it is sent by a later attempt")
            raise OutputAway(PLATFORM)
        outbox.once = once
