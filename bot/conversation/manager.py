"""The conversation manager: the turn pipeline of DESIGN.md.

submit():  record the message in SQL (a repeated idempotency key is dropped), then schedule
           the conversation. Returning from submit() is the acknowledgement point: from here
           the message survives a crash (recover() picks it up on the next start).
worker:    take the conversation's turn lease in SQL (the one locker: one task per
           conversation in a process, one process per conversation across workers, with a
           fencing epoch), then run turns until nothing is pending: each turn takes the pending
           messages (merged, or one at a time, per the burst policy), answers them through the
           router or the model, records that it shows the answer (before the first visible
           piece), streams it to the platform's sink, and records it, fenced on that delivery
           (see delivery.py: an answer the user saw is never answered again; one cut by a
           crash is finished by editing it).
sweep:     every worker schedules conversations whose messages wait longer than
           orphan_after_s with no live lease: nothing waits for a restart.
slots:     at most `max_turns` conversations run turns at once per worker (one turn at a
           time each); the others wait in memory, in the order they came, their messages
           pending in SQL, and run as places free. A conversation with more messages when
           its turn ends goes behind those that wait (a busy one keeps no place from them).
           What recover() and the sweep find (the backlog) takes at most `backlog_turns` of
           the places, and beyond its first only those no new message's conversation waits
           for: new messages always keep the others, and a flood of them never stops the
           backlog (one turn at a time).

observe(): a group message not addressed to the bot, kept only where the chat opted in;
           recorded as answered-by-nothing, so no turn ever runs for it.

Errors are mapped to user-facing sentences here and only here, in the user's language
(`bot.phrases`; the language is looked up only when a sentence is needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import logging
import os
import re
import secrets
import socket
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backends.base import Backend, GenerationRequest, estimate_tokens
from bot import phrases
from bot.budget import NO_BUDGETS, TurnBudgets
from bot.errors import (
    BackendError,
    BackendUnavailable,
    BotError,
    ContextTooLong,
    NoBackendConfigured,
    StorageError,
)
from bot.handoff.types import HandoffState, HandoffStatus
from bot.logcontext import current_turn, note
from bot.lru import Lru
from bot.metrics import NullObserver, TurnObserver, observed_turn
from bot.outage import causes, error_types, is_outage
from bot.sentiment.types import TurnSignals
from bot.settings import BackendSettings, ConversationSettings
from bot.skills.qa import I_DONT_KNOW
from bot.skills.router import (
    Answer,
    CommandRouter,
    PlainRouting,
    Say,
    TurnContext,
    parse_command,
)
from bot.storage import keys
from bot.storage.base import (
    Cache,
    MessageKind,
    Pruned,
    Recorded,
    Store,
    StoredMessage,
    TurnLease,
)
from bot.storage.cache import MemoryCache, redis_refusal
from bot.text.quoting import split_fenced
from bot.text.storable import storable_incoming
from bot.types import ConversationKey, Incoming, Role, User

from .context import ContextLoader
from .delivery import Superseded, TurnDelivery, beat, holder_alive, sweep
from .relay import Collected, note_line, until
from .retention import prune_every
from .sink import (
    DeskHeld,
    KeepsAnswers,
    OperatorFacing,
    Reachable,
    ReplySink,
    SiteScoped,
    TellsDeletions,
    TellsEdits,
    done_showing,
    done_speaking,
    once,
    showing,
    speaking,
)
from .window import MESSAGE_OVERHEAD_TOKENS, Turn, Window, labelled_text, merge_user_texts

if TYPE_CHECKING:
    from bot.handoff.turns import HandoffTurns

log = logging.getLogger(__name__)


CUT_OFF_NOTE = f"\n\n{phrases.CUT_OFF}"
STOPPED_NOTE = f"\n\n{phrases.STOPPED}"
# Pending messages read at once; more are read after these are answered.
PENDING_PAGE = 64
# System prompts whose token count is kept (the core's and the support sites').
PROMPT_COUNTS = 256
# The start of a stub recorded in place of a message's text (see not_kept).
STUB_MARK = "[message: "
# The longest a caller's stub may be (a document's, with its name); a longer text that begins
# with STUB_MARK is a user's text, which over the rate limit is not kept either.
MAX_STUB_CHARS = 400
_SIZE_STUB = re.compile(r"^\[message: (\d+) characters not kept, over the size limit of (\d+)\]$")
# Commands that stop a reply that is still streaming.
STOP_COMMANDS = frozenset({"reset", "stop"})
# How soon a conversation whose answer another live worker is finishing is looked at again.
BUSY_RETRY_S = 1.0
# How long a message deleted in the chat stays marked (see redact): longer than an answer
# takes to be recorded, also one retried through a database outage or taken over by another
# worker after a crash.
DELETION_MARK_TTL_S = 86_400.0


# A /stop that reached a worker where its conversation's turn does not run leaves a mark in
# the shared cache (Redis) for this long; the turn, wherever it runs, looks for one this often.
STOP_MARK_TTL_S = 60.0
STOP_LOOK_S = 1.0
# Messages looked through for the customer's newest one (an agent reply's language).
CUSTOMER_LOOKBACK = 20
# The answer the current task's turn is showing (set around each turn).
_TURN: contextvars.ContextVar[TurnDelivery] = contextvars.ContextVar("parley_turn")
# How long a stop waits for the turns it cancelled after the grace (drain).
CANCELLED_TURNS_WAIT_S = 1.0


class NotServedHere(Exception):
    """The conversation's platform has no sink in this process: its turn is not run here
    (no attempt counted), and its messages stay pending for a worker that serves it."""


class StoppedWithProcess(NotServedHere):
    """The model failed while this process stops: an engine in the process is stopped with
    it where a signal reaches the whole process group (a terminal's Ctrl-C, systemd's stop).
    The turn ends as a crash would end it: nothing recorded, no attempt counted, what it
    showed left to be finished in place; the next start answers its messages."""


class OutputAway(NotServedHere):
    """Raised by a sink that cannot show the answer it was given, and that says why itself:
    the reader of the console's stdout left (for good, in this process), or a service the
    sink needs is out of reach (the support channel's event log, in Redis). Its messages stay
    pending, no attempt counted, for the sweep or the next process that serves the platform
    (the sink starts the answer afresh: it takes the place of whatever part of it got out)."""


@dataclass(frozen=True, slots=True)
class _Work:
    conversation_id: int
    key: ConversationKey


@dataclass(frozen=True, slots=True)
class _Streaming:
    """A reply being streamed: set `stop` to end it; `senders`: the user ids it answers."""

    stop: asyncio.Event
    senders: set[str]


class ConversationManager:
    def __init__(
        self,
        *,
        store: Store,
        cache: Cache,
        liveness: Cache | None = None,
        context: ContextLoader,
        router: CommandRouter,
        backend: Backend | None,
        settings: ConversationSettings,
        generation: BackendSettings,
        count_tokens: Callable[[str], Awaitable[int]],
        backlog_turns: int = 10,
        max_turns: int = 74,
        skills: PlainRouting | None = None,
        observer: TurnObserver | None = None,
        budgets: TurnBudgets | None = None,
        handoff: HandoffTurns | None = None,
    ) -> None:
        self.observer: TurnObserver = observer or NullObserver()
        self._budgets: TurnBudgets = budgets or NO_BUDGETS
        self._store = store
        self._cache = cache
        # Where deletion events leave their marks (`redact`), read by the turns: the shared
        # cache (Redis); in process an LRU of their own, since every message deleted where
        # the bot reads leaves one for a day, and a purge's would evict the windows and the
        # rate counters (the flooder's among them) from the one LRU of a MemoryCache.
        self._deletions: Cache = MemoryCache() if isinstance(cache, MemoryCache) else cache
        # Where workers mark that they are alive (Redis); None when they share no cache.
        self._liveness = liveness
        self._context = context
        self._router = router
        self._backend = backend
        self._settings = settings
        self._generation = generation
        self._count = count_tokens
        self._prompt_tokens: Lru[int] = Lru(PROMPT_COUNTS)
        self._skills = skills
        self._handoff = handoff
        self._sinks: dict[str, ReplySink] = {}
        self._traits: dict[str, _SinkTraits] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        # The places (see slots above): conversations waiting for one, in the order they came
        # (a new message's, then the backlog's: recover(), the sweep), and the tasks holding
        # them. Started all at once, 10,000 conversations queued for the database pool's
        # connections past its timeout (half their turns failed) and a new message waited
        # behind all of them, after an outage (the backlog) as in a flood of new messages.
        self._max_turns = max_turns
        # Below max_turns (but one at least): a backlog_turns as large (its default is
        # database.pool_size, 10, beside a max_turns set lower) took every place after an
        # outage, and each new message waited for one of the backlog's turns to end.
        self._backlog_turns = max(1, min(backlog_turns, max_turns - 1))
        self._waiting: dict[int, _Work] = {}
        self._queued: dict[int, _Work] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._backlog_running: set[asyncio.Task[None]] = set()
        # conversation -> set to stop the answer streaming there (/stop, /reset)
        self._streaming: dict[int, _Streaming] = {}
        self._again: set[int] = set()
        # Of those, the ones a new message came to (not only the sweep's or recover()'s find):
        # their next turn waits behind the conversations waiting for a place.
        self._brought: set[int] = set()
        # Conversations with a message redacted while their worker ran here: its turn in
        # flight may write back the window it loaded before (see redact).
        self._redacted: set[int] = set()
        # Conversations to merge into another (`move_chat`), by their next turn's lease: the
        # new conversation's id and key.
        self._merges: dict[int, tuple[int, ConversationKey]] = {}
        # Merges that failed (not a busy or lost lease: an error), by conversation: how often.
        self._merge_failures: dict[int, int] = {}
        # This process's name in SQL leases (Store.turn_lease): unique per manager.
        self._owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._background: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._draining = False  # a stop began: a model failing now goes with the process
        # The stop's drain began: no turn is started any more (what is pending stays so, for
        # another worker or the next start). The orphan sweep is the one that would.
        self._closing = False
        self._closing_now = asyncio.Event()  # set with _closing: ends a give-back's wait
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The worker's background duties: its liveness key (so other workers leave the
        answers it is showing alone), the orphan sweep, and the retention policy's prune."""
        s = self._settings
        if self._liveness is not None:
            beating = beat(self._liveness, self._owner, self._stopping)
            self._background.append(asyncio.create_task(beating, name="parley-heartbeat"))
        if s.sweep_interval_s > 0:
            task = sweep(
                self._store,
                lambda cid, key: self._schedule(_Work(cid, key), backlog=True),
                every_s=s.sweep_interval_s,
                orphan_after_s=s.orphan_after_s,
                stop=self._stopping,
            )
            self._sweeper = asyncio.create_task(task, name="parley-sweep")
            self._background.append(self._sweeper)
        if s.retention_days > 0:
            pruning = prune_every(
                self._store,
                self._forget_pruned,
                days=s.retention_days,
                every_s=s.retention_interval_s,
                stop=self._stopping,
            )
            self._background.append(asyncio.create_task(pruning, name="parley-retention"))

    def attach(self, platform: str, sink: ReplySink) -> None:
        self._sinks[platform] = sink
        self._traits[platform] = _SinkTraits.of(sink)

    def _traits_of(self, platform: str) -> _SinkTraits:
        return self._traits.get(platform, _NO_TRAITS)

    def schedule(self, conversation_id: int, key: ConversationKey) -> None:
        """Run the conversation's pending turns (the desk's agent replies use it)."""
        self._schedule(_Work(conversation_id, key))

    async def agent_replies_delivered(self, conversation_id: int, key: ConversationKey) -> bool:
        """Wait until the agent replies recorded in the conversation so far were delivered,
        here or by the worker that holds its turn lease (the desk's give-back comes after
        them: applied at once, it reached the visitor and the history before the replies
        its agent sent first). False: given up once the newest reply is not delivered within
        `delivery_grace_s` plus `lock_ttl_s` (another worker's answer holds the conversation
        past its grace, a turn held up here, the database away), or at once where this
        worker is stopping (it starts no turn then: the wait held its drain), or as soon as
        its stop begins during the wait (a give-back the desk applies in the background is then
        applied while the help desks are still reached, not lost with the worker). Bounded
        here: `wait_answered` waits on while the database is away, as the console must, and
        held the give-back (an agent's request, a help desk's webhook) for the whole outage."""
        s = self._settings
        while True:
            if self._closing:  # a stop: no turn starts here now, another worker's sweep runs them
                return False
            pending = await self._store.pending(conversation_id, PENDING_PAGE)
            replies = [m.id for m in pending if m.kind is MessageKind.AGENT]
            if not replies:
                return True
            self.schedule(conversation_id, key)  # their turn may never have been scheduled
            last = Recorded(replies[-1], conversation_id, is_new=False)
            try:
                async with asyncio.timeout(s.delivery_grace_s + s.lock_ttl_s):
                    if not await self._unless_closing(self.wait_answered(last)):
                        return False
            except TimeoutError:
                return False

    async def _unless_closing(self, waiting: Coroutine[Any, Any, bool]) -> bool:
        """`waiting`'s answer, or False once this worker's stop begins (drain)."""
        answer = asyncio.ensure_future(waiting)
        closing = asyncio.ensure_future(self._closing_now.wait())
        try:
            await asyncio.wait({answer, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, closing):
                task.cancel()
            await asyncio.gather(answer, closing, return_exceptions=True)
        return False if answer.cancelled() else answer.result()

    def turns_running(self) -> int:
        """Conversations running turns in this worker now (at most max_turns)."""
        return len(self._running)

    def turns_waiting(self) -> dict[str, int]:
        """Conversations waiting for a place to run their turns: `new` (brought by a new
        message, an agent's reply) and `backlog` (found by the recovery or the sweep)."""
        return {"new": len(self._waiting), "backlog": len(self._queued)}

    async def submit(
        self, incoming: Incoming, *, limited: bool | None = None, max_chars: int | None = None
    ) -> Recorded:
        """Record the message and schedule its conversation. Safe to call twice. `limited`:
        whether the sender is over the rate limit, where the caller already counted it (the
        text may then be the caller's stub). `max_chars`: the size limit, where the caller
        checked the text against a cap of its own (a document's text), if it is larger."""
        # First of all: a lone surrogate (a JSON escape, a byte no codec took) fails every
        # encoding to UTF-8, the tokenizer request's before the database's.
        incoming = storable_incoming(incoming)
        kind = MessageKind.CHAT
        limit = max(self._size_limit(incoming.text), max_chars or 0)
        too_long = len(incoming.text) > limit
        if too_long:  # answered with one sentence; its text is not kept, its size is
            stub = not_kept(f"{len(incoming.text)} characters", f"over the size limit of {limit}")
            incoming = dataclasses.replace(incoming, text=stub)
        if too_long or parse_command(incoming.text) is not None:
            kind = MessageKind.COMMAND
        # A stub already: this method's own, or the caller's. A user's text that only looks
        # like one is replaced like any other.
        stubbed = too_long or (limited is True and _is_stub(incoming.text))
        if limited is None:
            limited = await self.over_rate_limit(incoming)
        if limited:  # kept as a stub: a flood must not fill the database with its text
            kind = MessageKind.LIMITED
            if not stubbed:
                stub = not_kept(f"{len(incoming.text)} characters", "over the rate limit")
                incoming = dataclasses.replace(incoming, text=stub)
        # Only a chat message goes into a prompt as itself: the others get the estimate, not a
        # tokenizer call (a /tokenize request on a vLLM server without backend.tokenizer).
        if kind is MessageKind.CHAT:
            tokens = await self._count(incoming.text)
        else:
            tokens = estimate_tokens(incoming.text)
        recorded = await self._store.record_incoming(incoming, kind=kind, token_count=tokens)
        try:
            if recorded.is_new and await self._deleted_before_recorded(incoming):
                if self._marks_edits(incoming):  # an edit's mark, and its text, read by none
                    await self._deletions.delete(keys.edited(incoming.idempotency_key))
                # Withdrawn: its turn finds nothing pending.
                return dataclasses.replace(recorded, withdrawn=True)
            if recorded.is_new and kind is MessageKind.CHAT:
                await self._edited_before_recorded(incoming)
            if recorded.is_new and kind is MessageKind.COMMAND and stops_a_reply(incoming.text):
                await self._stop_anywhere(recorded, by=_stopper(incoming))
            # A repeat's too, before it schedules the turn that reads it: its first delivery
            # may be between recording the message and this (a replay of a Discord command
            # while its first delivery still ran: the turn found no replied-to text and
            # summarised nothing), or have died there.
            if self._skills is not None:
                await self._skills.remember(recorded.message_id, incoming)
        finally:
            # A repeat is scheduled too: if the first delivery was recorded but its turn never
            # ran (the process died after acknowledging it), the repeat gets it answered. If it
            # was answered, the turn finds nothing pending; SQL never records a second answer.
            self._schedule(_Work(recorded.conversation_id, incoming.key))
        return recorded

    async def edit(
        self,
        incoming: Incoming,
        *,
        observed: bool = False,
        edited_at: datetime | None = None,
        document: str = "",
        max_chars: int | None = None,
        over_limit: bool | None = None,
    ) -> bool:
        """A message its sender edited: `incoming` carries the new text, under the original
        message's idempotency key. Its recorded text is replaced (`Store.edit`), never
        answered again: a message still pending is answered once, with the new text (its
        turn reads it from SQL); one answered, or in a turn that runs, keeps its answer, and
        the old text leaves the history and, as for a redaction (`redact`), the cached
        context. An edit over the size limit, or into a command (never run from an edit), is
        recorded as the stub a new message over the limit gets. `observed`: a group message
        not for the bot (kept where the chat opted in; counted by estimate, and not marked).
        `edited_at`: the edit's time by the platform's clock: an edit older than the one the
        message (or the mark) holds changes nothing, whichever is handled last (two workers,
        an update delivered late). `document`: the name of the document the message carries,
        whose caption (`incoming.text`) was edited: the caption is the question about the
        document, which replaces the question the message was recorded with (its default
        where the caption is gone, as when first sent: `document_question`); the document's
        text, fenced after it, stays. `max_chars`: the size limit where the new text holds a
        document's, read again (Intake.edit_document). `over_limit`: whether the sender is
        over their limit of edits, where the caller counted this one (`over_edit_limit`).
        True when a recorded message took the new text.

        Marked first (for DELETION_MARK_TTL_S), as a deletion is, where the platform's sink
        reads the marks (`TellsEdits`): a message recorded after this looked takes the edit
        as it is recorded (`_edited_before_recorded`). The mark holds the new text: it is
        removed once a recorded message took it."""
        incoming = storable_incoming(incoming)
        if edited_at is not None:  # one clock: SQL's, the mark's
            edited_at = (
                edited_at.astimezone(UTC) if edited_at.tzinfo else edited_at.replace(tzinfo=UTC)
            )
        text = document_question(incoming.text, document) if document else incoming.text
        # Only the question, where it is a document's: its text follows, fenced, as recorded.
        question_only = bool(document)
        # A document's caption has the same cap; a document's text, read again, its own.
        limit = max(self._settings.max_message_chars, max_chars or 0)
        if len(text) > limit:
            text = not_kept(f"{len(text)} characters", f"over the size limit of {limit}")
            question_only = False
        elif parse_command(text) is not None:
            text = not_kept(f"{len(text)} characters", "edited into a command")
            question_only = False
        key = incoming.idempotency_key
        estimate = observed
        # Edits have a limit of their own, as many as messages (a repeated event counted
        # once), apart from the messages' (a user fixing typos keeps every question); over
        # it, the old text still leaves, for a stub that needs no tokenizer call. An edit
        # into a command or over the size limit counts too: each is a write all the same.
        if over_limit is None:
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            over_limit = await self.over_edit_limit(incoming, digest)
        if over_limit:
            text = not_kept(f"{len(incoming.text)} characters", "over the rate limit")
            estimate = True
            question_only = False
        marked = not observed and self._marks_edits(incoming)
        if marked:
            mark = _edit_mark(text, edited_at, question_only=question_only)
            if edited_at is None:
                await self._deletions.set(keys.edited(key), mark, DELETION_MARK_TTL_S)
            else:  # not over a newer edit's mark, also one another worker writes at once
                order = edited_at.strftime("%Y-%m-%dT%H:%M:%S.%f")  # UTC: sorts as it is
                await self._deletions.set_newer(keys.edited(key), mark, order, DELETION_MARK_TTL_S)
        edit = functools.partial(
            self._apply_edit, key, text, question_only=question_only, estimate=estimate,
            edited_at=edited_at,
        )  # fmt: skip
        replaced = await edit()
        if marked and not replaced and await self._store.recorded([key]):
            # Recorded already, with this text (a repeated event, an edit of the formatting
            # only), as what is not edited (a command, a stub), or with a newer edit: the
            # mark would wait for a record that never comes, the text in the cache for a
            # day. Looked at again, as the message may have been recorded since the first
            # look, before the mark.
            replaced = await edit()
            await self._deletions.delete(keys.edited(key))
        elif marked and replaced:  # the message has it: the text is not kept in the cache
            await self._deletions.delete(keys.edited(key))
        return replaced

    async def _apply_edit(
        self,
        idempotency_key: str,
        text: str,
        *,
        question_only: bool,
        estimate: bool,
        edited_at: datetime | None,
    ) -> bool:
        """`text` into the recorded message; `question_only`: a document's new question, put
        before the document's text the message holds (a message without one, kept chatter
        of a group, takes it whole). Nothing where no message is recorded: a document's
        question alone must never take the place of its text."""
        if question_only:
            stored = await self._store.message_by_key(idempotency_key)
            if stored is None:
                return False
            text = with_document_of(stored.content, text)
        return await self._replace_text(idempotency_key, text, estimate=estimate,
                                        edited_at=edited_at)  # fmt: skip

    async def _replace_text(
        self, idempotency_key: str, text: str, *, estimate: bool, edited_at: datetime | None
    ) -> bool:
        tokens = estimate_tokens(text) if estimate else await self._count(text)
        conversation_id = await self._store.edit(idempotency_key, text, tokens, edited_at)
        if conversation_id is None:
            return False
        await self._forget_window(conversation_id)
        return True

    def _marks_edits(self, incoming: Incoming) -> bool:
        sink = self._traits_of(incoming.key.platform).tells_edits
        return sink is not None and sink.edits_marked()

    async def _edited_before_recorded(self, incoming: Incoming) -> None:
        """A message its sender edited before it was recorded: the edit found nothing and
        left its mark (`edit`), read here after the record: whichever comes second finds the
        other's work, and the message's turn reads the new text."""
        if not self._marks_edits(incoming):
            return
        mark = keys.edited(incoming.idempotency_key)
        value = await self._deletions.get(mark)
        if value is None:
            return
        text, edited_at, question_only = _read_edit_mark(value)
        if question_only:  # the document's text is the one just recorded
            text = with_document_of(incoming.text, text)
        if await self._replace_text(
            incoming.idempotency_key, text, estimate=False, edited_at=edited_at
        ):
            log.info("%s: a message edited before it was recorded took its edit", incoming.key)
        await self._deletions.delete(mark)  # recorded: no later record looks for it

    async def _deleted_before_recorded(self, incoming: Incoming) -> bool:
        """A message deleted on a platform that tells deletions before it was recorded (its
        document still downloading, its text still being counted): the deletion event found
        nothing to withdraw and left its mark (`mark_deleted`), read here: the message is
        withdrawn, never answered. The event marks before it looks, and this reads after the
        record: whichever comes second finds the other's work."""
        told = self._traits_of(incoming.key.platform).tells_deletions is not None
        if not told or not incoming.platform_message_id:
            return False
        if await self._deletions.get(keys.deleted(incoming.idempotency_key)) is None:
            return False
        withdrawn = await self._store.withdraw(incoming.key, incoming.platform_message_id)
        if withdrawn:
            log.info("%s: a message deleted before it was recorded withdrawn", incoming.key)
        return withdrawn

    async def observe(self, incoming: Incoming) -> Recorded | None:
        """Keep a group message that is not for the bot, where the chat opted in (/keep on):
        recorded for "what did I miss" summaries, never answered, never in the context.
        None, and nothing written, where the chat does not keep its messages."""
        incoming = storable_incoming(incoming)
        if self._skills is None:
            return None
        conversation_id = await self._store.conversation_id(incoming.key)
        if conversation_id is None or not await self._skills.keeps_messages(conversation_id):
            return None
        tokens = estimate_tokens(incoming.text)  # never in a prompt as itself: no tokenizer call
        return await self._store.record_incoming(
            incoming, kind=MessageKind.OBSERVED, token_count=tokens
        )

    async def move_chat(self, platform: str, old_chat_id: str, new_chat_id: str) -> None:
        """A chat that has a new id on its platform keeps its conversations (history,
        settings, what it kept): see Store.move_chat. Where the new id has a conversation
        already (its first message came before the move was known), the old one is merged
        into it (Store.merge_chat) under the old one's turn lease, as its next turn: after
        the turn in flight, if any, here or on another worker (never beside it: its answer
        would be recorded where its questions no longer are, and they answered again). Its
        pending messages are answered then, once, in the new conversation."""
        moved = await self._store.move_chat(platform, old_chat_id, new_chat_id)
        if moved:
            log.info("%s chat %s is now %s: its conversation moved", platform, old_chat_id,
                     new_chat_id)  # fmt: skip
            return
        old_key, new_key = (
            ConversationKey(platform, old_chat_id),
            ConversationKey(platform, new_chat_id),
        )
        old = await self._store.conversation_id(old_key, fresh=True)
        new = await self._store.conversation_id(new_key, fresh=True)
        if old is None or new is None or old == new:
            return
        self._merges[old] = (new, new_key)
        self._schedule(_Work(old, old_key))

    async def _merge(self, work: _Work, lease: TurnLease) -> None:
        """The merge `move_chat` left for the conversation's lease, held now."""
        new, new_key = self._merges[work.conversation_id]
        unfinished = lease.unfinished
        if unfinished is not None and unfinished.owner != self._owner:
            alive = holder_alive(
                self._liveness, unfinished, grace_s=self._settings.delivery_grace_s
            )
            if await alive:
                raise Superseded  # its worker records that answer first; merged after
        if not await self._store.merge_chat(lease, work.conversation_id, new):
            raise Superseded  # the lease was lost: merged once it is taken again
        del self._merges[work.conversation_id]
        self._merge_failures.pop(work.conversation_id, None)
        log.info("%s is now %s: its conversation merged into the one there", work.key, new_key)
        for cid in (work.conversation_id, new):  # what either cached is stale
            await self._forget_window(cid)
            await self._cache.delete(keys.chat_prefs(cid))
            await self._cache.delete(keys.handoff(cid))
        self._schedule(_Work(new, new_key))  # its pending messages now (the old one's too)

    async def mark_deleted(self, idempotency_key: str) -> None:
        """A message deleted on the platform, marked (for DELETION_MARK_TTL_S) before its
        deletion event looks for it: a message recorded after the event looked (a document
        still being read as it was deleted) is withdrawn as it is recorded (`submit`), and
        an answer recorded after is redacted by its turn (TurnDelivery._redact_if_deleted)."""
        await self._deletions.set(keys.deleted(idempotency_key), b"1", DELETION_MARK_TTL_S)

    async def redact(self, idempotency_key: str, *, marked: bool = False) -> bool:
        """A message its sender deleted after it was answered (or kept): its text is replaced
        in the history, and its conversation's cached context, which still holds it, is
        dropped. True when a recorded message was redacted.

        A turn of the conversation in flight holds the window it loaded before, and writes
        it back as it ends. Shared in Redis, that window is stale by the count of redactions
        SQL raised with the text (ContextLoader), whichever worker wrote it. In process a
        window is trusted as this process left it: a turn in flight here drops it again once
        it is done (`_turn_or_give_up`). Neither waits for the turn, nor for its lease.

        The deletion is marked first (for DELETION_MARK_TTL_S): an answer deleted in the
        chat before it was recorded is not found here, and is redacted by its turn once
        recorded (TurnDelivery._redact_if_deleted). `marked`: by the caller already
        (`mark_deleted`)."""
        if not marked:
            await self.mark_deleted(idempotency_key)
        conversation_id = await self._store.redact(idempotency_key)
        if conversation_id is None:
            return False
        await self._forget_window(conversation_id)
        return True

    async def _forget_window(self, conversation_id: int) -> None:
        """A recorded message's text replaced (redacted, edited): the conversation's cached
        window, which may hold the old text, is dropped (see `redact`)."""
        if conversation_id in self._workers:  # set before the drop: nothing runs in between
            self._redacted.add(conversation_id)
        await self._context.invalidate(conversation_id)

    async def _forget_pruned(self, pruned: Pruned) -> None:
        """After a prune: drop the cached windows of the conversations it pruned from, as for
        a redaction (`redact`). In Redis they are stale anyway, by the count of redactions
        the prune raised; in process a window is trusted as this process left it."""
        for conversation_id in pruned.conversations:
            if conversation_id in self._workers:
                self._redacted.add(conversation_id)
            await self._context.invalidate(conversation_id)

    async def recorded(self, incoming: Incoming) -> bool:
        """Whether a message with `incoming`'s idempotency key is recorded (one read)."""
        return bool(await self._store.recorded([incoming.idempotency_key]))

    async def over_edit_limit(self, incoming: Incoming, hit: str) -> bool:
        """Count an edit against its sender's limit of edits; True when it is over. `hit`
        names the edit (its text's digest): one counted before in the window, a repeated
        event, is not counted again."""
        edits = f"{sender_key(incoming)}:edits"
        return await self._over_limit(edits, f"{incoming.idempotency_key}:{hit}")

    async def edits_as_chat(self, incoming: Incoming) -> bool:
        """Whether a message with `incoming`'s key is recorded as a chat message, the kind
        whose text a document's edit, read again, replaces (Intake.edit_document): a stub over
        the rate limit or the size limit, or a command, is never edited, and a group's kept
        chatter only takes its caption."""
        stored = await self._store.message_by_key(incoming.idempotency_key)
        return stored is not None and stored.kind is MessageKind.CHAT

    async def over_rate_limit(self, incoming: Incoming) -> bool:
        """Count this message against its sender's limit; True when it is over. A message
        counted before in the window (a platform's repeat, or its retry after the database
        refused it) is not counted again: it keeps the answer its first delivery got."""
        return await self._over_limit(sender_key(incoming), incoming.idempotency_key)

    async def _over_limit(self, sender: str, idempotency_key: str) -> bool:
        s = self._settings
        if s.rate_limit_messages == 0:
            return False
        once = keys.counted(sender, idempotency_key)
        hits = await self._cache.count(keys.rate(sender), s.rate_limit_window_s, once=once)
        return hits > s.rate_limit_messages  # 0: the cache is unreachable, nothing counted

    def stop_reply(self, conversation_id: int, *, by: str | None = None) -> bool:
        """Stop the reply of the turn running in this process, if any, streaming or yet to
        begin (the model aborts it; the reply ends with the "stopped" note, or is the note
        alone): /stop, /reset, or an agent taking the conversation.
        `by`: only a reply to a message of this sender (a group member's /stop).
        True when the conversation's turn runs here (stopped, or not `by`'s to stop)."""
        streaming = self._streaming.get(conversation_id)
        if streaming is None:
            return False
        if by is None or by in streaming.senders:
            streaming.stop.set()
        return True

    async def _stop_anywhere(self, recorded: Recorded, *, by: str | None) -> None:
        """A /stop or /reset: the turn of its conversation may run on another worker (a
        webhook behind a load balancer), where the stop did nothing and the whole answer
        came, then "Stopped.". Where the workers share a cache, a turn not running here is
        told through a mark (`keys.stop`) that names the stop's message: the turn that
        answers earlier messages stops at its next look (`_stop_marks`)."""
        if not self.stop_reply(recorded.conversation_id, by=by):
            await self._leave_stop_mark(recorded.conversation_id, by, recorded.message_id)

    async def stop_turn(self, conversation_id: int) -> None:
        """An agent took the conversation: the bot's answer stops wherever it is written. On
        another worker (the help desk's webhook reached this one) through a mark naming the
        message after the conversation's last, so that only a turn running now stops."""
        if self.stop_reply(conversation_id) or self._liveness is None:
            return
        try:
            last = await self._store.history(conversation_id, 1)
        except StorageError as exc:  # the takeover stands; a turn elsewhere ends as it would
            log.warning("conversation %d: no stop left for other workers: %s", conversation_id,
                        type(exc).__name__)  # fmt: skip
            return
        if last:
            await self._leave_stop_mark(conversation_id, None, last[-1].id + 1)

    async def _leave_stop_mark(self, conversation_id: int, by: str | None, before: int) -> None:
        """Stop the turn of `conversation_id` that answers messages before `before`, where it
        runs on another worker sharing this one's cache (`_stop_marks` reads it)."""
        if self._liveness is not None:
            mark = keys.stop(conversation_id, by)
            await self._liveness.set(mark, str(before).encode(), STOP_MARK_TTL_S)

    async def _stop_marks(
        self, conversation_id: int, streaming: _Streaming, batch: Sequence[StoredMessage]
    ) -> None:
        """Every STOP_LOOK_S while the turn runs: a stop left for it by another worker (a
        mark naming a message later than the batch's, for anyone or for one of its
        senders) stops it as `stop_reply` would."""
        assert self._liveness is not None
        names = [keys.stop(conversation_id, None)]
        names += [keys.stop(conversation_id, sender) for sender in sorted(streaming.senders)]
        answered = max(m.id for m in batch)
        while not streaming.stop.is_set():
            await asyncio.sleep(STOP_LOOK_S)
            for name in names:
                mark = await self._liveness.get(name)
                if mark is not None and mark.isdigit() and int(mark) > answered:
                    streaming.stop.set()
                    return

    async def database_answers(self) -> bool:
        try:
            await self._store.ping()
        except Exception:  # StorageError, or the driver's own on a broken connection
            return False
        return True

    async def handle(self, incoming: Incoming) -> Recorded:
        """submit() and wait until the conversation has nothing pending in this process."""
        recorded = await self.submit(incoming)
        await self.wait_idle(recorded.conversation_id)
        return recorded

    async def wait_idle(self, conversation_id: int | None = None) -> None:
        """Wait until the conversation (None: every one) has no turn running or waiting for
        a place here. What waits when a stop begins is left pending, not waited for."""
        while True:
            running = self._workers.get(conversation_id) if conversation_id is not None else None
            if running is not None:
                tasks, until_first = [running], False
            elif conversation_id is None or self._waits(conversation_id):
                # Waiting ones start as running ones end (_turn_done, before this wakes).
                tasks, until_first = list(self._running), conversation_id is not None
            else:
                return
            if not tasks:
                return
            # asyncio.wait, not gather: a waiter that is cancelled (an adapter's task at a
            # stop) must not cancel the turns it waits for; the stop gives them their grace.
            await asyncio.wait(
                tasks, return_when=asyncio.FIRST_COMPLETED if until_first else asyncio.ALL_COMPLETED
            )

    def _waits(self, conversation_id: int) -> bool:
        return conversation_id in self._waiting or conversation_id in self._queued

    async def wait_answered(self, recorded: Recorded) -> bool:
        """Wait until `recorded` is answered, or give up: False after the time another
        worker's unfinished answer may hold the conversation (`delivery_grace_s`, then a
        lease's `lock_ttl_s`), or at a stop. A turn that found such an answer (a run that
        crashed while it showed one) ends at once and looks again every BUSY_RETRY_S: waiting
        for the turn alone took the message for answered, and the console moved on."""
        loop = asyncio.get_running_loop()
        s = self._settings
        give_up = loop.time() + s.delivery_grace_s + s.lock_ttl_s
        cid, mid = recorded.conversation_id, recorded.message_id
        while True:
            await self.wait_idle(cid)
            try:
                pending = await self._store.pending(cid, PENDING_PAGE)
            except StorageError as exc:
                # The database is away: the answer is recorded (and looked for) once it is
                # back, and the time another worker's answer may hold the chat counts from
                # then. Raised, it ended the console with the chat's next lines unread.
                log.debug("conversation %s: answer not looked for: %s", cid, exc)
                give_up = max(give_up, loop.time() + s.delivery_grace_s + s.lock_ttl_s)
                pending = None
            if pending is not None and not any(message.id == mid for message in pending):
                return True
            if loop.time() >= give_up or self._stopping.is_set():
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BUSY_RETRY_S):
                    await self._stopping.wait()

    async def recover(self) -> int:
        """Schedule every conversation that has messages left unanswered (e.g. by a crash)."""
        pending = await self._store.conversations_with_pending()
        for conversation_id, key in pending:
            self._schedule(_Work(conversation_id, key), backlog=True)
        return len(pending)

    async def aclose(self) -> None:
        """Let running turns finish (a turn is never cut in half by a clean shutdown); the
        conversations waiting for a place are not started, their messages left pending."""
        self._stopping.set()  # ends them even where a cancellation gets lost
        self._leave_waiting()
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)
        self._background.clear()
        await self.wait_idle()

    async def drain(self, timeout_s: float) -> bool:
        """Give the turns in flight `timeout_s` to finish, then stop the rest: their messages
        stay pending in SQL and are answered by another worker or the next start. True when
        every turn finished in time. It is a stop: from here on no turn is started (messages
        recorded during the grace, and agents' replies, wait for another worker's sweep or
        the next start)."""
        self._draining = self._closing = True
        self._closing_now.set()
        self._leave_waiting()
        if self._sweeper is not None:  # it would take up the turns this stop cuts
            self._sweeper.cancel()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while tasks := list(self._running):
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait(tasks, timeout=left)  # never cancels them (gather would)
            else:
                return True
            log.warning("stopping %d turn(s) still running after the shutdown grace", len(tasks))
            for task in tasks:
                task.cancel()
            # A turn's last write may wait on a database that does not answer: not for ever.
            await asyncio.wait(tasks, timeout=CANCELLED_TURNS_WAIT_S)
            return False
        finally:
            self._draining = False  # a program that goes on after it gets its errors said

    def _schedule(self, work: _Work, *, backlog: bool = False) -> None:
        """Run the conversation's pending turns once a place is free (see slots above):
        before the backlog's, unless `backlog` (found by recover() or the sweep, not brought
        by a message). A conversation that runs or waits already keeps its one place."""
        if self._closing:
            log.debug("conversation %s: stopping; left pending", work.key)
            return
        if work.key.platform not in self._sinks:
            # Not a platform this process serves (a deployment may split them across
            # workers): its turns are left pending for a worker that can show the answer.
            log.debug("conversation %s: no sink for its platform here; left pending", work.key)
            return
        if work.conversation_id in self._workers:
            self._again.add(work.conversation_id)
            if not backlog:
                self._brought.add(work.conversation_id)
            return
        if backlog:
            if work.conversation_id not in self._waiting:
                self._queued.setdefault(work.conversation_id, work)  # a second find: its place
        else:  # a new message: ahead of the backlog, or where its conversation waits already
            self._queued.pop(work.conversation_id, None)
            self._waiting.setdefault(work.conversation_id, work)
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start waiting conversations while places are free: a new message's first, the
        backlog's within its own bound, but one of the backlog's always (with two places or
        more). None once a stop began: they stay pending in SQL, for another worker's sweep
        or the next start."""
        if self._stopping.is_set() or self._closing:
            return
        while len(self._running) < self._max_turns:
            if self._queued and not self._backlog_running and self._max_turns > 1:
                # The backlog always has one place: under a flood that never ebbs, what the
                # recovery found (older than every new message) would otherwise never run.
                work, backlog = self._queued.pop(next(iter(self._queued))), True
            elif self._waiting:
                work, backlog = self._waiting.pop(next(iter(self._waiting))), False
            elif self._queued and len(self._backlog_running) < self._backlog_turns:
                work, backlog = self._queued.pop(next(iter(self._queued))), True
            else:
                return
            task = asyncio.create_task(self._worker(work), name=f"parley-conv-{work.key}")
            self._workers[work.conversation_id] = task
            self._running.add(task)
            if backlog:
                self._backlog_running.add(task)
            task.add_done_callback(functools.partial(self._turn_done, work.conversation_id))

    def _turn_done(self, conversation_id: int, task: asyncio.Task[None]) -> None:
        """A conversation's task ended (before wait_idle sees it end): its place goes to the
        next. Counted here, not as it leaves _workers: a message its conversation gets in
        between waits its turn, and never takes a place the ones waiting before it wait for."""
        if self._workers.get(conversation_id) is task:
            # Cancelled before it began (a stop without grace): _worker's cleanup never ran.
            del self._workers[conversation_id]
            self._again.discard(conversation_id)
            self._brought.discard(conversation_id)
        self._running.discard(task)
        self._backlog_running.discard(task)
        self._start_waiting()

    def _leave_waiting(self) -> None:
        """A stop: what waits for a place is not started; its messages stay pending in SQL."""
        self._waiting.clear()
        self._queued.clear()

    async def _worker(self, work: _Work) -> None:
        try:
            while True:
                self._again.discard(work.conversation_id)
                self._brought.discard(work.conversation_id)
                await self._drain(work)
                if work.conversation_id not in self._again:
                    return
                if work.conversation_id in self._brought and self._waiting:
                    # A new message, and others wait for a place: its turn goes behind them
                    # (see finally), or a conversation that never falls quiet (a busy group,
                    # a flooder under the rate limit) kept its place, and they waited, for as
                    # long as its messages came.
                    return
        except Superseded:  # another worker runs it now; look again soon, in case it died
            self._again.discard(work.conversation_id)  # looked at then, with the rest
            self._later(work)
        except StoppedWithProcess as exc:
            log.info("conversation %s: the model stopped with the process (%s); left pending",
                     work.key, exc.__cause__)  # fmt: skip
        except OutputAway:  # the sink's own doing, and it told: nothing to add
            log.debug("conversation %s: the platform's output is gone; left pending", work.key)
        except NotServedHere:
            log.warning("conversation %s: its platform is not served here; left pending", work.key)
        except (StorageError, TimeoutError) as exc:
            # The database is unreachable, or another worker held the lease too long: the
            # messages stay pending, and the sweep (or the next message) tries again.
            log.warning("conversation %s: turn not run: %s", work.key, exc)
            await self._context.invalidate(work.conversation_id)
            if work.conversation_id in self._merges:  # no sweep looks for a merge: again
                self._later(work)
        except Exception:
            # Messages stay pending in SQL; the next submit or recover() retries them. The
            # cached window may be ahead of or behind SQL now: drop it.
            log.exception("conversation %s: turn failed, left pending", work.key)
            await self._context.invalidate(work.conversation_id)
            if work.conversation_id in self._merges:  # no sweep looks for a merge
                self._merge_failed(work)
        finally:
            del self._workers[work.conversation_id]
            self._brought.discard(work.conversation_id)
            self._redacted.discard(work.conversation_id)  # no turn left to write a window
            if work.conversation_id in self._again:
                # A message came while the turn failed, or others wait for a place: it is run
                # as one that came just after (its submit counted on this task); left, it
                # waited for the sweep.
                self._again.discard(work.conversation_id)
                self._schedule(work)

    def _merge_failed(self, work: _Work) -> None:
        """A merge that raised: tried again later, `max_turn_attempts` times in all, then
        given up (the old conversation's messages answered where they are), never retried
        for good."""
        cid = work.conversation_id
        failures = self._merge_failures.get(cid, 0) + 1
        if failures < self._settings.max_turn_attempts:
            self._merge_failures[cid] = failures
            self._later(work)
            return
        self._merge_failures.pop(cid, None)
        _new, new_key = self._merges.pop(cid)
        log.error("%s: its merge into %s failed %d times; given up", work.key, new_key, failures)

    def _later(self, work: _Work) -> None:
        asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._schedule, work)

    async def _drain(self, work: _Work) -> None:
        if work.key.platform not in self._sinks:  # checked at scheduling; this is the guard
            raise NotServedHere(work.key.platform)
        s = self._settings
        lease = self._store.turn_lease(
            work.conversation_id, self._owner, ttl_s=s.lock_ttl_s, wait_s=s.lock_wait_s,
            pending_limit=PENDING_PAGE,
        )  # fmt: skip
        # One read of the pending messages per lease, with the take itself. Nothing needs a
        # second look afterwards: what this process records meanwhile sets _again (see
        # _worker), and what another worker records is answered by that worker once it gets
        # the lease.
        async with lease as held:
            if work.conversation_id in self._merges:
                await self._merge(work, held)
            else:
                await self._run_pending(work, held)

    async def _run_pending(self, work: _Work, lease: TurnLease) -> None:
        cid = work.conversation_id
        unfinished = lease.unfinished  # read with the lease, in the same statement
        state = lease.state  # likewise; current for the first turn only
        page = lease.pending  # likewise: the first page of pending messages
        # Whether the turns' parts open with their senders' labels (counted when merging):
        # a conversation is marked shared by its messages, before a lease takes them.
        labelled = state is not None and self._context.labelled(state)
        if unfinished is not None and unfinished.owner != self._owner:
            alive = holder_alive(
                self._liveness, unfinished, grace_s=self._settings.delivery_grace_s
            )
            if await alive:
                raise Superseded  # its worker records it; this one looks again soon
        while True:
            pending = page if page is not None else await self._store.pending(cid, PENDING_PAGE)
            page = None
            resumed: list[StoredMessage] = []
            if unfinished is not None:
                first, last = unfinished.first_id, unfinished.last_id
                resumed = [m for m in pending if first <= m.id <= last]
                pending = [m for m in pending if not first <= m.id <= last]
                if not resumed:  # its messages were settled otherwise (withdrawn)
                    await self._store.end_delivery(cid, unfinished.epoch, abandon=False)
            if resumed:
                log.info(
                    "conversation %s: finishing an answer its worker left unrecorded", work.key
                )
            turns = [(resumed, unfinished)] if resumed else []
            turns += [(batch, None) for batch in self._batches(pending, labelled=labelled)]
            unfinished = None
            for batch, replacing in turns:
                turn = TurnDelivery(
                    self._store, lease, cid, batch, replacing=replacing, state=state,
                    retry_s=self._settings.record_retry_s, deletions=self._deletions,
                )  # fmt: skip
                state = None
                with observed_turn(self.observer, work.key, batch, self._router):
                    await self._turn_or_give_up(work, batch, turn)
            if len(pending) + len(resumed) < PENDING_PAGE:
                return

    async def _turn_or_give_up(
        self, work: _Work, batch: list[StoredMessage], turn: TurnDelivery
    ) -> None:
        """A turn; when it fails, its messages stay pending for another try, until they have
        failed `max_turn_attempts` times: then they get the one-sentence apology and are
        settled, so that a message that always fails is never run again at every start."""
        token = _TURN.set(turn)
        try:
            await self._turn(work, batch)
        except Superseded:
            note(outcome="deferred")  # another worker's now
            raise
        except NotServedHere:
            note(outcome="deferred")  # e.g. OutputAway: run again once it can be shown
            # Begun and nothing shown: cleared for the next try; a piece noted (the web chat's
            # answer, which may have landed): abandoned, finished on its own next time.
            await turn.settle_failure()
            raise
        except Exception:
            await turn.settle_failure()
            attempts = await self._store.count_attempt([m.id for m in batch])
            if attempts < self._settings.max_turn_attempts:
                raise
            log.exception("conversation %s: turn failed %d times; apologising", work.key, attempts)
            await self._context.invalidate(work.conversation_id)
            apology = await self._localizer(batch[-1])(phrases.GENERIC)
            _TURN.set(turn.again())
            try:
                await self._deliver(work.key, once(apology), batch)
            except Superseded:
                raise
            except Exception as exc:  # the platform cannot take it either: settle it anyway
                log.warning("conversation %s: apology not delivered: %s", work.key, exc)
            await self._record_aside(work, batch, apology)
        finally:
            _TURN.reset(token)
            await turn.writes_settled()  # none outlives its turn (its signals, see begin)
            if work.conversation_id in self._redacted:
                # A message was redacted during the turn: the window it wrote (loaded before)
                # may hold the text. Dropped before the next turn loads it.
                self._redacted.discard(work.conversation_id)
                await self._context.invalidate(work.conversation_id)

    def _batches(
        self, pending: Sequence[StoredMessage], *, labelled: bool = False
    ) -> list[list[StoredMessage]]:
        """Turns, in order: a command alone; chat messages of one sender in a row merged (or
        one each, "queue"), as far as the context budget takes them, their labels included
        where `labelled` (a burst of long messages merged past it was refused whole as too
        long, the newest included); messages over the rate limit merged, so a flood gets one
        answer. In a group two people's messages are never one turn: one's text would steer
        the answer to the other's question, the answer would reply to the last of them only,
        and count to that one's budget."""
        batches: list[list[StoredMessage]] = []
        budget = self._context.budget_tokens
        for message in pending:
            last = batches[-1][-1] if batches else None
            merge = (
                last is not None
                and last.user_id == message.user_id
                and last.kind is message.kind
                and (
                    message.kind is MessageKind.LIMITED
                    or (
                        message.kind is MessageKind.CHAT
                        and self._settings.burst == "merge"
                        and _user_turn([*batches[-1], message], labelled=labelled)[1] <= budget
                    )
                )
            )
            if merge:
                batches[-1].append(message)
            else:
                batches.append([message])
        return batches

    async def _turn(self, work: _Work, batch: list[StoredMessage]) -> None:
        traits = self._traits_of(work.key.platform)
        if traits.reachable is not None:  # OutputAway: nothing can be shown now; nothing is run
            await traits.reachable.ensure_reachable(work.key)
        turn = _TURN.get()
        if turn.pieces and traits.keeps_answers is not None:  # an earlier attempt showed some
            shown = await traits.keeps_answers.shown_answer(work.key, turn.pieces)
            if shown is not None:  # and completed it: recorded as the user saw it
                await self._record_shown(work, batch, shown)
                return
        if batch[0].kind is MessageKind.LIMITED:
            await self._rate_limited(work, batch)
            return
        if batch[0].kind is MessageKind.AGENT:  # an agent's words: no budget of the customer's
            await self._agent_turn(work, batch)
            return
        # Every model call of the turn (chat, skills, summaries) counts to the sender's budget.
        async with self._budgets.turn(work.key, batch[-1].user_id, self._localizer(batch[-1])):
            with self._stoppable(work, batch):
                await self._dispatch(work, batch)

    @contextlib.contextmanager
    def _stoppable(self, work: _Work, batch: Sequence[StoredMessage]) -> Iterator[asyncio.Event]:
        """The turn's stop (/stop, /reset: see submit), from its start: one sent while the
        turn made its first model calls (the intent check, the summary of older turns),
        before its answer streamed, found nothing to stop and was lost (the whole answer
        came, then "Stopped."). A stop set by then ends the answer before it begins."""
        running = self._streaming.get(work.conversation_id)
        if running is not None:  # the turn's own, set at its start: an answer within it
            yield running.stop
            return
        streaming = _Streaming(asyncio.Event(), {m.user_id for m in batch})
        self._streaming[work.conversation_id] = streaming
        looking = None
        if self._liveness is not None:  # other workers may take this conversation's /stop
            marks = self._stop_marks(work.conversation_id, streaming, batch)
            looking = asyncio.create_task(marks, name="parley-stop-marks")
        try:
            yield streaming.stop
        finally:
            self._streaming.pop(work.conversation_id, None)
            if looking is not None:
                looking.cancel()

    async def _dispatch(self, work: _Work, batch: list[StoredMessage]) -> None:
        signals, said = TurnSignals(), set[str]()
        if batch[0].kind is MessageKind.COMMAND:  # /ask's "I don't know" counts too
            answer = await self._command(work, batch[0], said)
            if I_DONT_KNOW not in said or not await self._handed_off(
                work, batch, answer, signals, said
            ):
                await self._answer(work, batch, answer)
            return
        if self._handoff is not None:
            status = await self._handoff_status(work)
            if status.state is HandoffState.WAITING:
                batch = await self._owed_handoff_sentence(work, batch)
                if not batch:
                    return
            if status.state is not HandoffState.BOT:  # a person answers: recorded, not answered
                await self._handoff.forward(work.conversation_id, work.key, status, batch)
                await self._record_aside(work, batch, "")
                return
        routed = await self._route(work, batch, signals, said)
        if await self._handed_off(work, batch, routed, signals, said):
            return
        if routed is not None:  # a skill took the plain message (intent, auto-translate)
            note(skill="intent")
            await self._answer(work, batch, routed)
        elif self._backend is None:
            say = self._localizer(batch[-1])
            await self._reply_once(work, batch, await say(self._no_model(work.key)))
        else:
            await self._chat(work, batch, self._backend)

    async def _handoff_status(self, work: _Work) -> HandoffStatus:
        """Who has the conversation. The lease's first turn has it from the take (its facts):
        no round trip. Not the bot's as of the take: read again from SQL (rare), so that a
        person's giving it back since does not leave this message unanswered."""
        assert self._handoff is not None
        known = _TURN.get().state
        status, _ = await self._handoff.status(work.conversation_id, known)
        if status.state is not HandoffState.BOT and known is not None:
            status, _ = await self._handoff.status(work.conversation_id, fresh=True)
        return status

    async def _rate_limited(self, work: _Work, batch: list[StoredMessage]) -> None:
        """One sentence per conversation and rate window; the messages over the limit after
        it are marked answered without a word (a flood must not become a flood of replies).
        Not a word where the help desk is the platform (`DeskHeld`: Chatwoot) while a person
        has the conversation, or one was asked for: the bot told a customer writing fast to
        the agent "I skipped this one", in the agent's conversation, of a message the agent
        had read."""
        desk_held = self._traits_of(work.key.platform).desk_held
        if (
            desk_held
            and self._handoff is not None
            and (await self._handoff_status(work)).state is not HandoffState.BOT
        ):
            await self._record_aside(work, batch, "")
            return
        key = keys.rate_told(work.conversation_id)
        told = await self._cache.count(key, self._settings.rate_limit_window_s)
        if told <= 1:  # 0: the cache is unreachable; telling twice beats not telling
            say = self._localizer(batch[-1])
            await self._reply_once(work, batch, await say(phrases.RATE_LIMITED))
            return
        await self._record_aside(work, batch, "")

    def _size_limit(self, text: str) -> int:
        parsed = parse_command(text)
        command = self._router.get(parsed[0]) if parsed is not None else None
        if command is not None and command.max_chars is not None:
            return command.max_chars  # commands that take pasted text allow more
        return self._settings.max_message_chars

    async def _command(
        self, work: _Work, message: StoredMessage, said: set[str] | None = None
    ) -> Answer:
        parsed = parse_command(message.content)
        say = self._localizer(message)
        if (oversized := _SIZE_STUB.match(message.content)) is not None:
            length, limit = (int(n) for n in oversized.groups())
            return await say(phrases.TOO_LONG, length=length, limit=limit)
        if parsed is None:  # recorded as a command, so this cannot happen; answer anyway
            return await self._router.help_text(say)
        name, args = parsed
        ctx = self._turn_context(work, message, args, said=said)
        try:
            return await self._router.dispatch(ctx, name)
        except BotError as exc:
            self._unless_stopping(exc)
            log.warning("command /%s failed: %s", name, exc)
            return await say(exc.user_message)

    def _turn_context(
        self,
        work: _Work,
        message: StoredMessage,
        args: str,
        signals: TurnSignals | None = None,
        said: set[str] | None = None,
    ) -> TurnContext:
        user = User(work.key.platform, message.user_id, message.user_display_name)
        say = self._localizer(message)
        turn = _TURN.get()
        known = turn.state  # the lease's first turn: the chat's facts, read with it
        facts = known.facts if known is not None and known.id == work.conversation_id else None
        return TurnContext(
            work.key, work.conversation_id, user, args, self._store, self._context,
            self._settings, message_id=message.id, collection=self._collection(work.key),
            say=say if said is None else _noting(say, said), signals=signals, facts=facts,
            quotes_kept=turn.quoting_kept,
        )  # fmt: skip

    def _system_prompt(self, key: ConversationKey) -> str:
        """The conversation's system prompt: its site's (support channel), else the core's."""
        sink = self._traits_of(key.platform).site_scoped
        own = sink.system_prompt_for(key) if sink is not None else None
        return own or self._settings.system_prompt

    async def _site_surplus(self, key: ConversationKey) -> int:
        """Tokens a site's own system prompt takes beyond the core's (0 without one)."""
        own, core = self._system_prompt(key), self._settings.system_prompt
        if own == core:
            return 0
        return max(0, await self._prompt_count(own) - await self._prompt_count(core))

    async def _prompt_count(self, prompt: str) -> int:
        """A system prompt's tokens, counted once per text (a site's prompt changes rarely)."""
        tokens = self._prompt_tokens.get(prompt)
        if tokens is None:
            tokens = await self._count(prompt)
            self._prompt_tokens.put(prompt, tokens)
        return tokens

    def _collection(self, key: ConversationKey) -> str:
        sink = self._traits_of(key.platform).site_scoped
        return sink.collection_for(key) if sink is not None else ""

    def _no_model(self, key: ConversationKey) -> str:
        """How to set a model is said at the operator's own console only: users elsewhere
        are never shown settings or paths."""
        if self._traits_of(key.platform).operator_facing:
            return phrases.NO_MODEL_SETUP
        return NoBackendConfigured.user_message

    async def _route(
        self,
        work: _Work,
        batch: list[StoredMessage],
        signals: TurnSignals | None = None,
        said: set[str] | None = None,
    ) -> Answer | None:
        if self._skills is None:
            return None
        text = merge_user_texts([m.content for m in batch])
        ctx = self._turn_context(work, batch[-1], text, signals, said)
        try:
            return await self._skills.route(ctx, text)
        except BotError as exc:
            self._unless_stopping(exc)
            log.warning("conversation %s: skill failed: %s", work.key, exc)
            return await self._localizer(batch[-1])(exc.user_message)

    async def _handed_off(
        self,
        work: _Work,
        batch: list[StoredMessage],
        routed: Answer | None,
        signals: TurnSignals,
        said: set[str],
    ) -> bool:
        """The handoff triggers, after routing (which may have filled `signals`): on one,
        the conversation waits for a person and the customer is told so in one sentence
        (after the bot's "I don't know", where that was the trigger). True: handed off."""
        if self._handoff is None:
            return False
        if batch[0].kind is MessageKind.COMMAND:  # commands run in every state
            status, _ = await self._handoff.status(work.conversation_id)
            if status.state is HandoffState.WAITING and isinstance(routed, str):
                # This command's turn handed off, and its sentence did not get out (the
                # platform was away): said now, after its answer, as then.
                asked = await self._handoff.handed_off_by(work.conversation_id, batch)
                if asked is not None:
                    sentence = phrases.say(phrases.HANDING_OFF, await self._language(batch[-1]))
                    await self._reply_once(work, batch, f"{routed}\n\n{sentence}")
                    return True
            if status.state is not HandoffState.BOT:
                return False
        if not self._handoff.reachable(work.key):
            # No help desk for this platform: no trigger can hand the conversation off, so the
            # message's sentiment is not read and no signal is kept (they serve the triggers
            # and the handoff's note only), a classifier run and a write saved per turn.
            if not self._handoff.asks_for_person(signals):
                return False  # the bot answers as usual
            log.info("conversation %s: a person was asked for, but no desk reaches it", work.key)
            # The "human" intent's answer promised a person: say there is none instead.
            await self._reply_once(work, batch, await self._localizer(batch[-1])(phrases.NO_PERSON))
            return True
        text = merge_user_texts([m.content for m in batch])
        unanswered = I_DONT_KNOW in said
        trigger = await self._handoff.assess(
            work.conversation_id, batch, text, signals, unanswered=unanswered,
            before_showing=_TURN.get().before_showing,
        )  # fmt: skip
        if trigger is None:
            return False
        language = await self._language(batch[-1])
        await self._handoff.hand_off(
            work.conversation_id, work.key, trigger, language, message_id=batch[-1].id
        )
        sentence = phrases.say(phrases.HANDING_OFF, language)
        if isinstance(routed, str) and unanswered:
            sentence = f"{routed}\n\n{sentence}"
        elif routed is not None and not isinstance(routed, str):
            aclose = getattr(routed, "aclose", None)
            if aclose is not None:
                await aclose()  # a skill's answer the customer will not get: abort its request
        await self._reply_once(work, batch, sentence)
        return True

    async def _owed_handoff_sentence(
        self, work: _Work, batch: list[StoredMessage]
    ) -> list[StoredMessage]:
        """While waiting for a person: when the turn that handed off is run again because its
        sentence did not get out (the platform was away: OutputAway), the sentence is said
        for the messages up to the one that asked; what is left of the batch (messages that
        came after) is returned, to be forwarded to the agent as usual."""
        assert self._handoff is not None
        trigger = await self._handoff.handed_off_by(work.conversation_id, batch)
        if trigger is None:
            return batch
        asked = [m for m in batch if m.id <= trigger.id]
        language = await self._language(trigger)
        await self._reply_once(work, asked, phrases.say(phrases.HANDING_OFF, language))
        return [m for m in batch if m.id > trigger.id]

    async def _agent_turn(self, work: _Work, batch: list[StoredMessage]) -> None:
        """Deliver an agent's reply (one message per turn) in the customer's language, with
        the sink told who speaks (sink.current_author); recorded as the answer to it."""
        if self._handoff is None:  # no desk in this process: settle it unseen
            await self._record_aside(work, batch, "")
            return
        message = batch[-1]
        status, language = await self._handoff.status(work.conversation_id)
        language = language or await self._customer_language(work.conversation_id)
        text, translated, author = await self._handoff.agent_reply(work.key, message, language)
        token = speaking(author)
        try:
            await self._reply_once(work, batch, text)
        finally:
            done_speaking(token)
        self._handoff.delivered(work.conversation_id, work.key, status, message, translated)

    async def _customer_language(self, conversation_id: int) -> str:
        """The language of the customer's newest message, where the handoff did not record
        one (an agent took the conversation over without a trigger)."""
        history = await self._store.history(conversation_id, CUSTOMER_LOOKBACK)
        for message in reversed(history):
            if message.role is Role.USER and message.kind is MessageKind.CHAT:
                return await self._language(message)
        return ""

    async def _answer(self, work: _Work, batch: list[StoredMessage], answer: Answer) -> None:
        if isinstance(answer, str):
            await self._reply_once(work, batch, answer)
        else:
            await self._reply_stream(work, batch, answer)

    async def _reply_stream(
        self, work: _Work, batch: list[StoredMessage], answer: AsyncIterator[str]
    ) -> None:
        """Stream a skill's answer, then record it out of the context (kind COMMAND). A
        failure before any text becomes its one-sentence message; after, a cut-off note."""
        parts: list[str] = []
        say = self._localizer(batch[-1])

        async def relay() -> AsyncGenerator[str, None]:
            try:
                async for delta in answer:
                    parts.append(delta)
                    yield delta
            except BotError as exc:
                self._unless_stopping(exc)
                log.warning("conversation %s: skill failed while streaming: %s", work.key, exc)
                if parts:
                    parts.append(await note_line(say, phrases.CUT_OFF))
                else:
                    parts.append(await say(exc.user_message))
                yield parts[-1]
            except Exception:
                # A bug (no BotError): went on through the platform's delivery, taken for the
                # platform failing, and the user got no answer, or text without its note.
                log.exception("conversation %s: skill failed while streaming", work.key)
                if parts:
                    parts.append(await note_line(say, phrases.CUT_OFF))
                else:
                    parts.append(await say(phrases.GENERIC))
                yield parts[-1]

        async def stopped() -> str:
            note = await note_line(say, phrases.STOPPED)
            parts.append(note if parts else note.lstrip())  # stopped before it began: alone
            return parts[-1]

        try:
            await self._relayed(work, relay(), batch, stopped)
        except (NotServedHere, Superseded):
            # NotServedHere: shown to nobody, left pending, not recorded as cut off.
            # Superseded: another worker took the answer over; it records its own.
            raise
        except Exception as exc:
            _delivery_failed(work.key, exc)
            parts.append(await note_line(say, phrases.CUT_OFF))
        finally:
            aclose = getattr(answer, "aclose", None)
            if aclose is not None:
                await aclose()  # a sink that stopped early leaves it open: abort the request
        await self._record_aside(work, batch, "".join(parts))

    async def _reply_once(self, work: _Work, batch: list[StoredMessage], text: str) -> None:
        """Deliver and record a reply that is complete up front; it stays out of the context."""
        await self._deliver(work.key, once(text), batch)
        await self._record_aside(work, batch, text)

    async def _record_shown(self, work: _Work, batch: list[StoredMessage], text: str) -> None:
        """Record the answer an earlier attempt at this delivery completed on the platform
        (KeepsAnswers): the user saw it, so it is the answer, and the model is not asked
        again. A chat message's answer goes into the context (rebuilt from SQL next turn);
        a command's stays out of it."""
        log.info("conversation %s: recording the answer an earlier attempt showed", work.key)
        chat = batch[0].kind is MessageKind.CHAT
        tokens = await self._count(text) if chat else estimate_tokens(text)
        kind = MessageKind.CHAT if chat else MessageKind.COMMAND
        await _TURN.get().record(
            text, kind=kind, token_count=tokens, retry_s=self._settings.record_retry_s
        )
        await self._context.invalidate(work.conversation_id)

    async def _record_aside(self, work: _Work, batch: list[StoredMessage], text: str) -> None:
        """Record the answer to `batch` out of the context (commands, skills, notices)."""
        retry_s = self._settings.record_retry_s
        turn = _TURN.get()
        kind = MessageKind.DIGEST if turn.quotes_kept else MessageKind.COMMAND
        await turn.record(text, kind=kind, token_count=0, retry_s=retry_s)

    async def _chat(self, work: _Work, batch: list[StoredMessage], backend: Backend) -> None:
        cid = work.conversation_id
        window = await self._context.load(cid, _TURN.get().state)
        user_text, user_tokens = _user_turn(batch, labelled=window.labelled)
        # The history budget (Parley._budget) leaves room for the core's system prompt only.
        room = user_tokens + await self._site_surplus(work.key)
        window = await self._context.fit(cid, window, room)
        say = self._localizer(batch[-1])
        reply = Collected(say, gone_with_stop=self._gone_with_stop)
        try:
            try:
                request = self._request(work, window, user_text)
                await self._stream(work, batch, backend, request, reply)
            except ContextTooLong:
                # Our count and the server's disagree: shrink once (roll over), try once more.
                log.info("conversation %s: context too long, shrinking once", work.key)
                window = await self._context.shrink(cid, window, room)
                request = self._request(work, window, user_text)
                await self._stream(work, batch, backend, request, reply)
        except BackendError as exc:  # only before the first delta; later ones end the relay
            self._unless_stopping(exc)
            log.warning("conversation %s: backend failed: %s", work.key, exc)
            note(outcome="failed")
            await self._reply_once(work, batch, await say(exc.user_message))
            return
        await self._record_chat(work, batch, window, user_text, user_tokens, reply)

    def _unless_stopping(self, exc: BotError) -> None:
        """A model out of reach once a stop began (BackendUnavailable: an engine in the
        process died, a server cannot be reached) is taken to have stopped with the process
        (StoppedWithProcess), not answered with its error sentence or a cut-off note. A
        refusal (a 400, a budget, a context too long) is still the answer."""
        if self._gone_with_stop(exc):
            raise StoppedWithProcess(str(exc)) from exc

    def _gone_with_stop(self, exc: BaseException) -> bool:
        return self._draining and isinstance(exc, BackendUnavailable)

    def _request(self, work: _Work, window: Window, user_text: str) -> GenerationRequest:
        return GenerationRequest(
            messages=window.messages(self._system_prompt(work.key), user_text),
            max_tokens=self._generation.max_tokens,
            temperature=self._generation.temperature,
            session_id=str(work.key),
        )

    async def _stream(
        self,
        work: _Work,
        batch: list[StoredMessage],
        backend: Backend,
        request: GenerationRequest,
        reply: Collected,
    ) -> None:
        """Stream one reply to the sink. /reset stops it (see submit); so does a sink that
        fails. Either way what was shown is kept, marked as cut off, and never re-sent."""
        relay = reply.relay(backend.stream(request))

        async def stopped() -> str:
            note = await note_line(reply.say, phrases.STOPPED)
            if not "".join(reply.parts).strip():  # stopped before it began (blanks are held)
                reply.parts.clear()
                note = note.lstrip()
            reply.cut_off(note)
            return reply.parts[-1]

        try:
            await self._relayed(work, relay, batch, stopped)
        except (BackendError, NotServedHere, Superseded):
            # NotServedHere: shown to nobody, left pending. Superseded: another worker took
            # the answer over (this process was paused past its lease); it records its own.
            raise
        except Exception as exc:
            if not _TURN.get().begun:
                # Nothing can have been shown (nothing is before the delivery's record): the
                # record failed or another worker has the conversation (Superseded). The
                # turn fails and its messages stay pending; nothing is recorded as answered.
                raise
            _delivery_failed(work.key, exc)
            reply.cut_off(await note_line(reply.say, phrases.CUT_OFF))
        finally:
            await relay.aclose()  # a sink that stopped early leaves it open: abort the request

    async def _relayed(
        self,
        work: _Work,
        chunks: AsyncGenerator[str, None],
        batch: Sequence[StoredMessage],
        stopped: Callable[[], Awaitable[str]],
    ) -> None:
        """Deliver a streamed answer (chat or skill) that /stop and /reset can end (see
        submit): the answer then ends with the note `stopped()` returns, so the platform shows
        what is recorded, and the request behind it is aborted."""
        with self._stoppable(work, batch) as stop:
            # Closed here whatever happens: a delivery that fails before its first chunk
            # (Superseded) leaves it unfinished, and its stop watcher pending.
            async with aclosing(until(stop, chunks, stopped)) as shown:
                await self._deliver(work.key, shown, batch)

    async def _record_chat(
        self,
        work: _Work,
        batch: list[StoredMessage],
        window: Window,
        user_text: str,
        user_tokens: int,
        reply: Collected,
    ) -> None:
        text = "".join(reply.parts)
        if reply.usage is not None:
            self.observer.tokens(work.key.platform, reply.usage)
        tokens = reply.usage.completion_tokens if reply.usage else await self._count(text)
        stored = await _TURN.get().record(
            text,
            kind=MessageKind.CHAT,
            token_count=tokens,
            retry_s=self._settings.record_retry_s,
            count=self._count,
        )
        if stored is None:
            log.warning("conversation %s: already answered elsewhere", work.key)
            await self._context.invalidate(work.conversation_id)
            return
        if stored.marked < len(batch) or _TURN.get().deleted_in_chat:
            # One was withdrawn meanwhile (deleted by its sender), or the answer was deleted in
            # the chat (recorded as its stub): the window would keep the text, so it is rebuilt
            # from SQL instead, which leaves it out.
            await self._context.invalidate(work.conversation_id)
            return
        turn_tokens = user_tokens + tokens + MESSAGE_OVERHEAD_TOKENS
        await self._context.append(
            work.conversation_id, window, Turn(user_text, text, turn_tokens, stored.id)
        )

    async def _deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], batch: Sequence[StoredMessage]
    ) -> None:
        sink = self._sinks.get(key.platform)
        if sink is None:  # detached meanwhile (see _schedule): the messages stay pending
            raise NotServedHere(key.platform)
        turn = _TURN.get()
        deletions = self._traits_of(key.platform).tells_deletions
        turn.answer_key = deletions.answer_key if deletions is not None else None
        # Recorded before anything is visible, while the model works on its first token: the
        # sink pulls the first chunk (which sends the request) as the record is written, and
        # gets that chunk only once the record is in (`_begun_first`).
        beginning = asyncio.create_task(turn.begin(), name=f"begin delivery {key}")
        stream = _begun_first(turn, beginning, chunks)
        if turn.shown_something:
            # A delivery taken over whose messages already show an answer (a dead worker's,
            # whole or half): the new one is shown once it is whole, each message edited once
            # to its final text. Streamed into them, the chat saw that answer cut back to its
            # first words, then growing again.
            stream = _whole(stream)
        token = showing(turn)
        try:
            # Threaded to the newest message it answers (a merged turn answers several).
            await sink.deliver(
                key, self._first_seen(stream), reply_to=batch[-1].platform_message_id
            )
            await asyncio.shield(beginning)  # an answer of no chunks at all is begun as well
        finally:
            done_showing(token)
            # Never cut off mid-statement; its failure, where it matters, was raised above.
            await asyncio.gather(asyncio.shield(beginning), return_exceptions=True)

    async def _first_seen(self, chunks: AsyncIterator[str]) -> AsyncGenerator[str, None]:
        """`chunks`, telling the observer when the first text goes to the platform."""
        async for chunk in chunks:
            scope = current_turn()
            if chunk and scope is not None and scope.first_token_at is None:
                self.observer.first_token(scope)
            yield chunk

    def _localizer(self, message: StoredMessage) -> Say:
        """say(sentence, **fields) in the language of `message`'s sender, looked up once and
        only when a sentence is said (most turns say none)."""
        found: list[str] = []

        async def say(sentence: str, **fields: object) -> str:
            if not found:
                found.append(await self._language(message))
            return phrases.say(sentence, found[0], **fields)

        return say

    async def _language(self, message: StoredMessage) -> str:
        if self._skills is None:
            return ""
        try:
            return await self._skills.language_of(message.id, message.content)
        except BotError as exc:  # the sentence still goes out, in English
            log.warning("language of message %d not found: %s", message.id, exc)
            return ""


