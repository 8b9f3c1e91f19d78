"""Signed outbound webhooks: every handoff event (bot/handoff/types.py `DeskEvent`) POSTed as
JSON to the help desk's receiver, for conversations of every platform (a Telegram or Discord
user can ask for a person too). docs/support-desk.md shows a receiver verifying one.

    Parley-Event-Id:   evt_...            the same for every delivery of one event: dedupe on it
    Parley-Timestamp:  1764620000         Unix seconds of this attempt
    Parley-Signature:  v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

As Stripe and Slack do: the timestamp is signed with the body, so a receiver refuses a replay
older than its tolerance (5 minutes), and each retry is signed afresh with its own timestamp.

One bridge serves every receiver, but each receiver (target) has its own bounded queue and
task (`_Lane`): `publish` only queues, so a slow or dead receiver delays only itself. A full
queue drops its oldest event with a warning naming the receiver. A lane delivers one event at
a time, in order, retried with exponential backoff on a connection error, a timeout, 429 or a
5xx (tenacity), at most `webhook_attempts` times; any other 4xx is the receiver's refusal,
not retried; an event still undelivered after the last try is logged and dropped. Delivery is
at least once (the desk hands a waiting conversation's request on again at each start):
receivers dedupe on the event id.
Nothing secret is logged: neither the signing secret nor the URL (a path may hold a token),
only the target's name, the event's kind and the status.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpx
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from bot.handoff.types import DeskEvent
from bot.types import ConversationKey

from .auth import PLATFORM

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
USER_AGENT = "Parley-Webhooks/1"
KEPT_DELIVERIES = 100
# Events waiting per receiver; beyond it the oldest is dropped (a receiver away for hours
# would otherwise hold every event in memory).
QUEUE_MAX = 1000
DROPS_LOGGED_EVERY = 100


class WebhookTarget(BaseModel):
    """One receiver: where events go and the secret they are signed with."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl = Field(description="the receiver's URL (https in production)")
    secret: SecretStr = Field(
        min_length=16, description="shared with the receiver; signs every delivery"
    )


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Parley-Signature header's value for this body at this timestamp."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def event_id(event: DeskEvent) -> str:
    """Stable across re-deliveries of the same event: kind, conversation, message and time
    (in UTC: a request handed on again after a restart reads its time back from SQL)."""
    at = event.at.astimezone(UTC).isoformat()
    raw = "|".join((event.kind.value, event.key.platform, event.key.chat_id,
                    event.key.thread_id, str(event.message_id), at))  # fmt: skip
    return "evt_" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def payload(event: DeskEvent) -> dict[str, Any]:
    """The JSON body: docs/support-desk.md documents each field."""
    key = event.key
    body: dict[str, Any] = {
        "id": event_id(event),
        "type": event.kind.value,
        "created_at": event.at.isoformat(),
        "conversation": {
            "id": event.conversation_id,
            "platform": key.platform,
            "chat_id": key.chat_id,
            "thread_id": key.thread_id,
        },
        "state": event.state.value,
        "reason": event.reason.value if event.reason else None,
    }
    if key.platform == PLATFORM:  # the agent API addresses a support conversation by these
        site, _, visitor = key.chat_id.partition(":")
        body["conversation"].update(site=site, visitor_id=visitor)
    if event.note is not None:
        n = event.note
        body["note"] = {
            "reason": n.reason.value, "detail": n.detail, "summary": n.summary,
            "language": n.language, "sentiment_trend": list(n.sentiment_trend),
            "unanswered": list(n.unanswered), "sources": list(n.sources), "text": n.render(),
        }  # fmt: skip
    if event.message_id or event.text:
        body["message"] = {
            "id": event.message_id, "text": event.text, "translation": event.translation,
            "language": event.language, "agent": event.agent,
        }  # fmt: skip
    return body


class Retryable(Exception):
    """A delivery that may succeed later: a 429 or a 5xx."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one event at one target (the latest few are kept, for checks)."""

    event_id: str
    target: str
    status: int  # the last HTTP status; 0: no answer at all
    attempts: int


class _Lane:
    """One receiver's queue and the task that delivers it, one event at a time, in order. Each
    event has its receipt: True once the receiver answered 2xx, False when it was given up,
    dropped from a full queue or left undelivered at stop."""

    def __init__(
        self, name: str, send: Callable[[str, DeskEvent], Awaitable[Delivery]], size: int
    ) -> None:
        self.name = name
        self._send = send
        self._queue: asyncio.Queue[tuple[DeskEvent, asyncio.Future[bool]]] = asyncio.Queue(size)
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self.dropped = 0

    def put(self, event: DeskEvent) -> asyncio.Future[bool]:
        """Queue without waiting; a full queue loses its oldest event. Said at the first
        loss and every DROPS_LOGGED_EVERY after it: a flood must not flood the log too."""
        if self._queue.full():
            oldest, lost = self._queue.get_nowait()
            _settle(lost, False)
            self._queue.task_done()
            self.dropped += 1
            if self.dropped % DROPS_LOGGED_EVERY == 1:
                log.warning("webhook %s: %d events waiting, the oldest (%s) dropped; %d so far",
                            self.name, self._queue.maxsize, oldest.kind.value,
                            self.dropped)  # fmt: skip
        receipt: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, receipt))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"parley-webhook-{self.name}")
        return receipt

    async def idle(self) -> None:
        await self._queue.join()

    async def close(self) -> int:
        """Stop delivering; how many events were left undelivered (the one in flight too)."""
        left = self._queue.qsize() + self._busy
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():  # wake whoever waits in idle()
            _settle(self._queue.get_nowait()[1], False)
            self._queue.task_done()
        return left

    async def _run(self) -> None:
        while True:
            event, receipt = await self._queue.get()
            self._busy = True
            delivered = False
            try:
                delivery = await self._send(self.name, event)
                delivered = 200 <= delivery.status < 300
            except Exception as exc:  # not a receiver's answer: the next events still go
                # The type only: an httpx error's text may hold the URL (and its token).
                log.error("webhook %s: %s not delivered: %s", self.name, event.kind.value,
                          type(exc).__name__)  # fmt: skip
            finally:  # cancelled (the bridge closes) too: not delivered
                _settle(receipt, delivered)
                self._busy = False
                self._queue.task_done()


