"""One keeper renews every turn lease a store holds: those due, in one statement, on a
connection of its own (`database.create_keeper_engine`), so that a renewal never queues
behind the turns' statements and its cost does not grow with their number (docs/database.md:
renewed one by one on the turns' pool, leases lapsed under running turns)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from bot.errors import StorageError
from bot.storage.base import TurnLease

log = logging.getLogger(__name__)

Held = tuple[int, int]  # (conversation id, lease epoch)
# Renews the leases `held` of `owner` for `ttl_s` more: those it still held, each with
# whether it was renewed now (False: held, but its row was busy; tried again next period).
RenewMany = Callable[[str, float, list[Held]], Awaitable[Mapping[Held, bool]]]


@dataclass(slots=True)
class _Lease:
    ttl_s: float
    lease: TurnLease
    due: float  # monotonic time of its next renewal


class LeaseKeeper:
    def __init__(self, renew: RenewMany) -> None:
        self._renew = renew
        self._held: dict[Held, _Lease] = {}
        # Made anew with each task (`_start`): an event is bound to the loop that first waits
        # on it, and a store may outlive one loop.
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # While the keeper sleeps: the time it wakes at (inf: no lease held). A new lease due
        # sooner wakes it; one due later (nearly always) costs it no wake-up.
        self._wakes_at = -math.inf

    @contextmanager
    def keeping(
        self, conversation_id: int, lease: TurnLease, ttl_s: float, *, since: float
    ) -> Iterator[None]:
        """Renew `lease` (good for `ttl_s` from `since`, a monotonic time) every `ttl_s / 3`
        while the block runs, until a renewal finds it taken by another worker (`lease.lost`
        is then set)."""
        key, due = (conversation_id, lease.epoch), since + ttl_s / 3
        lease.valid_until = since + ttl_s
        self._held[key] = _Lease(ttl_s, lease, due)
        if not self._running_here():
            self._start()
        elif due < self._wakes_at:
            self._changed.set()
        try:
            yield
        finally:
            self._held.pop(key, None)

    def _running_here(self) -> bool:
        task = self._task
        return (
            task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()
        )

    def _start(self) -> None:
        # In a context of its own: the keeper renews every lease, and its lines are not those
        # of the turn that happened to take the first one (bot.logcontext).
        self._changed, self._stop = asyncio.Event(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="renew turn leases", context=contextvars.Context()
        )
        self._task.add_done_callback(_report_end)

    async def aclose(self) -> None:
        # Told by an event as well as cancelled: on Python 3.11 a cancellation arriving as a
        # driver's wait_for finishes can be lost (CPython gh-86296).
        self._stop.set()
        self._changed.set()
        if self._running_here() and self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = min((held.due for held in self._held.values()), default=None)
            if due is None or due > now:
                self._changed.clear()
                self._wakes_at = math.inf if due is None else due
                try:
                    async with asyncio.timeout(None if due is None else due - now):
                        await self._changed.wait()  # a lease due sooner, or aclose
                except TimeoutError:
                    pass
                self._wakes_at = -math.inf
                continue
            await self._renew_due(now)

    async def _renew_due(self, now: float) -> None:
        # Those due within a sixth of their period go along: fewer, fuller statements.
        groups: dict[tuple[str, float], list[Held]] = {}
        for key, held in self._held.items():
            if held.due <= now + held.ttl_s / 6:
                groups.setdefault((held.lease.owner, held.ttl_s), []).append(key)
        for (owner, ttl_s), keys in groups.items():
            # After a failure, tried again in half a period: two failures in a row still
            # leave a third of the lease.
            retry = None
            sent = time.monotonic()  # the lease runs from the renewal's sending
            try:
                kept = dict(await self._renew(owner, ttl_s, keys))
            except StorageError as exc:
                log.warning("%d turn leases not renewed: %s", len(keys), exc)
                kept, retry = dict.fromkeys(keys, False), time.monotonic() + ttl_s / 6
            except Exception:  # a bug: logged, and the keeper goes on for the other leases
                log.exception("%d turn leases not renewed", len(keys))
                kept, retry = dict.fromkeys(keys, False), time.monotonic() + ttl_s / 6
            for key in keys:
                still = self._held.get(key)
                if still is None:  # released meanwhile
                    continue
                still.lease.unreachable = retry is not None
                if key in kept:
                    still.due = now + ttl_s / 3 if retry is None else retry
                    if kept[key]:
                        still.lease.valid_until = sent + ttl_s
                else:
                    log.warning("conversation %s: lease lost while held", key[0])
                    still.lease.lost.set()
                    del self._held[key]


def _report_end(task: asyncio.Task[None]) -> None:
    # A keeper that ended by itself renews nothing until the next lease starts another one:
    # said when it happens, not as "Task exception was never retrieved" at exit.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the turn leases' keeper stopped", exc_info=exc)
