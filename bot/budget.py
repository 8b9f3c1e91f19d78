"""Daily token budgets per user (and per support site), counted at the one seam every model
call goes through.

    budgets = Budgets.from_settings(settings.budget, settings.redis, engine)
    backend = MeteredBackend(backend)                    # chat, skills, summaries: all of it
    async with budgets.turn(key, user_id, say):          # the manager, around each turn
        ...                                              # backend.stream() reserves, or raises
                                                         # BudgetExhausted (one sentence)

The turn scope puts a `TurnLedger` in a context variable; `MeteredBackend.stream` finds it
there, so the skills (/ask, /summarize, /translate, intent detection) and the context's
summaries are counted without any of them knowing about budgets. Outside a turn (`parley
eval`) nothing is counted.

Reserve, then settle (bot.budget_counters): the first model call of a turn reserves its
estimate (the prompt's `estimate_tokens`, plus `max_tokens`) and is refused when the
day's spent tokens plus the reservations in flight plus the estimate would pass the budget.
A budget smaller than the prompt plus `max_tokens` cuts the call's `max_tokens` to what it
leaves after the prompt: a short answer, where every turn would be refused with nothing spent.
Refused only because of reservations in flight (which usually settle far below their
estimate), it waits for them (up to a minute), so concurrent turns stop at the same total
that turns one after another would. Later calls of an admitted turn reserve without a check:
a turn is never cut in half. At the end of the turn its reservations are replaced by the
tokens the backend reported (prompt + completion; the estimate where it reported none),
counted in Redis and added to SQL (`parley usage`). A turn may therefore end above the
budget by what it spent beyond its estimate; the next one is refused.

Redis down: each worker counts in its own process, starting from the usage recorded in SQL,
and says so once in a warning (bot.outage); a user can then spend up to the budget's
remainder on each worker at once, until Redis is back. Then the shared count of each subject
this worker counted meanwhile is raised to SQL's before Redis decides for it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, nullcontext
from contextvars import ContextVar
from datetime import UTC, date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from backends.base import Backend, Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from backends.control_tokens import ends_at_turn_markers
from bot import phrases
from bot.budget_counters import Counter, Decision, Limited, LocalCounter, RedisCounter, Verdict
from bot.errors import BackendError, StorageError
from bot.logcontext import note
from bot.outage import Outage
from bot.settings import BudgetSettings, RedisSettings
from bot.storage.redis_client import client_for
from bot.storage.usage import Spent, Subject, UsageLog
from bot.types import ChatMessage, ConversationKey

log = logging.getLogger(__name__)

Say = Callable[..., Awaitable[str]]
Clock = Callable[[], datetime]
# Tokens a chat template adds around each message, for the estimate.
MESSAGE_OVERHEAD_TOKENS = 4
# The platform of the support channel, whose chat ids are "<site>:<visitor>".
SUPPORT_PLATFORM = "support"
# A turn refused only by reservations in flight asks again after these pauses (it is also
# woken at once when a turn of this process settles).
WAIT_FIRST_S, WAIT_MAX_S = 0.02, 0.5
# The longest such a turn waits (a user waiting longer would rather hear the sentence); also
# bounded by the reservations' expiry.
MAX_WAIT_S = 60.0


class BudgetExhausted(BackendError):
    """The daily token budget of the turn's user or site is used up. Its `user_message` is
    already the sentence in the user's language, with the time the budget resets; the
    manager's say() leaves a sentence that is not in the catalogues as it is."""

    user_message = phrases.BUDGET_USED_UP


class BudgetObserver(Protocol):
    """What the budgets report to metrics (bot.metrics.Metrics)."""

    def budget_tokens(self, platform: str, usage: Usage) -> None: ...

    def budget_refused(self, platform: str, scope: str) -> None: ...


class _NoObserver:
    def budget_tokens(self, platform: str, usage: Usage) -> None:
        return None

    def budget_refused(self, platform: str, scope: str) -> None:
        return None