def _settle(receipt: asyncio.Future[bool], delivered: bool) -> None:
    if not receipt.done():
        receipt.set_result(delivered)


class WebhookBridge:
    """A DeskBridge for every platform: each event to its target (a support site's own, else
    the default one), through that target's own lane; an event without a target is dropped."""

    platforms: frozenset[str] | None = None

    def __init__(
        self,
        targets: Mapping[str, WebhookTarget],
        default: WebhookTarget | None,
        *,
        attempts: int = 6,
        timeout_s: float = 10.0,
        backoff_max_s: float = 60.0,
        queue_max: int = QUEUE_MAX,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._targets = dict(targets)
        self._default = default
        self._attempts = attempts
        self._backoff_max_s = backoff_max_s
        self._queue_max = queue_max
        self._client = client or httpx.AsyncClient(
            timeout=timeout_s, headers={"User-Agent": USER_AGENT}, follow_redirects=False
        )
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._closed = False
        self.deliveries: deque[Delivery] = deque(maxlen=KEPT_DELIVERIES)

    @property
    def enabled(self) -> bool:
        return bool(self._targets) or self._default is not None

    def target_for(self, event: DeskEvent) -> tuple[str, WebhookTarget] | None:
        return self._target(event.key)

    def reaches(self, key: ConversationKey) -> bool:
        """Whether an agent can get this conversation through a receiver (types.reaches): a
        web chat conversation whose events a receiver gets. The agent API names web chat
        visitors only, so through a webhook nobody can take, answer or give back a Telegram
        or Discord conversation: one handed off that way waited for good, unanswered. Their
        events still reach the default receiver where another desk hands them off."""
        return key.platform == PLATFORM and self._target(key) is not None

    def _target(self, key: ConversationKey) -> tuple[str, WebhookTarget] | None:
        if key.platform == PLATFORM:
            site = key.chat_id.partition(":")[0]
            if site in self._targets:
                return site, self._targets[site]
        return ("default", self._default) if self._default is not None else None

    async def publish(self, event: DeskEvent) -> Awaitable[bool] | None:
        """Queue one event on its target's lane (none: nothing to do) and return at once with
        its receipt (types.DeskBridge): the lane's task delivers it, with its retries."""
        found = self.target_for(event)
        if found is None:
            return None
        name = found[0]
        if self._closed:  # the adapter stopped before the desk handed this on
            log.warning("webhook %s: %s not delivered: stopping", name, event.kind.value)
            receipt: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            receipt.set_result(False)
            return receipt
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(name, self._send, self._queue_max)
        return lane.put(event)

    async def idle(self) -> None:
        """Wait until every queued event was delivered or given up (the desk's shutdown drain
        awaits this, bounded by the shutdown grace)."""
        for lane in list(self._lanes.values()):
            await lane.idle()

    async def aclose(self) -> None:
        self._closed = True
        for lane in self._lanes.values():
            if left := await lane.close():
                log.warning("webhook %s: %d events not delivered: stopping", lane.name, left)
        await self._client.aclose()

    async def _send(self, name: str, event: DeskEvent) -> Delivery:
        target = self._targets.get(name) or self._default
        assert target is not None  # a lane exists only for a target
        body = json.dumps(payload(event), ensure_ascii=False, separators=(",", ":")).encode()
        return await self._deliver(name, target, event_id(event), body, event)

    async def _deliver(
        self, name: str, target: WebhookTarget, evt: str, body: bytes, event: DeskEvent
    ) -> Delivery:
        attempts, status = 0, 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.5, max=self._backoff_max_s),
            retry=retry_if_exception_type((Retryable, httpx.TransportError)),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    status = await self._post(target, evt, body)
                    if status == 429 or status >= 500:
                        raise Retryable(str(status))
        except RetryError:
            log.warning("webhook %s: %s not delivered after %d attempts (last status %s)",
                        name, event.kind.value, attempts, status or "none")  # fmt: skip
        else:
            if status >= 400:
                log.warning("webhook %s: %s refused with %d", name, event.kind.value, status)
        delivery = Delivery(evt, name, status, attempts)
        self.deliveries.append(delivery)
        return delivery

    async def _post(self, target: WebhookTarget, evt: str, body: bytes) -> int:
        stamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "Parley-Event-Id": evt,
            "Parley-Timestamp": str(stamp),
            "Parley-Signature": sign(target.secret.get_secret_value(), stamp, body),
        }
        response = await self._client.post(str(target.url), content=body, headers=headers)
        return response.status_code