@dataclass(frozen=True, slots=True)
class _SinkTraits:
    """What a sink declares (the runtime-checkable protocols of bot.conversation.sink), read
    once when it is attached: an isinstance against such a protocol looks up each of its
    members on the sink, 7-28 us a check, and a turn made about nine of them."""

    reachable: Reachable | None = None
    keeps_answers: KeepsAnswers | None = None
    site_scoped: SiteScoped | None = None
    tells_deletions: TellsDeletions | None = None
    tells_edits: TellsEdits | None = None
    operator_facing: bool = False
    desk_held: bool = False

    @classmethod
    def of(cls, sink: ReplySink) -> _SinkTraits:
        return cls(
            reachable=sink if isinstance(sink, Reachable) else None,
            keeps_answers=sink if isinstance(sink, KeepsAnswers) else None,
            site_scoped=sink if isinstance(sink, SiteScoped) else None,
            tells_deletions=sink if isinstance(sink, TellsDeletions) else None,
            tells_edits=sink if isinstance(sink, TellsEdits) else None,
            operator_facing=isinstance(sink, OperatorFacing),
            desk_held=isinstance(sink, DeskHeld),
        )


_NO_TRAITS = _SinkTraits()


def _noting(say: Say, said: set[str]) -> Say:
    """`say` that notes which sentences were said (the handoff counts "I don't know")."""

    async def noted(sentence: str, **fields: object) -> str:
        said.add(sentence)
        return await say(sentence, **fields)

    return noted