class TurnBudgets(Protocol):
    """What the conversation manager needs: a scope around each turn."""

    def turn(
        self, key: ConversationKey, user_id: str, say: Say
    ) -> AbstractAsyncContextManager[object]: ...


class _Unlimited:
    """No budgets and no accounting (a manager built without them, as in unit tests)."""

    def turn(
        self, key: ConversationKey, user_id: str, say: Say
    ) -> AbstractAsyncContextManager[object]:
        return nullcontext()


NO_BUDGETS: TurnBudgets = _Unlimited()


class TurnLedger:
    """One turn's reservations and spending, for each subject it is counted against."""

    def __init__(self, budgets: Budgets, platform: str, subjects: list[Subject], say: Say) -> None:
        self._budgets = budgets
        self.platform = platform
        self.subjects = subjects
        self.limited = [Limited(s, limit) for s in subjects if (limit := budgets.limit_of(s)) > 0]
        self._say = say
        self.day = budgets.today()
        self.reservations: list[tuple[Counter, str]] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.asked = False
        self.refused: Subject | None = None

    async def reserve(self, amount: int) -> None:
        """Before a model call: reserve `amount` tokens, or raise BudgetExhausted."""
        if self.refused is not None:
            raise await self._exhausted()
        if not self.limited:
            self.asked = True
            return
        first = not self.reservations
        refused = await self._budgets.reserve(self, amount, check=first)
        if refused is not None:
            self.refused = refused
            self._budgets.observer.budget_refused(self.platform, refused.scope)
            raise await self._exhausted()
        self.asked = True

    def affordable(self, prompt: int, max_tokens: int) -> int:
        """`max_tokens`, or less where the smallest budget leaves less after the prompt."""
        room = min((item.limit for item in self.limited), default=0) - prompt
        return room if 0 < room < max_tokens else max_tokens

    def spent(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self._budgets.observer.budget_tokens(self.platform, usage)

    async def _exhausted(self) -> BudgetExhausted:
        sentence = await self._say(phrases.BUDGET_USED_UP, zone=self._budgets.zone_name)
        scope = self.refused.scope if self.refused is not None else "user"
        return BudgetExhausted(f"daily token budget of the {scope} used up", user_message=sentence)


class Budgets:
    def __init__(
        self,
        settings: BudgetSettings,
        usage: UsageLog,
        shared: RedisCounter | None = None,
        *,
        observer: BudgetObserver | None = None,
        clock: Clock | None = None,
        retry_after_failure_s: float = 5.0,
    ) -> None:
        self._settings = settings
        self.usage = usage
        self._shared = shared
        self._local = LocalCounter(usage)
        self.observer: BudgetObserver = observer or _NoObserver()
        # Injectable (tests move it across midnight, or past a reservation's expiry).
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self._zone = ZoneInfo(settings.timezone)
        self._outage = Outage(
            retry_after_failure_s,
            meanwhile="token budgets are counted per worker from the usage in SQL",
            logger=log,
        )
        self._failures: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        if shared is not None:
            from redis.exceptions import RedisError

            self._failures = (RedisError, OSError, TimeoutError)
        self._settled = asyncio.Event()
        self._close: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: BudgetSettings,
        redis: RedisSettings,
        engine: AsyncEngine,
        *,
        observer: BudgetObserver | None = None,
        clock: Clock | None = None,
    ) -> Budgets:
        """Shared through Redis when it is configured, else counted in this process."""
        usage = UsageLog(engine, flush_s=settings.usage_flush_s)
        # Not sent twice: a reservation or a settlement repeated would count its tokens twice.
        client = client_for(redis)
        if client is None:
            return cls(settings, usage, observer=observer, clock=clock)
        shared = RedisCounter(client, usage, key_prefix=redis.key_prefix)
        budgets = cls(
            settings, usage, shared, observer=observer, clock=clock,
            retry_after_failure_s=redis.retry_after_failure_s,
        )  # fmt: skip
        budgets._close = client.aclose  # the client owns its pool (bot.storage.redis_client)
        return budgets

    async def aclose(self) -> None:
        await self.usage.aclose()
        if self._close is not None:
            await self._close()

    # -- what a turn is counted against ----------------------------------------------------

    @property
    def zone_name(self) -> str:
        return self._settings.timezone

    def today(self) -> date:
        return self.clock().astimezone(self._zone).date()

    def limit_of(self, subject: Subject) -> int:
        if subject.scope == "site":
            return self._settings.site_daily_tokens
        return self._settings.user_daily_tokens

    def turn(
        self, key: ConversationKey, user_id: str, say: Say
    ) -> AbstractAsyncContextManager[TurnLedger]:
        """The scope of one turn of `user_id` in conversation `key` (see the module doc)."""
        return self._turn(key.platform, subjects_of(key, user_id), say)

    @asynccontextmanager
    async def _turn(
        self, platform: str, subjects: list[Subject], say: Say
    ) -> AsyncIterator[TurnLedger]:
        ledger = TurnLedger(self, platform, subjects, say)
        token = _LEDGER.set(ledger)
        try:
            yield ledger
        finally:
            _LEDGER.reset(token)
            if ledger.refused is not None:
                note(outcome="refused")
            await self._settle(ledger)

    # -- reserve and settle ----------------------------------------------------------------

    async def reserve(self, ledger: TurnLedger, amount: int, *, check: bool) -> Subject | None:
        """Reserve for `ledger`; the subject whose budget refused, or None when admitted."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + min(MAX_WAIT_S, self._settings.reservation_ttl_s)
        pause = WAIT_FIRST_S
        rid = uuid.uuid4().hex
        while True:
            counter, decision = await self._reserve_once(ledger, rid, amount, force=not check)
            if decision.verdict is Verdict.ADMITTED:
                ledger.reservations.append((counter, rid))
                return None
            if decision.verdict is Verdict.OVER or loop.time() + pause > give_up_at:
                return decision.subject
            await self._wait_for_settle(pause)
            pause = min(pause * 2, WAIT_MAX_S)

    async def _reserve_once(
        self, ledger: TurnLedger, rid: str, amount: int, *, force: bool
    ) -> tuple[Counter, Decision]:
        """Ask the shared counter; while Redis is unreachable, this process's own."""
        now = self.clock().timestamp()
        expires = now + self._settings.reservation_ttl_s

        async def ask(counter: Counter) -> Decision:
            return await counter.reserve(
                ledger.day, ledger.limited, rid, amount, force=force, now_s=now, expires_s=expires
            )

        if self._shared is not None and self._outage.should_try():
            try:
                await self._catch_up(self._shared, ledger)
                decision = await ask(self._shared)
            except self._failures as exc:
                self._outage.failed(exc)
            else:
                self._outage.succeeded()
                return self._shared, decision
        return self._local, await ask(self._local)

    async def _catch_up(self, shared: RedisCounter, ledger: TurnLedger) -> None:
        """Before Redis decides again for subjects whose turns it missed (counted in this
        process while it was unreachable, or settled while it was): raise its counts to SQL's,
        which has those turns (a Redis that comes back with its data would otherwise grant
        the budget's remainder a second time)."""
        for item in self._local.counted_here(ledger.day, ledger.limited):
            await shared.catch_up(
                ledger.day, item, await self.usage.counted(ledger.day, item.subject)
            )
            self._local.forget(ledger.day, item.subject)

    async def _wait_for_settle(self, pause_s: float) -> None:
        """Until a turn of this process settles, or `pause_s` (another worker's turns)."""
        try:
            async with asyncio.timeout(pause_s):
                await self._settled.wait()
        except TimeoutError:
            pass

    async def _settle(self, ledger: TurnLedger) -> None:
        """Replace the turn's reservations by what it spent, in the counters and in SQL."""
        spent = Spent(
            ledger.prompt_tokens, ledger.completion_tokens,
            turns=int(ledger.asked), refused=int(ledger.refused is not None),
        )  # fmt: skip
        by_counter: dict[int, tuple[Counter, list[str]]] = {}
        for counter, rid in ledger.reservations:
            by_counter.setdefault(id(counter), (counter, []))[1].append(rid)
        for counter, rids in by_counter.values():
            try:
                await counter.settle(ledger.day, ledger.limited, rids, spent.tokens)
            except self._failures as exc:  # its reservations lapse within reservation_ttl_s
                self._outage.failed(exc)
                if counter is self._shared:  # and its count misses this turn: caught up later
                    self._local.mark(ledger.day, ledger.limited)
        self._settled.set()
        self._settled = asyncio.Event()
        if spent.turns or spent.refused:
            try:
                await self.usage.add(ledger.day, ledger.subjects, spent)
            except StorageError as exc:  # the answer is recorded; only the report misses it
                log.warning("token usage of a turn not recorded: %s", exc)


