"""Answers that outlive their own delivery: the one locker's part of a turn.

A conversation's turns run under its turn lease (`Store.turn_lease`, the one locker; its
epoch is the fencing token). Before an answer's first visible piece, the turn records in SQL
that it is showing an answer to these messages (`Store.begin_delivery`), and it hands the
platform's reference of each piece it sends to SQL as soon as it is known. From then on the
answer belongs to that delivery:

- the worker showing it records it, retrying while the database is unreachable (for up to
  `record_retry_s`), and the record is fenced on the delivery, not on the lease: a worker
  that lost its lease while cut off from the database still records what the user saw;
- another worker that finds the delivery unfinished leaves it alone while its worker is alive
  (`holder_alive`), and otherwise takes it over: it answers the same messages again and shows
  the new answer by editing the pieces the dead worker showed, so the user sees one answer;
  where it showed some, the new answer is handed to the sink whole, as one chunk (each piece
  is edited once, to its final text, never cut back to the new answer's first words);
- a turn that fails after showing something abandons its delivery (anyone may finish it);
  one that showed nothing clears it, and its messages stay pending for another try.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from backends.base import estimate_tokens
from bot.errors import StorageError
from bot.storage import keys
from bot.storage.base import (
    ANSWER_DELETED_STUB,
    ANSWER_DELETED_STUB_TOKENS,
    Cache,
    ConversationState,
    DeliveryState,
    MessageKind,
    RecordedReply,
    Store,
    StoredMessage,
    TurnLease,
)
from bot.types import ConversationKey, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")

# A worker's liveness key in a cache every worker reads (Redis): refreshed every
# HEARTBEAT_S, lapses after ALIVE_TTL_S. A delivery whose worker has no key (and whose SQL
# heartbeat is older than SQL_GRACE_S, in case Redis itself restarted and forgot the key) is
# taken over.
HEARTBEAT_S = 1.0
ALIVE_TTL_S = 3.0
SQL_GRACE_S = 3.0
# Between tries to record an answer the user already saw.
RECORD_RETRY_FIRST_S = 0.2
RECORD_RETRY_MAX_S = 2.0


class Superseded(Exception):
    """Another worker runs this conversation now (the lease was lost, or another worker's
    delivery is under way): this worker stops its turns there and shows nothing more."""


async def holder_alive(liveness: Cache | None, state: DeliveryState, *, grace_s: float) -> bool:
    """Whether the worker showing `state` may still finish it. With `liveness` (the cache
    the workers' liveness keys are in; None: they share none) reachable: its liveness key, or
    a fresh SQL heartbeat; without: an SQL heartbeat younger than `grace_s` (a worker cut off
    from the database cannot renew it, and is given that long to come back and record what
    it showed)."""
    if state.owner is None:
        return False
    age_s = (utcnow() - state.seen).total_seconds() if state.seen else float("inf")
    if liveness is not None and await _answers(liveness):
        if await liveness.get(keys.alive(state.owner)) is not None:
            return True
        return age_s < SQL_GRACE_S
    return age_s < grace_s


class TurnDelivery:
    """One turn's answer as SQL knows it; the `Shown` a sink's streamer reports to."""

    def __init__(
        self,
        store: Store,
        lease: TurnLease,
        conversation_id: int,
        batch: list[StoredMessage],
        *,
        replacing: DeliveryState | None = None,
        state: ConversationState | None = None,
        retry_s: float = 600.0,
        deletions: Cache | None = None,
    ) -> None:
        self._store = store
        # Where deletion events leave their marks (ConversationManager.redact; a cache every
        # worker reads): an answer whose message was deleted before it was recorded.
        self._deletions = deletions
        self._retry_s = retry_s  # record_retry_s: how long to retry the database
        # The conversation's state as the lease was taken; given to the lease's first turn
        # only (TurnLease.state), None otherwise: the turn reads it if it needs it.
        self.state = state
        self._lease = lease
        self._cid = conversation_id
        self._batch = batch
        self._replacing = replacing
        self._pieces: dict[int, str | int] = dict(replacing.shown) if replacing else {}
        self.begun = False
        self.recorded = False
        # The answer quotes the chat's kept messages (TurnContext.quotes_kept): a DIGEST.
        self.quotes_kept = False
        # A message of it was deleted in the chat while it was shown (`deleted`), and its
        # first message's text where that was a later one ("": none; see `Shown.deleted`).
        self.deleted_in_chat = False
        self.still_shown = ""
        # The key the answer is recorded under, from its first message's reference: the
        # sink's (TellsDeletions.answer_key), set by the core as it delivers; None: no key.
        self.answer_key: Callable[[str | int], str | None] | None = None
        # Until when (monotonic) `may_show` needs no round trip after a confirmation.
        self._confirmed_until = -math.inf
        self._unnoted = False  # a piece's note failed: shown before the database had it
        # Writes of the turn that must be in before anything is shown (see before_showing).
        self._before: list[asyncio.Task[None]] = []

    def before_showing(self, write: asyncio.Task[None]) -> None:
        """A write of this turn (its handoff signals) left to run while the answer is
        prepared: `begin` waits for it, so that its failure fails the turn before anything
        is shown, as when it was awaited; every `begin` of the turn does (a model that failed
        before its first word has its error sentence delivered next, which must fail too).
        One whose turn ends before that is waited for as the turn ends (`writes_settled`)."""
        write.add_done_callback(_consumed)
        self._before.append(write)

    async def writes_settled(self) -> None:
        """The turn ends: its writes left to run (`before_showing`) are waited for, so that
        none outlives it: the next turn's read of recent signals (a streak) finds them in, and
        a turn cancelled (shutdown) cancels them with it. A failure is left to the turn's
        next run (the write is repeated, keeping the first)."""
        pending = [write for write in self._before if not write.done()]
        self._before = []
        if not pending:  # the usual turn: begin waited for them
            return
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            for write in pending:
                write.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def quoting_kept(self) -> None:
        self.quotes_kept = True

    @property
    def epoch(self) -> int:
        return self._lease.epoch

    @property
    def pieces(self) -> dict[int, str | int]:
        return self._pieces

    @property
    def shown_something(self) -> bool:
        return bool(self._pieces)

    def again(self) -> TurnDelivery:
        """A second answer to the same messages in this turn (the apology after a failure),
        showing itself in the pieces this one showed."""
        state = DeliveryState(
            self._batch[0].id, self._batch[-1].id, self.epoch, self._lease.owner, None,
            dict(self._pieces),
        )  # fmt: skip
        # settle_failure abandoned this delivery if it showed something, else cleared it.
        abandoned = self.begun and self.shown_something
        replacing = state if abandoned else self._replacing if not self.begun else None
        return TurnDelivery(
            self._store, self._lease, self._cid, self._batch, replacing=replacing,
            retry_s=self._retry_s, deletions=self._deletions,
        )  # fmt: skip

    async def begin(self) -> None:
        """Record that this turn shows its answer; Superseded when it may not."""
        if self.begun:
            return
        for write in self._before:  # kept: a failed write fails each begin of the turn
            await asyncio.shield(write)  # a cancelled begin leaves it to writes_settled
        if self._lease.lost.is_set():
            raise Superseded
        first, last = self._batch[0].id, self._batch[-1].id
        old = self._replacing
        if not await self._store.begin_delivery(self._lease, self._cid, first, last, replacing=old):
            raise Superseded
        self.begun = True

    async def may_show(self) -> None:
        """Called before each change the chat sees (the streamer's sends and edits, each
        chunk handed to a sink): Superseded once another worker may have taken this answer
        over. While the lease is valid by this worker's clock nobody can have, and nothing is
        asked. Past that (the process was paused, its renewals failed, or another worker took
        the lease), and while the database cannot be reached (the last renewal or a piece's
        note failed: what is shown now could not be noted, and a takeover would show it
        again), SQL confirms that the delivery is still this worker's (`Store.hold_delivery`),
        which also keeps it from being taken over for SQL_GRACE_S; retried while the database
        is unreachable (for up to `record_retry_s`): the answer waits, unseen, rather than
        overwrite what another worker shows instead."""
        if not self.begun:
            return  # nothing is shown before the delivery is recorded (begin checks the lease)
        now = time.monotonic()
        lease = self._lease
        valid = now < lease.valid_until and not lease.lost.is_set() and not lease.unreachable
        if now < self._confirmed_until or (valid and not self._unnoted):
            return
        deadline = now + self._retry_s
        delay = RECORD_RETRY_FIRST_S
        while True:
            sent = time.monotonic()
            try:
                held = await self._store.hold_delivery(self._cid, self.epoch, lease.owner)
            except StorageError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "conversation %s: answer held back until the database confirms it is "
                    "still this worker's: %s", self._cid, exc,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_S)
                continue
            if not held:
                log.warning(
                    "conversation %s: another worker took this answer over; "
                    "this one shows no more of it", self._cid,
                )  # fmt: skip
                raise Superseded
            self._confirmed_until = sent + SQL_GRACE_S
            # The database is back: the pieces it missed are noted before anything more shows.
            if not self._unnoted or await self.showed(*max(self._pieces.items())):
                return
            if time.monotonic() + delay > deadline:
                return  # shown unnoted, as before the wait: a takeover may show it again
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX_S)

    async def showed(self, index: int, ref: str | int) -> bool:
        self._pieces[index] = ref
        try:
            await self._store.note_delivery(self._cid, self.epoch, self._pieces)
        except StorageError as exc:  # a takeover then sends new pieces instead of editing
            log.warning("conversation %s: shown piece not noted: %s", self._cid, exc)
            # Nothing more is shown until the database confirms this delivery (and takes the
            # note): each piece shown unnoted is one a takeover would show again.
            self._unnoted, self._confirmed_until = True, -math.inf
            return False
        self._unnoted = False
        return True

    def deleted(self, still_shown: str = "") -> None:
        self.deleted_in_chat = True
        self.still_shown = still_shown

    async def record(
        self,
        text: str,
        *,
        kind: MessageKind,
        token_count: int,
        retry_s: float,
        count: Callable[[str], Awaitable[int]] | None = None,
    ) -> RecordedReply | None:
        """Record the answer, fenced on this delivery; retried while the database is
        unreachable, for up to `retry_s`: the user saw it, so it must not stay pending.
        None: another worker took the delivery over (it shows its own answer instead). An
        answer deleted in the chat while it was shown is recorded as its stub, after its first
        message's text where a later one was deleted and the first is keyed (its deletion
        event, or the mark it leaves, then still redacts it)."""
        await self.begin()
        first = self._pieces.get(0)
        key = self.answer_key(first) if self.answer_key and first is not None else None
        kept = self.still_shown if key is not None else ""
        if self.deleted_in_chat and kept:
            text = f"{kept}\n\n{ANSWER_DELETED_STUB}"
            token_count = estimate_tokens(kept) + ANSWER_DELETED_STUB_TOKENS
            if count is not None:  # in later prompts: the model's tokenizer, as any chat text
                token_count = max(token_count, await count(text))
        elif self.deleted_in_chat:
            text, token_count = ANSWER_DELETED_STUB, ANSWER_DELETED_STUB_TOKENS
        ids = [m.id for m in self._batch]
        stored = await self._retried(
            lambda: self._store.record_reply(
                self._cid, ids, text, kind=kind, token_count=token_count, epoch=self.epoch,
                idempotency_key=key,
            ),
            retry_s, "answer shown but not recorded yet",
        )  # fmt: skip
        self.recorded = True
        if key is not None and (kept or not self.deleted_in_chat):
            await self._redact_if_deleted(key, retry_s)  # its first message may be gone too
        return stored

    async def _redact_if_deleted(self, key: str, retry_s: float) -> None:
        """The answer's first message deleted in the chat before the answer was recorded (a
        moderator, while a later message of it streamed): its deletion event found nothing
        to redact and left a mark, read here once the answer is recorded, which is redacted
        then. The event marks before it redacts, and this reads after the record: whichever
        comes second finds the other's work. Retried while the database is unreachable, for
        up to `retry_s` (as long again as the record may retry): the event that marked it
        does not come again."""
        if self._deletions is None or await self._deletions.get(keys.deleted(key)) is None:
            return
        self.deleted_in_chat = True  # the core drops the cached window instead of adding to it
        redact = lambda: self._store.redact(key)  # noqa: E731
        try:
            await self._retried(redact, retry_s, "answer deleted in the chat not redacted yet")
        except StorageError as exc:
            log.warning("conversation %s: answer deleted in the chat not redacted: %s",
                        self._cid, exc)  # fmt: skip

    async def _retried(self, call: Callable[[], Awaitable[T]], retry_s: float, what: str) -> T:
        """`call()`, tried again while the database is unreachable (StorageError), backing
        off, for up to `retry_s`; the last StorageError is raised."""
        deadline = time.monotonic() + retry_s
        delay = RECORD_RETRY_FIRST_S
        while True:
            try:
                return await call()
            except StorageError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("conversation %s: %s (retrying): %s", self._cid, what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_S)

    async def settle_failure(self) -> None:
        """The turn failed: clear its delivery if it showed nothing, else abandon it to be
        finished (by editing what it showed) by whichever worker runs the conversation next."""
        if not self.begun or self.recorded:
            return
        try:
            await self._store.end_delivery(self._cid, self.epoch, abandon=self.shown_something)
        except StorageError as exc:  # it lapses: its worker's heartbeat stops
            log.warning("conversation %s: delivery not settled: %s", self._cid, exc)


def _consumed(write: asyncio.Task[None]) -> None:
    """Retrieve a left write's failure, so that asyncio does not log it as never retrieved."""
    if not write.cancelled():
        write.exception()


