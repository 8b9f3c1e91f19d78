"""The API's errors: `{"error": {"code": ..., "message": ...}}` with a 4xx status, one short
specific sentence each, never a traceback. What a handler raises besides ApiError is answered
in the same shape (api.endpoint): an outage of the database or Redis (`is_outage`) is 503
`unavailable` with Retry-After, to be retried; anything else is 500 `internal`, a bug."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.responses import JSONResponse

# Seconds a client waits before it retries after an outage (Retry-After): about how long the
# cache pauses after a failure of Redis, and what a stopping worker asks for.
OUTAGE_RETRY_AFTER_S = 5

# SQLSTATE classes of a server out of reach or refusing work for now, as PostgreSQL drivers
# report them (`sqlstate`): connection exceptions, insufficient resources (too many
# connections, disk full), operator intervention (shut down, starting up, in recovery).
_OUTAGE_SQLSTATES = ("08", "53", "57P")


def _redis_failures() -> tuple[type[BaseException], ...]:
    try:  # the optional [redis] extra
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return ()
    return (RedisConnectionError, RedisTimeoutError)


# Failures that mean a backing service is out of reach or did not answer in time: the network
# (refused, reset, timed out: OSError, TimeoutError included), SQLAlchemy's pool and
# connection errors, Redis's connection and time-outs. A bad statement, a broken constraint or
# Redis refusing a command is none of them: that is a bug.
_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    sa_exc.OperationalError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    *_redis_failures(),
)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(exc: ValidationError) -> ApiError:
    """The first problem of a body, named by its field: "text: must not be blank"."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    message = str(first["msg"]).removeprefix("Value error, ")
    return ApiError(422, "invalid_request", f"{where}: {message}")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: StorageError wraps the driver's error) says the
    database or Redis is out of reach or timed out, as opposed to a bug."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_outage(each) for each in exc.exceptions)
    for each in _chain(exc):
        if isinstance(each, _OUTAGE_TYPES):
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
    return " <- ".join(dict.fromkeys(type(each).__name__ for each in _chain(exc)))


def _chain(exc: BaseException) -> Iterator[BaseException]:
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


def unavailable(*, keyed: bool) -> ApiError:
    """A backing service is out of reach: to be retried. `keyed`: the request carried an
    Idempotency-Key, which the retry must repeat so that it is recorded once."""
    retry = OUTAGE_RETRY_AFTER_S
    told = f"the service is briefly unavailable; retry in {retry} s"
    if keyed:
        told += " with the same Idempotency-Key"
    return ApiError(503, "unavailable", told, {"Retry-After": str(retry)})


def internal() -> ApiError:
    return ApiError(500, "internal", "the server failed to handle this request")