def _prompt_tokens(batch: Sequence[StoredMessage]) -> int:
    """What the messages of a turn take in its prompt, as the window counts them."""
    return sum(m.token_count + MESSAGE_OVERHEAD_TOKENS for m in batch)


def _user_turn(batch: Sequence[StoredMessage], *, labelled: bool) -> tuple[str, int]:
    """The turn's user message and its tokens, as the window counts them; `labelled` (a
    shared conversation): each sender's part after their label, which counts too."""
    if not labelled:
        return merge_user_texts([m.content for m in batch]), _prompt_tokens(batch)
    text, label_tokens = labelled_text([(m.user_display_name, m.content) for m in batch])
    return text, _prompt_tokens(batch) + label_tokens


def not_kept(what: str, reason: str) -> str:
    """What is recorded in place of a message whose text is not kept: its size and why."""
    return f"{STUB_MARK}{what} not kept, {reason}]"


def _is_stub(text: str) -> bool:
    """Whether `text` can be a stub a caller made (intake's, of a document over the limit)."""
    return text.startswith(STUB_MARK) and len(text) <= MAX_STUB_CHARS


def sender_key(incoming: Incoming) -> str:
    """Who sent a message, for per-user limits: the user id, or for a sender the platform
    does not identify (an anonymous group admin, a web visitor without an id) the chat."""
    who = incoming.user.user_id or f"chat:{incoming.key.chat_id}"
    return f"{incoming.key.platform}:{who}"


