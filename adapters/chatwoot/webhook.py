"""Chatwoot's webhooks, received on Parley's HTTP host (adapters.kit.http).

Authentication, before anything is parsed or stored:
- signed (Chatwoot 4.13 and later sign agent bot webhooks; account webhooks since 4.11.2):
  `X-Chatwoot-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>` and
  `X-Chatwoot-Timestamp: <unix seconds>`; a timestamp further than `max_age_s` from now is a
  replay and refused (401), the signature is compared in constant time;
- otherwise a secret in the path, `/chatwoot/webhook/<path_secret>`, compared in constant
  time (403). Both may be configured at once; then both must hold.
A delivery signed with the agent bot's secret alone may be another account's (a bot made by
Chatwoot's super admin can be added to any account's inbox): a conversation event in it that
names no account is ignored, never taken for `account_id`'s conversation of that number.

A body over `max_body_bytes` gets 413 before it is read whole; a body that is not a webhook
Parley can read gets 400 with a short reason (an id outside Chatwoot's 1..2**63-1 too: a 500
would have Chatwoot retry a body that can never be recorded); with `account_id` set, a
webhook of another account gets 403, before anything is recorded. The 200 goes out after
the action is done (a message recorded in SQL); a database that cannot take it gets 500, which
Chatwoot's agent bot job retries (it retries 429 and 500 only), and the message's idempotency
key makes the repeat harmless. Chatwoot waits 5 s for the answer and never sends a delivery
again after a timeout: a give-back that waits for the agent's replies answers within
adapter.ANSWER_WITHIN_S and is applied by the desk after them.
Secrets and message text are never logged; a payload value in a log line is a truncated
repr (payloads.shown), so it cannot forge a line. What anyone can send without a secret (a
wrong path secret, a bad signature, a body too large, a delivery to the wrong URL) is logged
at most once a minute for each reason (bot.logthrottle): the first at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bot.errors import BotError, StorageError
from bot.logthrottle import ThrottledLog

from .payloads import Action, ForeignAccount, MalformedWebhook, read
from .settings import ChatwootSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Chatwoot-Signature"
TIMESTAMP_HEADER = "X-Chatwoot-Timestamp"
WEBHOOK_PATH = "/chatwoot/webhook"
# Refusals told in the log before the sender is known to be Chatwoot: a fixed set, each at
# most once a minute (Verifier's three reasons among them).
REFUSALS = frozenset(
    {"wrong path secret", "too large", "misdirected",
     "no valid timestamp", "stale timestamp", "bad signature"}
)  # fmt: skip


class TooLarge(Exception):
    pass


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Chatwoot's signature of one delivery (what the header must carry)."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class Verifier:
    """The signature check, against each configured secret (the agent bot's and the account
    webhook's); `clock` is injectable so a test can age a delivery."""

    def __init__(
        self, secrets: list[bytes], max_age_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._secrets = [secret for secret in secrets if secret]  # the empty key signs for anyone
        self._max_age_s = max_age_s
        self._clock = clock

    def refusal(self, timestamp: str, given: str, body: bytes) -> str | None:
        """Why the delivery is refused, or None when it is Chatwoot's and fresh."""
        return self.check(timestamp, given, body)[0]

    def check(self, timestamp: str, given: str, body: bytes) -> tuple[str | None, bytes]:
        """`refusal`, and the secret that signed the delivery (b"" when refused)."""
        try:
            sent = int(timestamp)
        except ValueError:
            return "no valid timestamp", b""
        if abs(self._clock() - sent) > self._max_age_s:
            return "stale timestamp", b""
        matches = [
            hmac.compare_digest(given.encode(), signature(secret, timestamp, body).encode())
            for secret in self._secrets
        ]
        signer = next(
            (secret for secret, ok in zip(self._secrets, matches, strict=True) if ok), b""
        )
        return (None, signer) if signer else ("bad signature", b"")


async def read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def webhook_routes(
    settings: ChatwootSettings,
    act: Callable[[Action], Awaitable[object]],
    *,
    clock: Callable[[], float] = time.time,
    refusals: ThrottledLog | None = None,
) -> list[Route]:
    """`clock`: the wall clock a signature's timestamp is checked against; `refusals`: the
    log of refused deliveries (a new one: each reason at most once a minute)."""
    refused = refusals if refusals is not None else ThrottledLog(log, REFUSALS)
    secrets = [
        s.get_secret_value().encode()
        for s in (settings.webhook_secret, settings.account_webhook_secret)
        if s is not None
    ]
    verifier = Verifier(secrets, settings.max_age_s, clock) if secrets else None
    # Signed with the agent bot's secret alone: the delivery may be another account's (a bot
    # made by Chatwoot's super admin can be added to any account's inbox), so a conversation
    # event must name its account; the account webhook's secret is chatwoot.account_id's own.
    bot_only = {secrets[0]} - set(secrets[1:]) if settings.webhook_secret is not None else set()
    path_secret = settings.path_secret.get_secret_value() if settings.path_secret else None

    async def receive(request: Request) -> Response:
        if path_secret is not None:
            given = str(request.path_params.get("secret", "")).encode()
            if not hmac.compare_digest(given, path_secret.encode()):
                refused.warning(
                    "wrong path secret",
                    "chatwoot webhook: wrong path secret from %s",
                    _peer(request),
                )
                return PlainTextResponse("forbidden", status_code=403)
        try:
            body = await read_capped(request, settings.max_body_bytes)
        except TooLarge:
            # Chatwoot does not retry a 413: the message is lost unless someone reads this.
            # Past the path secret only Chatwoot can send it: each line is a lost message.
            too_large = "chatwoot webhook: a body over max_body_bytes (%d) refused, from %s"
            if path_secret is not None:
                log.warning(too_large, settings.max_body_bytes, _peer(request))
            else:
                refused.warning("too large", too_large, settings.max_body_bytes, _peer(request))
            return PlainTextResponse("body too large", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("incomplete body", status_code=400)
        named_only = False
        if verifier is not None:
            refusal, signer = verifier.check(
                request.headers.get(TIMESTAMP_HEADER, ""),
                request.headers.get(SIGNATURE_HEADER, ""),
                body,
            )
            if refusal is not None:
                refused.warning(
                    refusal, "chatwoot webhook refused (%s) from %s", refusal, _peer(request)
                )
                return PlainTextResponse(refusal, status_code=401)
            named_only = signer in bot_only
        return await _handle(body, settings, act, named_only=named_only)

    if path_secret is None:
        # Chatwoot given /chatwoot/webhook/<something> (a path secret Parley was not set up
        # with): still 404, with a line saying which URL is (what followed, never).
        told = _misdirected(
            f"a delivery to {WEBHOOK_PATH}/<...>", "no chatwoot.path_secret is set, give "
            f"Chatwoot {WEBHOOK_PATH} as the webhook URL", "not found", 404, refused,
        )  # fmt: skip
        return [
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route(f"{WEBHOOK_PATH}/{{rest}}", told, methods=["POST"]),
        ]
    # Chatwoot pointed at the URL without the secret (the signed set-up's URL).
    told = _misdirected(
        f"a delivery to {WEBHOOK_PATH} without the path secret", "with chatwoot.path_secret "
        f"set, give Chatwoot {WEBHOOK_PATH}/<path_secret> as the webhook URL", "forbidden", 403,
        refused,
    )  # fmt: skip
    return [
        Route(WEBHOOK_PATH, told, methods=["POST"]),
        Route(f"{WEBHOOK_PATH}/{{secret}}", receive, methods=["POST"]),
    ]


def _misdirected(
    what: str, fix: str, answer: str, status: int, refused: ThrottledLog
) -> Callable[[Request], Awaitable[Response]]:
    """A delivery to a webhook URL that is not the one Parley was set up with: it got a plain
    404 and nothing in Parley's log said why every delivery was lost. Refused still, with a
    warning saying which URL to give Chatwoot (never the secret, nor what the path held)."""

    async def told(request: Request) -> Response:
        refused.warning(
            "misdirected", "chatwoot webhook: %s, from %s: %s", what, _peer(request), fix
        )
        return PlainTextResponse(answer, status_code=status)

    return told


async def _handle(
    body: bytes,
    settings: ChatwootSettings,
    act: Callable[[Action], Awaitable[object]],
    *,
    named_only: bool,
) -> Response:
    try:
        action = read(
            body,
            reply_prefix=settings.agent_reply_prefix,
            account_id=settings.account_id,
            named_only=named_only,
        )
    except MalformedWebhook as exc:  # its text shows payload values only as shown() makes them
        log.warning("chatwoot webhook: malformed: %s", exc)
        return PlainTextResponse(str(exc)[:200], status_code=400)
    except ForeignAccount as exc:
        log.warning("chatwoot webhook refused: %s", exc)
        return PlainTextResponse("account not served", status_code=403)
    try:
        await act(action)
    except StorageError as exc:
        log.error("chatwoot webhook not recorded, Chatwoot will retry: %s", exc)
        return PlainTextResponse("not recorded; try again", status_code=500)
    except BotError as exc:  # the desk refused (no human has it): a retry would not help
        log.warning("chatwoot webhook: %s: %s", type(action).__name__, exc)
        return PlainTextResponse("not applied", status_code=200)
    return PlainTextResponse("ok")


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"
