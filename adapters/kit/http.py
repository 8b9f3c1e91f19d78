"""Parley's one HTTP server: a Starlette application served by uvicorn inside Parley's loop.

Adapters mount their routes on it (the Telegram webhook today; the support API later), and
it always serves `/healthz` (the process is alive) and `/readyz` (ready for traffic; unready
once a stop began). It is started only when something is mounted. While Parley stops, every
other request gets 503 with Retry-After, so a platform that re-sends on failure (Telegram
does) delivers the update again, to a worker that is not stopping. uvicorn's warnings that
any client can cause, one per connection (bytes that are no HTTP request, an upgrade to a
protocol it does not serve), are logged at most once a minute each (bot.logthrottle).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.errors import AdapterError, ConfigError
from bot.health import WORKER_HEADER
from bot.logthrottle import ThrottledLog
from bot.settings import HttpSettings

from .head_deadline import head_deadline_protocol
from .target import AbsoluteTarget

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# Served while stopping too: they take no input, and the turns finished or cut in the grace
# must still reach Prometheus (where `/metrics` is mounted at all).
SERVED_WHILE_STOPPING = HEALTH_PATHS | {"/metrics"}
RETRY_AFTER_S = 5
# A request's line and headers together, at most: what common proxies let through (nginx's
# large_client_header_buffers: 4 x 8 KB) and more; past it 400 and the connection closed.
MAX_HEADER_BYTES = 64 * 1024
# uvicorn's (h11) warnings that any client can cause, one per connection, by their message
# (the last one follows the one before it where no websocket library is installed).
UVICORN_REFUSALS = frozenset(
    {
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\", "
        "or install 'websockets' or 'wsproto' manually.",
    }
)


class HttpHost:
    def __init__(
        self,
        settings: HttpSettings,
        *,
        ready: Callable[[], Awaitable[list[str]]] | None = None,
        section: str = "http",
    ) -> None:
        """`ready`: the problems that make this worker unready (bot.readiness.ReadinessProbe);
        none: ready whenever it is not stopping. `section`: the settings section whose host and
        port it listens on ("metrics" for the metrics port's own server), named in its errors
        so that the operator changes the right setting."""
        self._settings = settings
        self._section = section
        self._ready = ready
        self._routes: list[BaseRoute] = []
        self.draining = False
        # A filter on uvicorn's logger while this serves.
        self.uvicorn_refusals = ThrottledLog(logging.getLogger("uvicorn.error"), UVICORN_REFUSALS)

    def mount(self, route: BaseRoute) -> None:
        """Serve `route`. A path that another route already serves, or that lies under
        another's mount (a webhook at /v1/... beside the support API's /v1), would never be
        reached: a ConfigError naming both, not a webhook that answers 404 for ever."""
        served = _served(route)
        taken = [*((path, False) for path in HEALTH_PATHS), *map(_served, self._routes)]
        for other in taken:
            if served is not None and other is not None and _overlap(served, other):
                _refuse(served[0], other[0])
        if isinstance(route, Route) and "{" not in route.path:
            # A route with parameters before it (/{page}) takes this path too.
            for earlier in self._routes:
                if isinstance(earlier, Route) and "{" in earlier.path:
                    match, _ = earlier.matches(
                        {"type": "http", "path": route.path, "method": "GET"}
                    )
                    if match is not Match.NONE:
                        _refuse(route.path, earlier.path)
        self._routes.append(route)

    @property
    def in_use(self) -> bool:
        return bool(self._routes)

    @property
    def address(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    def app(self) -> ASGIApp:
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            *self._routes,
        ]
        # A path and the same path with a "/" at its end are one path here (see mount). A
        # webhook URL is often typed by hand into another service: with the "/" Starlette would
        # answer 307, which webhook senders do not follow with the body (every event lost).
        routes += [
            Route(f"{r.path}/", r.endpoint, methods=r.methods and list(r.methods), name=r.name)
            for r in routes
            if isinstance(r, Route) and not r.path.endswith("/")
        ]
        host_app = Starlette(routes=routes)
        # Nor is any other path redirected: a mount's prefix without its "/" (the support
        # API's POST /v1) got an empty 307 to an address made from the Host header and the
        # scheme the worker saw (http:// behind a proxy ending TLS), and a client following it
        # sent the body again in clear text.
        host_app.router.redirect_slashes = False
        draining = _RefuseWhileDraining(host_app, self)
        # Outermost: what follows (the paths served while stopping) sees the target's path.
        return AbsoluteTarget(_BodyDeadline(draining, self._settings.body_timeout_s))

    async def serve(self) -> None:
        """Serve until cancelled. A port that cannot be bound is one AdapterError line."""
        sock = listening_socket(self._settings.host, self._settings.port, self._section)
        # log_config None: uvicorn's records go to the root handlers (Parley's format, JSON
        # included, and its redaction), not to a handler of its own that prints plain lines
        # ("WARNING:  Invalid HTTP request received.", which any client can cause).
        # h11, with a cap on a request's line and headers: httptools (uvicorn's default where
        # it is installed) reads a header for as long as a client sends it, all in memory.
        config = uvicorn.Config(
            self.app(),
            access_log=False,
            log_level="warning",
            log_config=None,
            # With a time limit on each request's line and headers (http.header_timeout_s).
            http=head_deadline_protocol(self._settings.header_timeout_s),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        server = EmbeddedServer(config)
        log.info("HTTP server (%s) listening on %s", self._section, self.address)
        refusals = self.uvicorn_refusals
        refusals.logger.addFilter(refusals)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await asyncio.shield(serving)
        finally:  # cancelled: let uvicorn finish its own shutdown (open connections closed)
            server.should_exit = True
            try:
                await asyncio.gather(serving, return_exceptions=True)
            finally:  # a second cancellation during that wait must not leave the filter on
                sock.close()
                refusals.logger.removeFilter(refusals)

    async def _healthz(self, request: Request) -> Response:
        # The header tells `parley doctor` that what holds a port is a worker (bot.health).
        return PlainTextResponse("ok", headers={WORKER_HEADER: "1"})

    async def _readyz(self, request: Request) -> Response:
        if self.draining:
            return PlainTextResponse("stopping", status_code=503)
        problems = await self._ready() if self._ready is not None else []
        if problems:
            return PlainTextResponse("\n".join(problems), status_code=503)
        return PlainTextResponse("ready")


def listening_socket(host: str, port: int, section: str = "http") -> socket.socket:
    """A socket listening on host:port, as `serve` opens it, or one AdapterError line naming
    `section`'s setting. `parley doctor` opens and closes one to check the port. On POSIX
    create_server sets SO_REUSEADDR, as uvicorn does: a port whose last connections are in
    TIME_WAIT (a worker just stopped) can be bound. A host with a ":" is IPv6 (as uvicorn
    tells it), "::" taking IPv4 too where the system can: an IPv4 socket refused it."""
    ipv6 = ":" in host
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    try:
        # Resolved first: create_server reports a resolver's error with its number as an
        # errno ("Unknown error -2" for "Name or service not known"), and a name the IDNA
        # codec refuses ("a..b") as a UnicodeError traceback.
        socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        sock = socket.create_server(
            (host, port), family=family, dualstack_ipv6=ipv6 and socket.has_dualstack_ipv6()
        )
    except UnicodeError:
        why = "not a host name or address"
    except socket.gaierror as exc:
        why = exc.strerror or str(exc)
    except OSError as exc:
        # The errno's own words: create_server's strerror repeats the address after them
        # ("... (while attempting to bind on address ('127.0.0.1', 8080))").
        why = os.strerror(exc.errno) if exc.errno else str(exc)
    else:
        # Accepted connections inherit it: no Nagle delay (about 40 ms) on the second and
        # later responses of a kept-alive connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise AdapterError(f"{section}: cannot listen on {host}:{port}: {why}")


def _refuse(path: str, taken: str) -> None:
    raise ConfigError(
        f"http: {path} is already served here (by {taken}): give one of them another path "
        "(docs/adapters.md, one HTTP server)"
    )


def _served(route: BaseRoute) -> tuple[str, bool] | None:
    """A Route's path, or a Mount's prefix ending in "/" (every path under it), and whether
    it is a mount."""
    if isinstance(route, Mount):
        return route.path.rstrip("/") + "/", True
    if isinstance(route, Route):
        return route.path, False
    return None


def _overlap(new: tuple[str, bool], old: tuple[str, bool]) -> bool:
    (path, mount), (taken, taken_mount) = new, old
    if path.rstrip("/") == taken.rstrip("/"):
        return True
    # A mount takes every path under its prefix.
    return (taken_mount and path.startswith(taken)) or (mount and taken.startswith(path))


class _RefuseWhileDraining:
    def __init__(self, app: ASGIApp, host: HttpHost) -> None:
        self._app = app
        self._host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self._host.draining
            and scope["path"] not in SERVED_WHILE_STOPPING
        ):
            headers = {"Retry-After": str(RETRY_AFTER_S)}
            # The support API's error shape (docs/support.md); a platform's webhook sender
            # reads only the status.
            body = {"error": {"code": "unavailable", "message": "this worker is stopping"}}
            response = JSONResponse(body, status_code=503, headers=headers)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _BodyDeadline:
    """A request's body must arrive whole within `timeout_s` of the first read of it. Past
    that the client gets 408 (and the connection is closed; a response that had begun is
    ended instead); the route reading the body is told the client left (Starlette's
    ClientDisconnect), and whatever it answers is dropped.
    Reads after the body is whole (an event stream waiting for the client to leave) are not
    timed."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self._app = app
        self._timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        whole = started = timed_out = False

        async def timed_receive() -> Message:
            nonlocal deadline, whole, timed_out
            if whole or timed_out:
                return await receive() if not timed_out else {"type": "http.disconnect"}
            deadline = deadline if deadline is not None else loop.time() + self._timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                if started:  # a response that began before the body was read: end it here
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    await _too_slow(send, self._timeout_s)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                whole = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # the 408 (or what was sent before the time ran out) stands
            started = True
            await send(message)

        try:
            await self._app(scope, timed_receive, guarded_send)
        except (ClientDisconnect, OSError):  # the route was told the client left
            if not timed_out:
                raise
        if timed_out:  # DEBUG: a client may send many (the 408 is its answer)
            log.debug("http: %s %s: the body did not arrive within %gs; 408",
                     scope.get("method", ""), scope.get("path", ""), self._timeout_s)  # fmt: skip


async def _too_slow(send: Send, timeout_s: float) -> None:
    body = json.dumps(
        {"error": {"code": "request_timeout",
                   "message": f"the request body did not arrive within {timeout_s:g} s"}}
    ).encode()  # fmt: skip
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside Parley's loop: Parley owns SIGINT/SIGTERM, so uvicorn must not take
    them over; stopping is cancelling `serve()` or `should_exit = True`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
