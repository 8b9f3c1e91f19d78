"""One keeper renews every turn lease a store holds.

A lease is renewed every `ttl_s / 3` while its turn runs. Renewed one by one, on the pool the
turns use, a renewal queues behind the turns' own statements: on a loaded host a burst of
turns held it back for more than `ttl_s` (measured: up to 5.7 s against a 6 s lease), the
lease lapsed under a turn that was still running, and another worker's sweep took the
conversation over and asked the model again. The keeper renews all the leases that are due in
one statement, on a connection of its own (`database.create_keeper_engine`), so a renewal
waits for nothing but the database, and its cost does not grow with the number of turns.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bot.errors import StorageError
from bot.storage.base import TurnLease

log = logging.getLogger(__name__)

Held = tuple[int, int]  # (conversation id, lease epoch)
# Renews the leases `held` of `owner` for `ttl_s` more; the ones it still held.
RenewMany = Callable[[str, float, list[Held]], Awaitable[Collection[Held]]]


@dataclass(slots=True)
class _Lease:
    owner: str
    ttl_s: float
    lease: TurnLease
    due: float  # monotonic time of its next renewal


class LeaseKeeper:
    def __init__(self, renew: RenewMany) -> None:
        self._renew = renew
        self._held: dict[Held, _Lease] = {}
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
        self._held[key] = _Lease(lease.owner, ttl_s, lease, due)
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="renew turn leases")
        elif due < self._wakes_at:
            self._changed.set()
        try:
            yield
        finally:
            self._held.pop(key, None)

    async def aclose(self) -> None:
        # Told by an event as well as cancelled: on Python 3.11 a cancellation arriving as a
        # driver's wait_for finishes can be lost (CPython gh-86296).
        self._stop.set()
        self._changed.set()
        if self._task is not None:
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
                groups.setdefault((held.owner, held.ttl_s), []).append(key)
        for (owner, ttl_s), keys in groups.items():
            try:
                kept = set(await self._renew(owner, ttl_s, keys))
            except StorageError as exc:  # tried again at the next period; it may lapse
                log.warning("%d turn leases not renewed: %s", len(keys), exc)
                kept = set(keys)
            except Exception:  # a bug: logged, and the keeper goes on for the other leases
                log.exception("%d turn leases not renewed", len(keys))
                kept = set(keys)
            for key in keys:
                still = self._held.get(key)
                if still is None:  # released meanwhile
                    continue
                if key in kept:
                    still.due = now + ttl_s / 3
                else:
                    log.warning("conversation %s: lease lost while held", key[0])
                    still.lease.lost.set()
                    del self._held[key]
