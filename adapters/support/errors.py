"""The API's errors: `{"error": {"code": ..., "message": ...}}` with a 4xx status, one short
specific sentence each, never a traceback. What a handler raises besides ApiError is answered
in the same shape (api.endpoint): an outage of the database or Redis (`is_outage`) is 503
`unavailable` with Retry-After, to be retried; anything else is 500 `internal`, a bug."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from starlette.responses import JSONResponse

from bot.outage import error_types, is_outage

__all__ = ["error_types", "is_outage"]  # the API's module names them too

# Seconds a client waits before it retries after an outage (Retry-After): about how long the
# cache pauses after a failure of Redis, and what a stopping worker asks for.
OUTAGE_RETRY_AFTER_S = 5


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
