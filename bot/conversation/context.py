"""Loads, extends and rolls over a conversation's context window.

The cache holds each window (`Cache.read_through`); SQL holds the truth. In Redis a copy can
be stale after an outage or a failed write, so a copy read from there is used only if it is
provably current (last reply, boundary and count of redactions match SQL's: one primary-key
read). In process the cache keeps the window objects this process updates on every change:
trusted, no encoding per turn, and each turn's prompt messages are built once (see
`Turn.messages`); only their count of redactions is compared with SQL's as read with the turn
lease, since another process may redact (`parley db prune`, `parley data forget`).

A redaction (a message deleted by its sender once answered) drops the window, but a turn in
flight holds the window it loaded before and writes it back when it ends, the deleted text in
it; nothing else about it differs from SQL's. So a window carries the conversation's count of
redactions as it was built, read before its rows: in Redis one built or written back across a
redaction, by any worker, is stale by that count. In process the manager drops the window
again after the turn in flight (ConversationManager.redact). A turn in flight that rolls over
folds its window's turns into the summary, which SQL keeps: the summary is written only if no
message was redacted since the window was built (Store.fold_summary, one statement), else it is
folded again from SQL (ContextLoader._fold). A redaction of a message an earlier roll-over
folded drops SQL's summary with the text (Store.redact): the next window is rebuilt from the
messages since the /reset boundary, the stub in place of the text, and rolls over as usual.

A rebuild reads a bounded number of the newest rows, so loading costs the same for 10 or
100,000 earlier messages. A shared conversation's (SQL's `shared`, where speaker labels are
on) reads each sender's name with them, in the same statement, and labels its user turns as
the turns in process did (bot.conversation.window); a cached window labelled otherwise than
this worker labels is stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

from bot.storage import keys
from bot.storage.base import Cache, Codec, ConversationState, Store

from .summary import Summarizer
from .window import Turn, Window, framed_summary, turns_from_rows

log = logging.getLogger(__name__)

CACHE_TTL_S = 24 * 3600
# Folds of one roll-over, each undone by a redaction during it, before the turn goes on without
# one (ContextLoader._fold): a bulk deletion is over well within a few model calls.
FOLD_TRIES = 3
# The conversation's state, when the caller knows it (read with the turn lease): a cached
# window is checked against it, and a rebuild starts from it, with no read of their own.
_KNOWN: ContextVar[ConversationState | None] = ContextVar("parley_known_state", default=None)


class ContextLoader:
    def __init__(
        self,
        store: Store,
        cache: Cache,
        summarizer: Summarizer,
        *,
        budget_tokens: int,
        max_rows: int = 400,
        speaker_labels: bool = True,
    ) -> None:
        self._store = store
        self._summarizer = summarizer
        self.budget_tokens = budget_tokens
        self._max_rows = max_rows
        self._speaker_labels = speaker_labels
        self._frame_tokens: int | None = None
        codec = Codec(Window.dumps, Window.loads, self._current)
        self._windows = cache.read_through(keys.window, self._rebuild, codec, ttl_s=CACHE_TTL_S)

    async def load(self, conversation_id: int, state: ConversationState | None = None) -> Window:
        """The window; `state`: the conversation's current state, if the caller has it."""
        token = _KNOWN.set(state)
        try:
            window = await self._windows.get(conversation_id)
            # A window kept in process is trusted as this process left it, but another process
            # may have redacted since (`parley db prune`, `parley data forget`): told by SQL's
            # count of redactions, read with the turn lease (no read of its own).
            known = state is not None and state.id == conversation_id
            if known and state is not None and window.redactions != state.redactions:
                log.info("stale window for conversation %s, rebuilding", conversation_id)
                await self._windows.invalidate(conversation_id)
                window = await self._windows.get(conversation_id)
            return window
        finally:
            _KNOWN.reset(token)

    async def _state(self, conversation_id: int) -> ConversationState:
        known = _KNOWN.get()
        if known is not None and known.id == conversation_id:
            return known
        return await self._store.state(conversation_id)

    def labelled(self, state: ConversationState) -> bool:
        """Whether the conversation's user turns open with their senders' labels."""
        return self._speaker_labels and state.shared

    async def _current(self, conversation_id: int, window: Window) -> bool:
        state = await self._state(conversation_id)
        # Labelled as this worker labels: one cached before the conversation was marked
        # shared, or by a worker with labels turned off, is built again.
        if _is_current(window, state) and window.labelled == self.labelled(state):
            return True
        log.info("stale cached window for conversation %s, rebuilding", conversation_id)
        return False

    async def _rebuild(self, conversation_id: int) -> Window:
        state = await self._state(conversation_id)
        boundary = max(state.summary_through_id, state.context_start_id)
        summary = state.summary if state.summary_through_id >= state.context_start_id else ""
        turns: list[Turn] = []
        labelled = self.labelled(state)
        # A turn ends with a reply: with none after the boundary (a new conversation, or one
        # just reset or folded) there is nothing to read.
        if state.last_reply_id > boundary:
            rows = await self._store.context_messages(
                conversation_id, boundary, self._max_rows, authors=labelled
            )
            complete = len(rows) < self._max_rows
            turns = turns_from_rows(rows, complete=complete, labelled=labelled)
        summary_tokens = 0
        if summary:
            # Stored with the summary since migration 0005: no model round trip per rebuild.
            summary_tokens = state.summary_tokens or (
                await self._summarizer.count(summary) + await self._frame()
            )
        # The count read before the rows: a redaction between the two makes the window stale
        # (rebuilt once more), never one that holds the deleted text pass for current.
        return Window(summary, summary_tokens, boundary, turns, state.redactions, labelled)

    async def fit(self, conversation_id: int, window: Window, new_tokens: int) -> Window:
        """Make room for a new message of `new_tokens`: roll over only when it must."""
        if window.tokens + new_tokens > self.budget_tokens and window.turns:
            target = self.budget_tokens // 2 - new_tokens
            window = await self._fold(
                conversation_id,
                window,
                target,
                lambda w: w.tokens + new_tokens > self.budget_tokens,
            )
        return window

    async def shrink(self, conversation_id: int, window: Window, new_tokens: int) -> Window:
        """The model said the prompt is too long although our count says it fits (a tokenizer
        or limit mismatch): fold every turn into the summary, so the retry is as small as a
        prompt with history can be. Called at most once per turn."""
        if not window.turns:
            return window  # nothing to fold: the message alone is too long, the retry says so
        return await self._fold(conversation_id, window, 0, lambda w: True)

    async def append(self, conversation_id: int, window: Window, turn: Turn) -> None:
        """Add a finished turn. Appending never changes what came before (prefix stability)."""
        window.add(turn)
        await self._windows.put(conversation_id, window)

    async def _fold(
        self, conversation_id: int, window: Window, target: int, over: Callable[[Window], bool]
    ) -> Window:
        """Roll over down to `target`; the window to use (and cached). A summary folded from a
        window built before a redaction is not written (Store.fold_summary): the window is
        built again from SQL, where the message reads as the stub, and folded again while it
        is still `over` the budget."""
        for _ in range(FOLD_TRIES):
            if await self._roll_over(conversation_id, window, target):
                break
            log.info("conversation %s: a message was redacted during a roll-over, folding "
                     "again from SQL", conversation_id)  # fmt: skip
            window = await self._rebuild(conversation_id)
            if not window.turns or not over(window):
                break
        else:
            # Redactions kept landing during the model's fold. A summary written now, from a
            # window read before the last of them, could hold its text; the window as SQL
            # has it holds none. The prompt may be over the budget for this turn (at worst
            # the model refuses it, and the turn is tried again); the next turn folds.
            log.warning("conversation %s: not rolled over, messages were redacted during "
                        "each of %d folds", conversation_id, FOLD_TRIES)  # fmt: skip
        await self._windows.put(conversation_id, window)
        return window

    async def _roll_over(self, conversation_id: int, window: Window, target: int) -> bool:
        """Fold the oldest turns into the summary; False, with the summary unwritten and the
        window to be discarded (turns taken out of it), when a message was redacted since the
        window was built."""
        # Fold down to half the budget so roll-overs (which break the prefix) stay rare.
        fold: list[Turn] = []
        while window.turns and window.tokens > target:
            fold.append(window.pop_oldest())
            window.summary_tokens = 0  # the old summary is folded into the new one
        if not fold:
            return True
        summary, tokens = await self._summarizer.fold(window.summary, fold)
        tokens += await self._frame()
        # Only over the redactions the window was built after: a redaction during the model's
        # fold (or since the window was loaded) would otherwise be written into SQL's summary.
        args = (conversation_id, summary, fold[-1].reply_id, tokens, window.redactions)
        through = await self._store.fold_summary(*args)
        if through is None:
            return False
        window.summary, window.summary_tokens = summary, tokens
        # Below the last folded answer where a message it does not answer came before it (sent
        # while that answer streamed): SQL's boundary, which a rebuild reads after.
        window.boundary_id = max(window.boundary_id, through)
        log.info("conversation %s rolled over: %d turns folded", conversation_id, len(fold))
        return True

    async def _frame(self) -> int:
        """Tokens of the summary's heading and fence (`framed_summary`), counted once: a
        summary's count includes them, or a prompt over the budget would pass for one within."""
        if self._frame_tokens is None:
            self._frame_tokens = await self._summarizer.count(framed_summary(""))
        return self._frame_tokens

    async def invalidate(self, conversation_id: int) -> None:
        await self._windows.invalidate(conversation_id)


def _is_current(window: Window, state: ConversationState) -> bool:
    boundary = max(state.summary_through_id, state.context_start_id)
    return (
        window.boundary_id == boundary
        and window.last_reply_id == max(state.last_reply_id, boundary)
        and window.redactions == state.redactions
    )