def _stopper(incoming: Incoming) -> str | None:
    """Whose reply a /stop or /reset may stop: in a group, a member's /stop stops only the
    answer to their own message (any member's stopped the answer another was being given);
    /reset, which in a group only its admins get through (bot.conversation.intake), and
    anything in a private chat stop any."""
    parsed = parse_command(incoming.text)
    if incoming.group and parsed is not None and parsed[0] == "stop":
        return incoming.user.user_id
    return None


def stops_a_reply(text: str) -> bool:
    """Whether `text` is a command that stops the reply being streamed (/stop, /reset)."""
    parsed = parse_command(text)
    return parsed is not None and parsed[0] in STOP_COMMANDS


async def _begun_first(
    turn: TurnDelivery, beginning: asyncio.Task[None], chunks: AsyncIterator[str]
) -> AsyncGenerator[str, None]:
    """`chunks`, the first one held back until `beginning` (the delivery's record) is done;
    its failure (Superseded, StorageError) ends the stream before anything is shown. Each
    chunk is handed on only while the answer is still this worker's (`may_show`)."""
    async for chunk in chunks:
        if not beginning.done():
            await asyncio.shield(beginning)  # a cancelled delivery must not cancel the record
        beginning.result()
        await turn.may_show()
        yield chunk


async def _whole(chunks: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """`chunks` handed on as one, once the last has come (nothing where there was none).
    What ends the stream early (the delivery's record failing, Superseded, the model's
    failure before its first text) still ends it before anything is shown."""
    async with aclosing(chunks):
        parts = [chunk async for chunk in chunks]
    if parts:
        yield "".join(parts)


def _delivery_failed(key: ConversationKey, exc: Exception) -> None:
    """A platform that failed while an answer was delivered: a service it needs out of reach
    (its network, Redis for the support event log) is one line naming the error's types, and
    Redis refusing redis.url since the start (a password changed under a running worker) one
    line saying what to fix; any other failure is a bug, logged whole."""
    refusal = next((r for each in causes(exc) if (r := redis_refusal(each))), None)
    if refusal is not None:
        log.error("conversation %s: the platform could not deliver: %s", key, refusal)
    elif is_outage(exc):
        log.warning(
            "conversation %s: the platform could not deliver (%s); the reply is kept, cut off",
            key,
            error_types(exc),
        )
    else:
        log.exception("conversation %s: the platform failed while delivering", key)


def document_question(caption: str, name: str) -> str:
    """What a document's message asks (its text follows, fenced): the caption, or where there
    is none, a summary of the document."""
    return caption.strip() or f"Please summarize this document ({name})."


def with_document_of(recorded: str, question: str) -> str:
    """`question` in place of the one before the document's text in `recorded` (a document's
    message: bot.conversation.intake); `question` alone where `recorded` holds none."""
    parts = split_fenced(recorded)
    return question if parts is None else f"{question}\n\n{parts[1]}"


# An edit's mark: "\0", "Q" where it is a document's question only (else "T"), the edit's
# time (ISO 8601, or nothing), a newline, then the edited text. A text never starts with NUL
# (made storable first): a mark without it (written before the time was kept) is the text.
def _edit_mark(text: str, edited_at: datetime | None, *, question_only: bool = False) -> bytes:
    moment = edited_at.isoformat() if edited_at is not None else ""
    return f"\0{'Q' if question_only else 'T'}{moment}\n{text}".encode()


def _read_edit_mark(value: bytes) -> tuple[str, datetime | None, bool]:
    """(the text, the edit's time, whether the text is a document's question only)."""
    decoded = value.decode()
    if not decoded.startswith("\0"):
        return decoded, None, False
    head, _, text = decoded[1:].partition("\n")
    try:
        moment = datetime.fromisoformat(head[1:]) if head[1:] else None
    except ValueError:  # not a time this code wrote: the edit is taken as the newest
        moment = None
    return text, moment, head[:1] == "Q"
