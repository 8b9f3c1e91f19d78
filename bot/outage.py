"""A shared service that went away.

Outage        Redis (or another service: Chatwoot) gone: tried again after a pause instead
              of on every call, and logged once when it goes down and once when it is back,
              however many calls fail
is_outage     whether an error says the database or Redis is out of reach or timed out
              (to be retried, told in one line) rather than a bug (logged whole)
error_types   what a log line may say of such an error: its types, never its text
"""

from __future__ import annotations

import errno
import importlib
import logging
import socket
import sqlite3
import time
from collections.abc import Iterator

import httpx
from sqlalchemy import exc as sa_exc


class Outage:
    def __init__(
        self,
        retry_after_s: float,
        *,
        meanwhile: str,
        logger: logging.Logger,
        service: str = "Redis",
    ) -> None:
        """`meanwhile` says what Parley does while the service is down (for the log)."""
        self._service = service
        self._retry_after_s = retry_after_s
        self._meanwhile = meanwhile
        self._log = logger
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def should_try(self) -> bool:
        return time.monotonic() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + self._retry_after_s
        if self._down_since is None:
            self._down_since = now
            # The exception text names host and port at most; the URL (and password) never.
            self._log.warning(
                "%s is unreachable (%s: %s); %s, retrying every %gs",
                self._service,
                type(exc).__name__,
                exc,
                self._meanwhile,
                self._retry_after_s,
            )

    def succeeded(self) -> None:
        # A call that went through (a health check asks even during the pause) ends the
        # pause: read as "absent" meanwhile, a worker's liveness key made a live worker dead.
        self._retry_at = 0.0
        if self._down_since is None:
            return
        elapsed = time.monotonic() - self._down_since
        self._log.info("%s is reachable again after %.1fs", self._service, elapsed)
        self._down_since = None


# SQLSTATE classes of a server out of reach or refusing work for now, as PostgreSQL drivers
# report them (`sqlstate`): connection exceptions, insufficient resources (too many
# connections, disk full), operator intervention (shut down, starting up, in recovery).
_OUTAGE_SQLSTATES = ("08", "53", "57P")


# SQLite's result codes of a database that cannot be used for now (a lock held elsewhere, a
# disk that failed or is full, a file that cannot be opened): `sqlite3.Error.sqlite_errorname`.
# Every SQL error on SQLite is an OperationalError, a misspelt statement too: only these are
# outages.
_SQLITE_OUTAGES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN")
# A plain OSError that says the network is in the way (the others of the network are
# ConnectionError and TimeoutError subclasses).
_NETWORK_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ETIMEDOUT}
)


def _optional(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """Exception classes of an optional extra; none when it is not installed."""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(imported, name) for name in names)


# Failures that mean a service is out of reach or did not answer in time: the network
# (refused, reset, timed out, a name that does not resolve), an HTTP client's transport
# (httpx's, the Telegram library's NetworkError, aiohttp's connection errors), SQLAlchemy's
# pool and connection errors, Redis's connection and time-outs. A bad statement, a broken
# constraint, a file that is not there or Redis refusing a command or a password is none of
# them: that is a bug, or a setting to fix, and is logged whole.
_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    httpx.TransportError,
    sa_exc.OperationalError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    *_optional("redis.exceptions", "ConnectionError", "TimeoutError"),
    *_optional("telegram.error", "NetworkError"),
    *_optional("aiohttp", "ClientConnectionError"),
)
_NEVER_OUTAGES: tuple[type[BaseException], ...] = _optional(
    "redis.exceptions", "AuthenticationError"
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: StorageError wraps the driver's error) says the
    database, Redis or a platform is out of reach or timed out, as opposed to a bug."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_outage(each) for each in exc.exceptions)
    chain = list(causes(exc))
    for each in chain:
        if isinstance(each, _NEVER_OUTAGES):
            return False
        if isinstance(each, sqlite3.Error) and each.sqlite_errorname:
            return each.sqlite_errorname.startswith(_SQLITE_OUTAGES)
    for each in chain:
        if isinstance(each, _OUTAGE_TYPES):
            return True
        if isinstance(each, OSError) and each.errno in _NETWORK_ERRNOS:
            return True
        if isinstance(each, sa_exc.DBAPIError) and each.connection_invalidated:
            return True  # the server closed the connection
        sqlstate = getattr(each, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_OUTAGE_SQLSTATES):
            return True
    return False


def error_types(exc: BaseException) -> str:
    """The types of `exc` and its causes, "StorageError <- ConnectionResetError": what a log
    line may say of a failure (its messages can hold statements, user text or a URL)."""
    return " <- ".join(dict.fromkeys(type(each).__name__ for each in causes(exc)))


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (`__cause__`, the driver's `orig`, the context it was raised
    in unless that was suppressed), each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending and len(seen) < 16:
        each = pending.pop(0)
        if id(each) in seen:
            continue
        seen.add(id(each))
        yield each
        orig = getattr(each, "orig", None) if isinstance(each, sa_exc.DBAPIError) else None
        context = None if each.__suppress_context__ else each.__context__
        pending += [e for e in (each.__cause__, orig, context) if isinstance(e, BaseException)]
