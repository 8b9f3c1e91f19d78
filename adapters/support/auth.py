"""Who is calling: a visitor (its signed token) or the site's back end (a server key), on
which site, from which browser Origin; and the CORS headers that origin may get.

A browser request carries an Origin, and it must be one of the caller's site's origins
(otherwise 403, with no CORS header, so the browser does not let the page read it). A request
without Origin is a server's: only a server key may make a visitor for it. An error that
comes before the site is known (a bad or expired token, a bad body) names the request's
origin when some site lists it: the widget must read a 401 to renew its token.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from starlette.requests import Request

from bot.types import ConversationKey

from .errors import ApiError, forbidden, unauthorized
from .sites import SECRET_PREFIX, Site, SiteDirectory, normalize_origin
from .tokens import BadToken, TokenSigner

PLATFORM = "support"
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Parley-Site-Key"
CORS_EXPOSE = "Retry-After"
CORS_MAX_AGE_S = "600"
VISITOR_ID = re.compile(r"v_[A-Za-z0-9_-]{1,62}")


@dataclass(frozen=True, slots=True)
class Caller:
    site: Site
    visitor_id: str
    by_server: bool

    @property
    def conversation(self) -> str:
        return f"{self.site.name}:{self.visitor_id}"

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(PLATFORM, self.conversation)

    @property
    def user_id(self) -> str:
        """The visitor as the core knows the sender: within its site, so that no site's key
        reaches another site's visitor record, limits, budget or preferences."""
        return self.conversation


def checked_visitor_id(value: str) -> str:
    """A visitor id as the API issues them ("v_" and URL-safe characters), else 422: one
    from a query string could hold anything, NUL characters included."""
    if not VISITOR_ID.fullmatch(value):
        raise ApiError(422, "invalid_request", "visitor_id: a visitor id (v_..., 64 at most)")
    return value


def origin_of(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin
    try:
        return normalize_origin(origin)
    except Exception:
        return origin  # not one any site lists: refused like any other stranger


def bearer(request: Request, *, query: bool = False) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if query:  # visitor tokens only: a secret key in a URL ends up in proxy and access logs
        token = request.query_params.get("token") or None
        if token is not None and token.startswith(SECRET_PREFIX):
            raise unauthorized("a server key goes in the Authorization header, never in the URL")
        return token
    return None


def check_origin(request: Request, site: Site) -> None:
    """Refuse a browser page that is not on the site; remember the origin for CORS."""
    origin = origin_of(request)
    if origin is None:
        return
    if origin not in site.origins:
        request.state.origin_refused = True  # its answer gets no CORS header (answer_origin)
        raise forbidden(f"the origin {origin} is not allowed for this site")
    request.state.cors_origin = origin


class Authenticator:
    def __init__(self, directory: SiteDirectory, signer: TokenSigner) -> None:
        self._directory = directory
        self._signer = signer

    async def server_site(self, secret: str) -> Site:
        site = await self._directory.by_secret(secret)
        if site is None:
            raise unauthorized("unknown or revoked server key")
        return site

    async def caller(
        self, request: Request, visitor_id: str | None = None, *, query_token: bool = False
    ) -> Caller:
        """The caller of a visitor endpoint. `visitor_id`: the visitor a server key acts for
        (with a visitor token it may only repeat the token's own)."""
        token = bearer(request, query=query_token)
        if token is None:
            raise unauthorized("send Authorization: Bearer <visitor token or server key>")
        if token.startswith(SECRET_PREFIX):
            site = await self.server_site(token)
            check_origin(request, site)
            if not visitor_id:
                raise ApiError(422, "invalid_request", "visitor_id: required with a server key")
            return Caller(site, checked_visitor_id(visitor_id), by_server=True)
        try:
            claim = self._signer.verify(token)
        except BadToken as exc:
            raise unauthorized(str(exc)) from None
        found = await self._directory.by_id(claim.site_id)
        if found is None or not claim.belongs_to(found.id, found.public_key):
            raise unauthorized("the token's site no longer exists")
        check_origin(request, found)
        named = request.headers.get("x-parley-site-key")
        if named is not None and named != found.public_key:
            raise forbidden("the token belongs to another site")
        if visitor_id and visitor_id != claim.visitor_id:
            raise forbidden("the token belongs to another visitor")
        return Caller(found, claim.visitor_id, by_server=False)

    async def preflight_allowed(self, request: Request) -> str | None:
        """The origin a CORS preflight may be answered for: one that some site lists (the
        preflight names no site; the request itself is then checked against its own)."""
        await self._directory.refresh()
        origin = origin_of(request)
        return origin if origin and origin in self._directory.all_origins else None


def answer_origin(request: Request, listed: Collection[str] = ()) -> str | None:
    """The origin an answer's CORS header names: the caller's site's, once checked; for an
    error before that (a bad token or body), the request's origin when `listed` (every
    site's) has it, unless the caller's site refused that origin (403 unreadable)."""
    checked: str | None = getattr(request.state, "cors_origin", None)
    if checked is not None or getattr(request.state, "origin_refused", False):
        return checked
    origin = origin_of(request)
    return origin if origin is not None and origin in listed else None


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": CORS_EXPOSE,
        "Vary": "Origin",
    }


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        **cors_headers(origin),
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": CORS_MAX_AGE_S,
    }