async def _until(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`; True when `stop` was set meanwhile. Loops end on an event, not only on
    cancellation: on Python 3.11 a cancellation that arrives as a driver's `wait_for` finishes
    can be lost (CPython gh-86296; see bot.storage.lease_keeper), and the loop would run for
    ever."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return stop.is_set()
    return True


async def _answers(liveness: Cache) -> bool:
    try:
        await liveness.ping()
    except StorageError:
        return False
    return True


async def beat(liveness: Cache, owner: str, stop: asyncio.Event) -> None:
    """This worker's liveness key, refreshed until `stop`."""
    while not stop.is_set():
        # Asked even during the cache's pause after a failure (a health check ends it): a
        # worker back from an outage is alive at once, not up to retry_after_failure_s later.
        if await _answers(liveness):
            await liveness.set(keys.alive(owner), b"1", ttl_s=ALIVE_TTL_S)
        if await _until(stop, HEARTBEAT_S):
            return


async def sweep(
    store: Store,
    schedule: Callable[[int, ConversationKey], None],
    *,
    every_s: float,
    orphan_after_s: float,
    stop: asyncio.Event,
) -> None:
    """Every `every_s`: schedule each conversation with a message pending for longer than
    `orphan_after_s` and no live lease (its worker died, or its turn failed and has tries
    left), so that no work waits for a restart or for the next message."""
    warned = False
    while not await _until(stop, every_s):
        try:
            found = await store.conversations_with_pending(
                older_than=utcnow() - timedelta(seconds=orphan_after_s)
            )
        except StorageError as exc:
            if not warned:
                log.warning("orphan sweep skipped: %s", exc)
            warned = True
            continue
        warned = False
        for conversation_id, key in found:
            schedule(conversation_id, key)
