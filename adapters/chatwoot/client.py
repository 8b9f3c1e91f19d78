"""Chatwoot's application API, the two calls an agent bot makes (both are on the list of
endpoints Chatwoot lets an agent bot's token use):

    POST /api/v1/accounts/{account}/conversations/{conversation}/messages
         {"content", "message_type": "outgoing", "private"}
    POST /api/v1/accounts/{account}/conversations/{conversation}/toggle_status {"status"}

The token travels in the `api_access_token` header and is never logged. A request Chatwoot
answers 429 or 5xx, or that fails on the network, is retried (tenacity) after Retry-After
when Chatwoot gives one, else with a growing pause; every failure reaches the caller as one
`ChatwootError` that names the call and the status, never the token or the text.
Creating a message is not idempotent (Chatwoot has no idempotency key for it): it is retried
only when Chatwoot surely did not create it (429 and 503 refuse before the controller runs;
a connection that was never made); after a read timeout, a 500, 502 or 504 it may exist, and
posting it again would show the customer the same answer twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from bot.errors import AdapterError

from .settings import ChatwootSettings

# The longest pause a Retry-After may ask for before we give up instead of waiting.
MAX_RETRY_AFTER_S = 60.0
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers that say the request was refused before anything was done.
NOT_APPLIED_STATUS = frozenset({429, 503})
# Failures before the request could reach Chatwoot.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ChatwootError(AdapterError):
    """Chatwoot refused or could not be reached. `status` is 0 for a network failure."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
        maybe_applied: bool = True,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        # False when Chatwoot surely did nothing (refused it, or never got it).
        self.maybe_applied = maybe_applied


@dataclass(frozen=True, slots=True)
class ConversationRef:
    account_id: int
    conversation_id: int  # Chatwoot's display id: the one in URLs and webhooks

    @property
    def path(self) -> str:
        return f"/api/v1/accounts/{self.account_id}/conversations/{self.conversation_id}"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ChatwootError) and (exc.status == 0 or exc.status in RETRYABLE_STATUS)


def _retryable_once(exc: BaseException) -> bool:
    """For a call that must not be applied twice: only when it surely was not applied."""
    return _retryable(exc) and isinstance(exc, ChatwootError) and not exc.maybe_applied


class _WaitRetryAfter:
    """Chatwoot's Retry-After when it sent one, else exponential back-off."""

    def __init__(self) -> None:
        self._fallback = wait_exponential(multiplier=0.5, max=10)

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ChatwootError) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._fallback(state))


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "")
    try:
        seconds = float(raw)
    except ValueError:
        return None  # absent, or an HTTP date: the exponential pause is good enough
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class ChatwootClient:
    def __init__(
        self, settings: ChatwootSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if settings.url is None or settings.api_access_token is None:
            raise AdapterError("chatwoot: url and api_access_token are required")
        self._attempts = settings.retries + 1
        self._http = httpx.AsyncClient(
            base_url=str(settings.url).rstrip("/"),
            headers={"api_access_token": settings.api_access_token.get_secret_value()},
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            transport=transport,
        )
        self.wait = _WaitRetryAfter()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        """Closed (the adapter stopped): no call can be made any more."""
        return self._http.is_closed

    async def post_message(
        self, conversation: ConversationRef, content: str, *, private: bool
    ) -> dict[str, Any]:
        body = {"content": content, "message_type": "outgoing", "private": private}
        path = f"{conversation.path}/messages"
        return await self._call("create message", path, body, idempotent=False)

    async def toggle_status(self, conversation: ConversationRef, status: str) -> dict[str, Any]:
        return await self._call(
            "toggle status", f"{conversation.path}/toggle_status", {"status": status}
        )

    async def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """One GET for `parley doctor` (no retries): the status and the JSON object answered
        ({} when the body is not one). A network failure is a ChatwootError."""
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise ChatwootError(f"chatwoot GET {path}: {type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = {}
        return response.status_code, data if isinstance(data, dict) else {}

    async def _call(
        self, what: str, path: str, body: dict[str, Any], *, idempotent: bool = True
    ) -> dict[str, Any]:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable if idempotent else _retryable_once),
            stop=stop_after_attempt(self._attempts),
            wait=self.wait,
            reraise=True,
        )
        result: dict[str, Any] = {}
        async for attempt in retrying:
            with attempt:
                result = await self._once(what, path, body)
        return result

    async def _once(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            sent = not isinstance(exc, NOT_SENT)
            raise ChatwootError(
                f"chatwoot {what}: {type(exc).__name__}", maybe_applied=sent
            ) from None
        if response.is_success:
            try:
                data = response.json()
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {"payload": data}
        raise ChatwootError(
            f"chatwoot {what}: HTTP {response.status_code}",
            status=response.status_code,
            retry_after=_retry_after(response),
            maybe_applied=response.status_code not in NOT_APPLIED_STATUS,
        )
