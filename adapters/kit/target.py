"""A request target in absolute form (`GET http://host:port/v1/history HTTP/1.1`), served as
its path and query.

RFC 9112 section 3.2.2: a server MUST accept the absolute form, which proxies and some clients
send. uvicorn's h11 protocol hands the target on whole as the path, so it matched no route
(Starlette's plain 404). Here, before routing, an http or https target becomes its path (`/`
when it has none) and query, and its authority becomes the Host: a server must ignore the
Host header then (3.2.2), so one that disagrees is replaced, not an error. The scheme is left
as the connection's: any client may write `https://`. A target that is neither a path (nor
`*`) nor an http or https URL with a host, or one with userinfo (RFC 9110 4.2.4) or a
fragment, is the API's JSON 400.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*:")
# RFC 3986 reg-name (an IPv4 address is one too) and port; an IP literal is checked apart.
REG_NAME = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+")
PORT = re.compile(rb"[0-9]*")


class BadTarget(Exception):
    pass


class AbsoluteTarget:
    """ASGI middleware: an HTTP request's absolute-form target routed as its path."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = scope.get("raw_path") or scope.get("path", "").encode()
        if scope["type"] != "http" or target[:1] == b"/" or target == b"*":
            await self._app(scope, receive, send)
            return
        try:
            scope = origin_form(scope, target)
        except BadTarget as exc:
            body = {"error": {"code": "invalid_request", "message": f"the request target {exc}"}}
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await self._app(scope, receive, send)


def origin_form(scope: Scope, target: bytes) -> Scope:
    """`scope` with the absolute `target`'s path, and its authority as the Host header."""
    scheme = SCHEME.match(target)
    if scheme is None:
        raise BadTarget("is neither a path nor a URL")
    if scheme.group().lower() not in (b"http:", b"https:"):
        raise BadTarget("is a URL of a scheme other than http or https")
    rest = target[scheme.end() :]
    if not rest.startswith(b"//") or b"#" in target or b"#" in scope.get("query_string", b""):
        raise BadTarget("is no valid http or https URL")
    authority, slash, path = rest[2:].partition(b"/")
    _check_authority(authority)
    raw_path = slash + path or b"/"
    headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
    return {
        **scope,
        "path": unquote(raw_path.decode("latin-1")),  # as uvicorn decodes a path
        "raw_path": raw_path,
        "headers": [(b"host", authority), *headers],
    }


def _check_authority(authority: bytes) -> None:
    if b"@" in authority:
        raise BadTarget("names a user (userinfo), which an http or https URL must not")
    if authority.startswith(b"["):
        literal, bracket, port = authority[1:].partition(b"]")
        if not bracket or not _ipv6(literal):
            raise BadTarget("has a malformed IPv6 host")
        if port and not port.startswith(b":"):
            raise BadTarget("has a malformed port")
        port = port[1:]
    else:
        host, _, port = authority.partition(b":")
        if REG_NAME.fullmatch(host) is None:  # an empty host too: RFC 9110 4.2.1 rejects it
            raise BadTarget("has no valid host")
    if PORT.fullmatch(port) is None:
        raise BadTarget("has a malformed port")


def _ipv6(literal: bytes) -> bool:
    try:
        ipaddress.IPv6Address(literal.decode("latin-1"))
    except ValueError:
        return False
    return True
