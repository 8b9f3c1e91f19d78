"""The retention policy in a running worker: every `conversation.retention_interval_s` (a
day by default), messages older than `conversation.retention_days` are pruned
(Store.prune; `parley db prune` does the same once, from the command line).

Every worker prunes; none is chosen. A prune is idempotent and cheap where there is nothing to
do (an index on `messages.created_at`, migration 0018, finds the few messages that aged past
the cutoff since the last run), and workers that prune at once share the work (PostgreSQL:
each batch skips the rows another has locked; SQLite has one writer at a time). That needs no
row to elect a worker by, nor a lock that a dead worker could hold. The first prune comes
within a few minutes of the start, at a moment drawn at random so that workers started
together (a deployment) do not all run it at once; a worker restarted more often than
the interval still prunes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bot.errors import StorageError
from bot.storage.base import Pruned, PruneInterrupted, Store
from bot.types import utcnow

from .delivery import _until

log = logging.getLogger(__name__)

# The first prune after a start comes within this many seconds (or the interval, if shorter).
FIRST_PRUNE_WITHIN_S = 300.0
# After a failure (the database unreachable) the prune is tried again this soon, not a day later.
RETRY_AFTER_S = 300.0


async def prune_every(
    store: Store,
    forget: Callable[[Pruned], Awaitable[None]],
    *,
    days: int,
    every_s: float,
    stop: asyncio.Event,
) -> None:
    """Until `stop`: prune what is older than `days`, every `every_s`; `forget` gets each
    prune's result (the manager drops the windows it keeps of those conversations)."""
    wait_s = random.uniform(0, min(every_s, FIRST_PRUNE_WITHIN_S))
    while not await _until(stop, wait_s):
        wait_s = every_s
        try:
            pruned = await store.prune(utcnow() - timedelta(days=days))
        except StorageError as exc:
            if isinstance(exc, PruneInterrupted):  # its committed batches pruned these
                await forget(exc.pruned)
            wait_s = min(every_s, RETRY_AFTER_S)
            log.warning("retention: prune failed, tried again in %gs: %s", wait_s, exc)
            continue
        await forget(pruned)
        log.info(
            "retention: pruned %d message(s) older than %d day(s) from %d conversation(s)",
            pruned.count, days, len(pruned.conversations),
        )  # fmt: skip
