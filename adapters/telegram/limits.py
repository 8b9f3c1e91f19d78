"""The outbound queue: every Bot API call the bot makes passes through `FloodGate`.

PTB hands each request to a rate limiter (`ApplicationBuilder.rate_limiter`), so this is the
one place that knows Telegram's flood limits: about one message per second per chat, 20 per
minute per group, about 30 per second overall. The windows are the kit's gate
(`adapters.kit.gate`): in the process, or in Redis when several workers share the bot (each
worker alone would keep the limits, and together they would exceed them). A call holds its
slots from before it is sent until its answer arrives.

A call to one chat waits for the previous call to that chat (a lock per busy chat, and the
per-chat window holds one slot), so the chat's calls go out in order, one by one: that is the
per-chat queue. A 429 (`RetryAfter`) is never dropped: the same call is re-sent after
`retry_after`, while the chat's queue waits behind it so nothing else overtakes it. The wait
holds no slot of the group's or the bot's windows: a chat in flood wait slows no other chat.
A `retry_after` above MAX_FLOOD_WAIT_S is a flood ban, not a limit: the call fails at once
with the `RetryAfter`, like any other Bot API error, instead of holding the chat's queue and
its turn asleep for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.ext import BaseRateLimiter
from telegram.warnings import PTBDeprecationWarning

from adapters.kit.gate import Gate, LocalGate, Rate, Rates, RedisGate
from bot.conversation.sink import still_showing

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

_Result = bool | dict[str, Any] | list[dict[str, Any]]

# Above retry_after: the server's clock and ours differ by the network's delay.
RETRY_MARGIN_S = 0.1
NETWORK_RETRIES = 3
# The longest flood wait obeyed. Telegram's documented limits need at most a minute (20
# messages a minute in a group); it answers hours to a bot it has banned for flooding, and
# the turn waiting behind the call would keep its conversation (and lease) that long.
# getUpdates waits whatever it is told: nothing queues behind it, and polling through a ban
# would only prolong it.
MAX_FLOOD_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    per_chat: int = 1
    per_chat_s: float = 1.0
    per_group: int = 20
    per_group_s: float = 60.0
    overall: int = 30
    overall_s: float = 1.0

    def rates(self) -> Rates:
        return Rates(
            Rate(self.per_chat, self.per_chat_s),
            Rate(self.per_group, self.per_group_s),
            Rate(self.overall, self.overall_s),
        )


class FloodGate(BaseRateLimiter[int]):
    """PTB rate limiter honouring Telegram's per-chat, per-group and overall limits."""

    def __init__(
        self,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        redis: Redis | None = None,
        key_prefix: str = "parley:telegram",
        retry_after_failure_s: float = 5.0,
    ) -> None:
        """`redis`: share the windows with every worker using the same `key_prefix` (one
        prefix per bot: its token's numeric id, say); after a failure, the process's own
        windows alone for `retry_after_failure_s`."""
        self.limits = limits or Limits()
        rates = self.limits.rates()
        self._gate: Gate = (
            RedisGate(redis, rates, prefix=key_prefix, retry_after_failure_s=retry_after_failure_s)
            if redis is not None
            else LocalGate(rates, clock=clock)
        )
        self._turns: dict[int | str, _Turn] = {}  # busy chats' queues
        self.retries_after_429 = 0
        self.api_calls = 0  # calls sent to the Bot API, re-sends included

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, _Result]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> _Result:
        chat_id = data.get("chat_id")
        if endpoint == "getUpdates" or chat_id is None:
            return await self._until_accepted(callback, args, kwargs, endpoint, _no_slot)
        chat = _chat_key(chat_id)

        def slot() -> contextlib.AbstractAsyncContextManager[None]:
            return self._gate.slot(str(chat), group=_is_group(chat))

        async with self._in_order(chat):
            return await self._until_accepted(callback, args, kwargs, endpoint, slot)

    @contextlib.asynccontextmanager
    async def _in_order(self, chat: int | str) -> AsyncIterator[None]:
        """The chat's calls one by one, in order, re-sends included (a lock per busy chat)."""
        turn = self._turns.get(chat)
        if turn is None:
            turn = self._turns[chat] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[chat]

    async def _until_accepted(
        self,
        callback: Callable[..., Coroutine[Any, Any, _Result]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        slot: Callable[[], contextlib.AbstractAsyncContextManager[None]],
    ) -> _Result:
        """Re-sends the same call after every 429 (never dropped) and after a few network
        failures (a timed-out send may have arrived: a rare duplicate beats a lost answer).
        Each try holds its slots; the waits between tries hold none, so a chat in flood wait
        keeps no other chat from the group's or the bot's windows."""
        network_failures = 0
        while True:
            self.api_calls += 1
            try:
                async with slot():
                    await still_showing()  # after the wait: this worker's answer still?
                    return await callback(*args, **kwargs)
            except RetryAfter as exc:
                asked = retry_after_s(exc)
                if asked > MAX_FLOOD_WAIT_S and endpoint != "getUpdates":
                    log.warning(
                        "%s: flood control asks for %.0f s, over %.0f s: the call fails",
                        endpoint, asked, MAX_FLOOD_WAIT_S,
                    )  # fmt: skip
                    raise
                self.retries_after_429 += 1
                wait = asked + RETRY_MARGIN_S
                log.warning("%s: flood control, re-sending in %.1f s", endpoint, wait)
                await asyncio.sleep(wait)
            except NetworkError as exc:
                if isinstance(exc, BadRequest) or network_failures >= NETWORK_RETRIES:
                    raise
                network_failures += 1
                log.warning("%s: %s; retry %d", endpoint, unreachable(exc), network_failures)
                await asyncio.sleep(2.0 ** (network_failures - 1))


@dataclass(slots=True)
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def _no_slot() -> contextlib.AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


def unreachable(exc: NetworkError) -> str:
    """Why the Bot API could not be used, without the page that a proxy or gateway answered
    instead of JSON (PTB quotes it whole: "Bad Gateway (502). Parsing the server response
    b'<html>...' failed")."""
    if isinstance(exc.__cause__, TelegramError):  # PTB's: the answer was not JSON
        status = exc.message.partition(". Parsing the server response")[0]
        return f"{status}, and the answer is not the Bot API's (not JSON)"
    return exc.message


def retry_after_s(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        # PTB 22 warns that the public property will become a timedelta; both are read here.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: int | timedelta = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _chat_key(chat_id: object) -> int | str:
    try:
        return int(str(chat_id))
    except ValueError:
        return str(chat_id)  # "@channelname"


def _is_group(chat: int | str) -> bool:
    # Private chats have the user's (positive) id; groups, supergroups and channels are
    # negative or addressed by @name.
    return isinstance(chat, str) or chat < 0