_LEDGER: ContextVar[TurnLedger | None] = ContextVar("parley_budget_turn", default=None)


def current_ledger() -> TurnLedger | None:
    return _LEDGER.get()


def outside_turn() -> contextvars.Context:
    """The current context without the turn's ledger: for a task a turn starts that runs on
    after it (the handoff note). In the turn's context its model call reserved tokens after
    the turn had settled, a reservation nothing settled, held against the user's budget
    until it expired (15 minutes; a soak review)."""
    context = contextvars.copy_context()
    context.run(_LEDGER.set, None)
    return context


def subjects_of(key: ConversationKey, user_id: str) -> list[Subject]:
    """The user a turn is counted against (the chat, for a sender without an id, as the rate
    limit does), and for the support channel also its site ("<site>:<visitor>" chat ids)."""
    subjects = [Subject("user", f"{key.platform}:{user_id or f'chat:{key.chat_id}'}")]
    if key.platform == SUPPORT_PLATFORM and ":" in key.chat_id:
        subjects.append(Subject("site", key.chat_id.partition(":")[0]))
    return subjects


def prompt_estimate(messages: Sequence[ChatMessage]) -> int:
    return sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)


class MeteredBackend:
    """A backend whose calls, inside a turn, are reserved against and counted to the turn's
    budgets (see the module docstring); outside a turn it only passes through. Being the
    seam every model call passes, it also ends each reply at the end of the model's turn
    (`backends.control_tokens.ends_at_turn_markers`)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    def _replies(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        """The inner stream, ended where the model writes past its turn (a template's
        marker, an invented "User:" line: `ends_at_turn_markers`); structured output (JSON)
        is left whole."""
        chunks = self.inner.stream(request)
        return chunks if request.json_schema is not None else ends_at_turn_markers(chunks)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        ledger = current_ledger()
        if ledger is None:
            async with aclosing(self._replies(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        prompt = prompt_estimate(request.messages)
        max_tokens = ledger.affordable(prompt, request.max_tokens)
        if max_tokens != request.max_tokens:
            request = dataclasses.replace(request, max_tokens=max_tokens)
        await ledger.reserve(prompt + max_tokens)
        usage: Usage | None = None
        text: list[str] = []
        failed = False
        try:
            async with aclosing(self._replies(request)) as chunks:
                async for chunk in chunks:
                    usage = chunk.usage or usage
                    if chunk.text:
                        text.append(chunk.text)
                    yield chunk
        except Exception:
            failed = True
            raise
        finally:
            # No usage reported: stopped early (/stop, a client gone, even before the first
            # token, when the server has read the prompt), or a server that reports none. Not
            # counted: a call that failed before any text (the server down, a refusal).
            if usage is None and (text or not failed):
                usage = Usage(prompt, estimate_tokens("".join(text)) if text else 0)
            if usage is not None:
                ledger.spent(usage)

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self.inner.count_tokens(texts)

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.inner.count_chat_tokens(messages)

    async def aclose(self) -> None:
        await self.inner.aclose()
