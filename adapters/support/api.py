"""The support API's endpoints under /v1 (docs/support.md). Handlers translate HTTP into the
core's Intake calls and reads of the event log and history; every refusal is an ApiError
(adapters/support/errors.py), answered as JSON with a 4xx. Any other failure is answered in
the same shape by `endpoint`: the database or Redis out of reach is 503 `unavailable` with
Retry-After (a message retried with its Idempotency-Key is then recorded once), anything else
500 `internal`; never Starlette's plain text, never a traceback to the client. A client that
leaves mid-request, which anyone can do any number of times, is logged at most once a minute
(bot.logthrottle): the first at once.

    POST   /v1/visitors    a visitor token for a browser (site key + Origin) or a server
    POST   /v1/messages    a visitor's message -> 202; the answer arrives on /v1/events
    GET    /v1/events      Server-Sent Events of the caller's conversation, resumable
    GET    /v1/history     the conversation, a page at a time
    DELETE /v1/visitor     erase the visitor's data
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from bot.conversation.intake import Intake
from bot.conversation.manager import STUB_MARK
from bot.logthrottle import ThrottledLog
from bot.lru import Lru
from bot.phrases import base_language
from bot.storage import keys
from bot.storage.base import Cache
from bot.storage.database import known_failure
from bot.text.language import normalize_language
from bot.text.storable import storable
from bot.types import Incoming, User

from .auth import (
    PLATFORM,
    Authenticator,
    Caller,
    answer_origin,
    bearer,
    check_origin,
    cors_headers,
)
from .bodies import idempotency_key, int_param, read_body
from .errors import ApiError, error_types, forbidden, internal, is_outage, unauthorized, unavailable
from .events import EventLog, stream, valid_event_id
from .history import HandoffNote, SupportHistory, with_notes
from .schemas import (
    HistoryPage,
    MessageAccepted,
    MessageRequest,
    VisitorRequest,
    VisitorResponse,
)
from .settings import SupportSettings
from .sites import SECRET_PREFIX, Site, SiteDirectory
from .tokens import BadToken, TokenSigner, new_visitor_id

log = logging.getLogger(__name__)
# How long a message's `message` event may hold its 202 (the event log away: not at all).
MESSAGE_EVENT_WAIT_S = 1.0
# Failures told in the log that any client can cause, before it is known (bot.logthrottle).
REFUSALS = frozenset({"disconnected"})

Handler = Callable[[Request], Awaitable[Response]]
_Model = TypeVar("_Model", bound=BaseModel)

# platform message id -> SQL message id of messages submitted in this process (the answer's
# `reply_to`); one submitted on another worker is looked up in SQL.
KNOWN_IDS = 50_000


def refusal_log() -> ThrottledLog:
    """What `failed` logs for each REFUSALS reason: at most a line a minute."""
    return ThrottledLog(log, REFUSALS)


def endpoint(
    handler: Handler,
    origins: Callable[[], Collection[str]] | None = None,
    *,
    refused: ThrottledLog | None = None,
) -> Handler:
    """Errors as JSON, with the CORS header that `answer_origin` names: a success's for the
    caller's site's origin; an error's also for an origin that `origins` (every site's, as
    last loaded) lists, since an error may come before the site is known (a bad token, a
    bad body), and the page must read it to renew its token or give up. `refused`: the
    log shared by the API's endpoints (none: one of its own)."""
    quiet = refused if refused is not None else refusal_log()

    async def wrapped(request: Request) -> Response:
        listed: Collection[str] = ()  # a success: only the caller's site's origin
        try:
            _each_name_once(request)
            response = await handler(request)
        except Exception as exc:
            response = exc.response() if isinstance(exc, ApiError) else failed(request, exc, quiet)
            listed = origins() if origins is not None else ()
        origin = answer_origin(request, listed)
        if origin is not None:
            response.headers.update(cors_headers(origin))
        return response

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _each_name_once(request: Request) -> None:
    """400 for a query parameter given twice: Starlette reads the last of two where another
    reader (a proxy's rule, a filter in front of Parley) may read the first, and would check
    one visitor or token while Parley served another (as a JSON body's key twice, bodies.py)."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            shown = json.dumps(name[:40], ensure_ascii=not name.isprintable())
            raise ApiError(400, "invalid_request", f"the query names {shown} twice")
        seen.add(name)


def failed(request: Request, exc: Exception, refused: ThrottledLog) -> Response:
    """The answer to a handler's failure that is no ApiError. An outage is one line at
    warning level naming the error's types: never its text nor a traceback, which can carry
    user text, statements or a URL with a password. Anything else is a bug, logged whole."""
    where = f"{request.method} {request.url.path}"
    if isinstance(exc, ClientDisconnect):  # the client left mid-request: nobody reads this
        refused.info("disconnected", "support API: %s: the client disconnected", where)
        return ApiError(400, "invalid_request", "the request ended early").response()
    if is_outage(exc):
        # What the driver's code says, where it is one an operator acts on (a full disk): in
        # words built from no driver text, so it quotes no value either.
        known = known_failure(exc, None)
        said = f"{error_types(exc)}: {known}" if known else error_types(exc)
        log.warning("support API: %s: unavailable (%s)", where, said)
        return unavailable(keyed="idempotency-key" in request.headers).response()
    log.exception("support API: %s failed", where)
    return internal().response()


def platform_message_id(idempotency_key: str) -> str:
    return "m" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


class SupportApi:
    def __init__(
        self,
        settings: SupportSettings,
        *,
        intake: Intake,
        cache: Cache,
        directory: SiteDirectory,
        signer: TokenSigner,
        events: EventLog,
        history: SupportHistory,
        max_message_chars: int,
    ) -> None:
        self._s = settings
        self._intake = intake
        self._cache = cache
        self._directory = directory
        self._signer = signer
        self._auth = Authenticator(directory, signer)
        self._events = events
        self._history = history
        self._max_chars = max_message_chars
        self._ids: Lru[int] = Lru(KNOWN_IDS)
        # Open event streams in this worker, per "visitor:..." and "address:..." key.
        self._streams: dict[str, int] = {}

    # -- endpoints ---------------------------------------------------------------------------

    async def visitors(self, request: Request) -> Response:
        """A visitor token; with `visitor_token`, for the same visitor again."""
        # The site first (kept in memory): a 429 then has its CORS header, for the widget.
        site, by_server = await self._site_of(request)
        await self._limit_ip(request)
        body = await self._body(request, VisitorRequest, optional=True)
        visitor_id = new_visitor_id()
        if body.visitor_token:
            try:
                claim = self._signer.verify(body.visitor_token, allow_expired=True)
            except BadToken as exc:
                raise unauthorized(f"visitor_token: {exc}") from None
            if not claim.belongs_to(site.id, site.public_key):
                raise forbidden("visitor_token belongs to another site")
            visitor_id = claim.visitor_id
        elif request.headers.get("origin") is None and not by_server:
            raise forbidden("a request without Origin needs a server key")
        token, claim = self._signer.issue(site.id, site.public_key, visitor_id)
        expires = datetime.fromtimestamp(claim.expires_at, UTC).isoformat()
        out = VisitorResponse(
            visitor_id=visitor_id, token=token, expires_at=expires,
            max_message_chars=self._max_chars,
        )  # fmt: skip
        return JSONResponse(out.model_dump(), status_code=201)

    async def messages(self, request: Request) -> Response:
        """Record a visitor's message; its answer streams on /v1/events."""
        # The address is counted while the request is read: one round trip less per message.
        ip_hits = asyncio.create_task(self._hits(keys.support_ip(_client(request))))
        try:
            caller, body, idempotency = await self._message_request(request)
            # A retry (the same Idempotency-Key) is not counted again: it gets the count its
            # first try got, so a message recorded under the limit is answered 202 again.
            visitor = keys.support_visitor(caller.conversation)
            once = keys.counted(visitor, idempotency) if idempotency is not None else None
            visitor_hits = await self._hits(visitor, once=once)
        finally:
            ip_total = await ip_hits
        self._check(ip_total, self._s.ip_requests)
        self._check(visitor_hits, self._s.visitor_messages)
        key = f"support:{caller.site.id}:{caller.visitor_id}:{idempotency or uuid.uuid4().hex}"
        pmid = platform_message_id(key)
        incoming = Incoming(
            key=caller.key,
            user=User(PLATFORM, caller.user_id, language=self._language(request, caller.site)),
            text=body.text,
            idempotency_key=key[:255],
            platform_message_id=pmid,
        )
        recorded = await self._intake.submit(incoming)
        if recorded is None:
            raise forbidden("this visitor may not talk to the bot here")
        if not recorded.is_new and idempotency is not None:
            await self._check_repeat(caller, recorded.message_id, body.text)
        self._ids.put(pmid, recorded.message_id)
        if recorded.is_new:
            await self._tell_other_tabs(caller, recorded.message_id, pmid, idempotency)
        out = MessageAccepted(
            message_id=str(recorded.message_id), conversation_id=caller.conversation
        )
        return JSONResponse(out.model_dump(), status_code=202)

    async def _tell_other_tabs(
        self, caller: Caller, message_id: int, pmid: str, idempotency: str | None
    ) -> None:
        """The visitor's message as a `message` event, so that the visitor's other tabs (and
        devices) show it; the sender knows it by its Idempotency-Key (`key`; a server key's
        own is not the browser's business). Its text is what was kept (a message over the
        rate limit is a stub), and an erasure meanwhile takes the event with it. Best effort:
        the message is recorded and answered whatever becomes of its event (a reload shows
        it from the history)."""
        try:
            async with asyncio.timeout(MESSAGE_EVENT_WAIT_S):
                kept = await self._history.text_of(caller.key, message_id)
                if kept is None:  # erased already
                    return
                key = "" if caller.by_server else idempotency or ""
                data = {"id": str(message_id), "text": kept, "key": key}
                await self._events.append(caller.conversation, [("message", data)])
            if await self.erased_meanwhile(caller.key, pmid):
                await self._events.erase(caller.conversation)  # erased while it was appended
        except Exception as exc:  # Redis away: the answer waits for it anyway
            log.info("support: a message event was not appended (%s)", type(exc).__name__)

    async def _check_repeat(self, caller: Caller, message_id: int, text: str) -> None:
        """A repeat must be a retry: the same key with another text would get a 202 for a
        message that was dropped (422, as the agent API answers it). A message kept as a
        stub (over the rate or size limit) has no text to compare: taken as a retry."""
        stored = await self._history.text_of(caller.key, message_id)
        if stored is None or stored.startswith(STUB_MARK):
            return
        if stored != storable(text):
            told = "this Idempotency-Key was used with another text"
            raise ApiError(422, "idempotency_mismatch", told)

    async def _message_request(self, request: Request) -> tuple[Caller, MessageRequest, str | None]:
        idempotency = idempotency_key(request)
        body = await self._body(request, MessageRequest)
        caller = await self._auth.caller(request, body.visitor_id)
        if len(body.text) > self._max_chars:
            raise ApiError(
                413,
                "too_long",
                f"text: {len(body.text)} characters; the limit is {self._max_chars}",
            )
        return caller, body, idempotency

    async def events(self, request: Request) -> Response:
        """The conversation's events as Server-Sent Events."""
        caller = await self._auth.caller(
            request, request.query_params.get("visitor_id"), query_token=True
        )
        # Each open reads the log (from Last-Event-ID 0: all it keeps, a thousand events) and
        # sends it again: counted per address, or one client closing and reopening streams
        # has the worker replay logs without end, and every other visitor's answer waits
        # behind it. The caps on open streams bound only those open. A bucket of its own:
        # visitors behind one address (a NAT) reopen theirs whenever a stream ends (a worker
        # stopping ends all it holds), and counted with the address's requests those opens
        # had every message from there refused for the rest of the window.
        await self._limit_ip(request, keys.support_ip_streams)
        after = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        if after is not None:
            after = "0-0" if after == "0" else after
            if not valid_event_id(after):
                raise ApiError(400, "invalid_request", "Last-Event-ID: not an event id")
        # The log out of reach is a 503 to retry later, not a 200 stream that ends at once,
        # which a browser takes for a working connection and opens again at once.
        await self._events.latest(caller.conversation)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            # Starlette serves HEAD wherever GET is (an uptime check, a link previewer): the
            # GET's answer without a body. A stream would be dropped unread yet never end: it
            # held a stream place and hung the connection's next request.
            head = Response(media_type="text/event-stream", headers=headers)
            # A HEAD's length may only be the GET's, and the stream has none: "0" said empty.
            del head.headers["content-length"]
            return head
        visitor_id = request.query_params.get("visitor_id")

        async def still_allowed() -> bool:
            try:
                await self._auth.caller(request, visitor_id, query_token=True)
            except Exception:  # refused now, or it cannot be told: end, the client reconnects
                return False
            return True

        release = self._open_stream(caller.conversation, _client(request))
        body = stream(self._events, caller.conversation, after, self._s.keepalive_s, still_allowed)
        return _CountedStream(release, body, media_type="text/event-stream", headers=headers)

    async def history(self, request: Request) -> Response:
        """A page of the conversation, oldest first; `next` pages further back."""
        caller = await self._auth.caller(request, request.query_params.get("visitor_id"))
        await self._limit_ip(request)  # each page is a database read: counted like a request
        before = int_param(request, "before", 1, 2**62)
        limit = int_param(request, "limit", 1, self._s.history_max_page) or 20
        rows = await self._history.page(caller.key, before, limit)
        more = len(rows) > limit
        previous = rows[0].created_at if more else None  # the older page's newest
        shown_before = rows[0].id if more else 0
        rows = rows[1:] if more else rows
        older = str(rows[0].id) if more and rows else None
        # The changes of hands since the older page's newest message, up to this page's
        # newest (the newest page: all since); a page of no message has none.
        until = rows[-1].created_at if before is not None and rows else None
        notes: list[HandoffNote] = []
        if rows or before is None:
            notes = await self._history.handoff_notes(caller.key, previous, until)
        page = HistoryPage(messages=with_notes(rows, notes, shown_before), next=older)
        return JSONResponse(page.model_dump())

    async def erase(self, request: Request) -> Response:
        """Erase the visitor's messages and conversation (right to erasure)."""
        caller = await self._auth.caller(request, request.query_params.get("visitor_id"))
        await self._limit_ip(request)  # each is a transaction over the visitor's rows
        for conversation_id in await self._history.erase(caller.key, caller.user_id):
            await self._cache.delete(keys.window(conversation_id))
            # The handoff's cached state holds the agent's name and the visitor's language.
            await self._cache.delete(keys.handoff(conversation_id))
        await self._events.erase(caller.conversation)
        return Response(status_code=204)

    # -- the sink's helper ---------------------------------------------------------------------

    async def message_id(self, caller_key: Any, pmid: str) -> str | None:
        """The public id of the message a reply answers (its `reply_to`)."""
        if not pmid:
            return None
        known = self._ids.get(pmid)
        if known is None:
            known = await self._history.message_id(caller_key, pmid)
        return str(known) if known is not None else None

    async def erased_meanwhile(self, caller_key: Any, pmid: str) -> bool:
        """Whether the message an answer replied to is gone from SQL: the visitor erased its
        data while the answer streamed (read afresh: the id cache may still hold it)."""
        if not pmid:
            return False
        return await self._history.message_id(caller_key, pmid) is None

    # -- parts ---------------------------------------------------------------------------------

    async def _site_of(self, request: Request) -> tuple[Site, bool]:
        """The site a new visitor is for: a server key's, else the public site key's."""
        token = bearer(request)
        if token is not None and token.startswith(SECRET_PREFIX):
            site = await self._auth.server_site(token)
            check_origin(request, site)
            return site, True
        public = request.headers.get("x-parley-site-key")
        if not public:
            raise unauthorized("send X-Parley-Site-Key: <site key>, or a server key")
        found = await self._directory.by_public_key(public)
        if found is None:
            raise unauthorized("unknown site key")
        check_origin(request, found)
        return found, False

    async def _body(
        self, request: Request, model: type[_Model], *, optional: bool = False
    ) -> _Model:
        return await read_body(request, model, self._s.max_body_bytes, optional=optional)

    def _open_stream(self, conversation: str, address: str) -> Callable[[], None]:
        """Count an event stream against its visitor's and address's caps (429 over one) and
        return what gives its places back. Counted here, with no await between the check and
        the count: streams opened at the same moment each see the others."""
        keys = (f"visitor:{conversation}", f"address:{address}")
        caps = (self._s.streams_per_visitor, self._s.streams_per_address)
        if any(self._streams.get(k, 0) >= cap for k, cap in zip(keys, caps, strict=True)):
            raise ApiError(
                429, "too_many_streams", "too many open event streams", {"Retry-After": "10"}
            )
        for key in keys:
            self._streams[key] = self._streams.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            for key in keys:
                left = self._streams.get(key, 1) - 1
                if left > 0:
                    self._streams[key] = left
                else:
                    self._streams.pop(key, None)

        return release

    async def _limit_ip(
        self, request: Request, bucket: Callable[[str], str] = keys.support_ip
    ) -> None:
        """`support.ip_requests` a window for the client's address, in `bucket`."""
        hits = await self._hits(bucket(_client(request)))
        self._check(hits, self._s.ip_requests)

    async def _hits(self, key: str, *, once: str | None = None) -> int:
        return await self._cache.count(key, self._s.rate_window_s, once=once)

    def _check(self, hits: int, most: int) -> None:
        if hits > most:
            retry = str(math.ceil(self._s.rate_window_s))
            raise ApiError(
                429, "rate_limited", f"too many requests; try again in {retry} s",
                {"Retry-After": retry},
            )  # fmt: skip

    def _language(self, request: Request, site: Site) -> str:
        """The visitor's language: the first of the browser's that the site speaks, else the
        site's first; for a site that names none, the first of the browser's that names a
        known language, as its ISO 639-1 code."""
        wanted = [
            part.split(";")[0].strip()
            for part in request.headers.get("accept-language", "").split(",")
            if part.split(";")[0].strip() not in ("", "*")
        ]
        if not site.languages:  # the browser's first that names a language: its code
            # (the header is the caller's text: it must not reach a prompt or a note as such)
            return next((code for tag in wanted if (code := _language_code(tag))), "")
        offered = {base_language(lang): lang for lang in site.languages}
        for tag in wanted:
            if base_language(tag) in offered:
                return offered[base_language(tag)]
        return site.languages[0]


def _client(request: Request) -> str:
    return client_address(request.client.host) if request.client else "unknown"


def client_address(host: str) -> str:
    """The address a client's requests and streams are counted by: an IPv4 address itself;
    an IPv6 one by its /64, which one line or server holds whole and picks its source
    address in at will (counted per address, it was never limited); an IPv4-mapped one
    (a dual-stack listener) as the IPv4 address it maps."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # not an address (a test client's name, a socket path): itself
        return host
    if not isinstance(address, ipaddress.IPv6Address):
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class _CountedStream(StreamingResponse):
    """An event stream whose places (SupportApi._open_stream) are given back when the
    response ends, however it ends: streamed to its end, the client gone before the first
    byte, or the worker stopping."""

    def __init__(self, release: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _language_code(tag: str) -> str | None:
    try:
        return normalize_language(tag[:35])  # the longest tag worth reading (BCP 47's advice)
    except ValueError:
        return None
