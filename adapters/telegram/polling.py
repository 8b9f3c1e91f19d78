"""Long polling's updates from fetch to confirmation (adapters.telegram.adapter uses it).

Each chat has a lane, a task that records its updates in order; lanes run at once, so one
chat's document (downloaded and read while its update is recorded) stalls no other chat. The
next getUpdates' offset passes an update only when it and every update before it are
recorded, so a crash loses nothing, and an update that getUpdates re-sends while it is in hand
(Telegram re-sends whatever is not confirmed) is not taken twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from telegram import Update

# Polling: chats are handled at once, a chat's updates in order. getUpdates returns at most
# this many updates from the offset (Telegram's largest `limit`), so no more fetched updates
# wait unconfirmed behind a slow one: the record that keeps a re-sent one from acting twice.
WINDOW_MAX = 100
# Updates handled at once across chats: each may hold a document (documents.max_bytes) and a
# database connection. More wait for a place, in their chat's order.
MAX_IN_FLIGHT = 16
# A chat's updates taken and not yet recorded, its current one (a document, say) included: one
# talkative chat cannot fill the window; its later ones stay unconfirmed and come again.
CHAT_QUEUE_MAX = 10
# While updates are in flight getUpdates answers at once (with them): poll again when one
# finishes, or after this long for other chats' new messages.
REPOLL_S = 0.5


def lane_of(update: Update) -> tuple[str, int]:
    """Updates of one chat share a lane (their order is kept); one without a chat is alone."""
    chat = update.effective_chat
    return ("chat", chat.id) if chat is not None else ("update", update.update_id)


class Backlog:
    """Polled updates from fetch to confirmation. Each chat has a lane, a task that records
    its updates in order; lanes run at once (MAX_IN_FLIGHT records at a time). The offset
    passes an update only when it and every update before it are finished, and an update
    fetched again before that (getUpdates re-sends the unconfirmed) is not taken twice."""

    def __init__(self, record: Callable[[Update], Awaitable[None]]) -> None:
        self._record = record
        self._offset: int | None = None
        self._newest: int | None = None
        self._finished: dict[int, bool] = {}  # taken, not yet confirmed: update_id -> done
        self._deferred: set[int] = set()  # its chat's lane was full: taken when fetched again
        # The latest updates the offset passed: one sent again is not a new numbering.
        self._confirmed: deque[int] = deque(maxlen=4 * WINDOW_MAX)
        self._lanes: dict[tuple[str, int], deque[Update]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._progress = asyncio.Event()

    @property
    def busy(self) -> bool:
        """Updates wait: a getUpdates would answer at once with them."""
        return bool(self._deferred) or not all(self._finished.values())

    def next_offset(self) -> int | None:
        """The oldest update not finished (or past the newest fetched); `settle` waits for
        what finishes from now on."""
        self._progress.clear()
        waiting = [i for i, done in self._finished.items() if not done] + [*self._deferred]
        if waiting:
            self._offset = min(waiting)
        elif self._newest is not None:
            self._offset = self._newest + 1
        passed = [i for i in self._finished if i < (self._offset or 0)]
        self._confirmed.extend(passed)
        for i in passed:
            del self._finished[i]
        return self._offset

    def take(
        self,
        batch: Sequence[tuple[int, dict[str, Any]]],
        parse: Callable[[int, dict[str, Any]], Update | None],
    ) -> None:
        """Queue a batch's new updates on their chats' lanes, oldest first. No await here:
        a chat's update is deferred only while its lane is full, so none overtakes another."""
        if self._renumbered(batch):
            # After a week without updates Telegram numbers them anew from a random id, often
            # below our offset. Skipped as confirmed, such an update would never be passed by
            # the offset and came back at once, in a loop. The count starts over from it.
            self._offset = self._newest = None
            self._finished = {i: done for i, done in self._finished.items() if not done}
        for update_id, data in batch:
            if update_id in self._finished or update_id < (self._offset or 0):
                continue  # in flight or recorded: re-sent because not confirmed yet
            if update_id not in self._deferred and len(self._finished) >= WINDOW_MAX:
                break  # the rest come again, after the updates in hand
            self._deferred.discard(update_id)
            if self._newest is None or update_id > self._newest:
                self._newest = update_id
            update = parse(update_id, data)
            if update is None:
                self._finished[update_id] = True  # unreadable: skipped, as logged
            elif self._queue(update):
                self._finished[update_id] = False
            else:
                self._deferred.add(update_id)

    def _renumbered(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> bool:
        """An update below the offset that is neither in hand nor one it passed: getUpdates
        sends none of those unless the numbering started again."""
        offset = self._offset
        return offset is not None and any(
            i < offset and i not in self._finished and i not in self._deferred
            and i not in self._confirmed
            for i, _ in batch
        )  # fmt: skip

    async def settle(self) -> None:
        """Until an update finishes, or REPOLL_S passes (new messages of other chats)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPOLL_S):
                await self._progress.wait()

    async def aclose(self) -> None:
        """Cancel the lanes (shutdown): what they did not finish is not confirmed, and
        Telegram sends it again at the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _queue(self, update: Update) -> bool:
        lane = lane_of(update)
        queue = self._lanes.get(lane)
        if queue is not None and len(queue) >= CHAT_QUEUE_MAX:
            return False
        if queue is None:
            queue = self._lanes[lane] = deque()
            task = asyncio.create_task(self._drain(lane, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append(update)
        return True

    async def _drain(self, lane: tuple[str, int], queue: deque[Update]) -> None:
        while queue:
            async with self._slots:
                await self._record(queue[0])
            self._finished[queue.popleft().update_id] = True
            self._progress.set()
        del self._lanes[lane]
