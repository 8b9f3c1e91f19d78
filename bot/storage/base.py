"""The storage and cache seams the conversation manager is written against.

`Store` is implemented once over SQLAlchemy (SQLite and PostgreSQL); `Cache`, a key-value
store with a read-through layer for objects, twice (memory and Redis). Who runs a
conversation's turns is decided by one locker, the Store's turn lease. The contract suites in
tests/ run every implementation through the same checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NamedTuple, Protocol, TypeVar

from bot.errors import StorageError
from bot.types import ConversationKey, Incoming, Role

T = TypeVar("T")

# What is recorded of an answer whose message was deleted in the chat while it was shown (a
# moderator: Telegram's "message to edit not found", Discord's Unknown Message): nobody saw
# the rest of it, and none of it is to reach a later prompt, /history or a summary.
ANSWER_DELETED_STUB = "[message: deleted in the chat]"
ANSWER_DELETED_STUB_TOKENS = 12  # at least what a tokenizer makes of it (as DELETED_STUB's)


class MessageKind(enum.StrEnum):
    CHAT = "chat"  # part of the model's context
    COMMAND = "command"  # /help and friends, and their answers: kept in history, not in context
    # A group message not addressed to the bot, kept (never answered) because the chat opted
    # in: read by "what did I miss" summaries only, not part of the context or of /history.
    OBSERVED = "observed"
    # A message over its sender's rate limit: answered with one sentence, never by the model.
    LIMITED = "limited"
    # A help-desk agent's reply (bot.handoff): pending like a user message until its turn has
    # delivered it to the customer (translated); kept as written, out of the context.
    AGENT = "agent"
    # An answer built from the OBSERVED messages (a "what did I miss" summary, which quotes
    # them): a COMMAND otherwise, deleted with them, and with the messages it answers, by
    # `Store.delete_observed` (/keep delete).
    DIGEST = "digest"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: Role
    kind: MessageKind
    content: str
    token_count: int
    created_at: datetime
    # For a user message: the id of the assistant message that answered it (None: pending;
    # 0: needs no answer, an OBSERVED message).
    answered_by: int | None = None
    user_display_name: str = ""
    # The platform's id of the inbound message ("" when the platform has none).
    platform_message_id: str = ""
    # The sender's platform user id ("" for the bot's own messages and unknown senders).
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class RecordedReply(StoredMessage):
    """A reply as `record_reply` stored it, with how many of the messages it answers it
    marked: fewer than it was given when some were settled meanwhile (a message its sender
    deleted while the turn ran is withdrawn, and stays out of every context)."""

    marked: int = 0


class ContextRow(NamedTuple):
    """A message of a context window, with only what the window is built from: rebuilding a
    window reads up to a few hundred of these, so they are kept light (no time; the sender's
    name only where the window labels its turns, a shared conversation's)."""

    id: int
    role: Role
    content: str
    token_count: int
    answered_by: int | None
    # The sender's display name as stored (users.display_name), where asked for ("" else).
    author: str = ""


@dataclass(frozen=True, slots=True)
class Recorded:
    message_id: int
    conversation_id: int
    is_new: bool  # False: the idempotency key was seen before, nothing was written
    # Deleted on its platform before it was recorded, and withdrawn as it was: never answered
    # (ConversationManager.submit), so nothing more is said about it either.
    withdrawn: bool = False


@dataclass(slots=True)
class TurnLease:
    """The right to run one conversation's turns, held by one worker (the one locker).

    `epoch` is the fencing token: it grows each time anyone takes the lease, and an answer is
    recorded only under the epoch its delivery began with. `lost` is set when a renewal found
    that another worker took the lease (this one lapsed while the holder was cut off)."""

    epoch: int
    owner: str
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # By this worker's monotonic clock, until when no other worker can have taken the lease:
    # the moment its take or its last renewal was sent, plus its ttl. Past it (the process
    # was paused, or its renewals failed) another worker may have taken the conversation
    # over, and what this one shows must be confirmed first (`Store.hold_delivery`).
    valid_until: float = math.inf
    # Set while this worker's last renewal could not reach the database (cleared by the next
    # one that does): a message shown now could not have its id noted, and a worker killed
    # before the database came back would leave it unknown to whoever finishes the answer,
    # which would show it again. So what a turn shows meanwhile is confirmed first, as past
    # `valid_until`, and waits, unseen, until the database answers.
    unreachable: bool = False
    # The conversation's unfinished delivery as the lease was taken (read in the same
    # statement, so a turn needs no `Store.delivery` call of its own).
    unfinished: DeliveryState | None = None
    # The conversation's state as the lease was taken (the same statement): current until
    # a turn under this lease writes (a reply, a summary, /reset), so only the first turn
    # under the lease may use it instead of reading it again.
    state: ConversationState | None = None
    # The first page of pending messages as the lease was taken (`pending_limit` of them at
    # most, oldest first), when `turn_lease` was asked for it; None otherwise.
    pending: Sequence[StoredMessage] | None = None


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """An answer that a worker began to show and has not recorded yet (Store.begin_delivery):
    the messages it answers (ids first..last), the epoch it runs under, who shows it (None:
    its worker gave up on it; anyone may finish it) and when that worker was last heard of,
    and the platform's references to the pieces already shown (piece index -> reference)."""

    first_id: int
    last_id: int
    epoch: int
    owner: str | None
    seen: datetime | None
    shown: dict[int, str | int]


@dataclass(frozen=True, slots=True)
class ChatFacts:
    """What every turn asks of its conversation besides the history, read in the same
    statement as the state (the turn lease's): no cache round trip for them in a turn."""

    # The handoff row (state, reason, detail, since, agent, language); None: no row (the bot).
    handoff: tuple[object, ...] | None
    # The chat's preferences (bot.storage.prefs): auto-translate target, keep-messages opt-in.
    auto_translate: str | None
    keep_messages: bool


@dataclass(frozen=True, slots=True)
class ConversationState:
    id: int
    key: ConversationKey
    summary: str
    # Messages with id <= this are folded into `summary` (0: none).
    summary_through_id: int
    # Messages with id <= this were before the last /reset and are out of context (0: none).
    context_start_id: int
    # Id of the newest assistant CHAT message (0: none): lets a cached window prove it is current.
    last_reply_id: int = 0
    # The summary's tokens as given to fold_summary (0: unknown; count the summary).
    summary_tokens: int = 0
    # How many of its messages were redacted (Store.redact): a cached window built before the
    # last one is stale, whatever its boundary and last reply say.
    redactions: int = 0
    # Several people share it (a group, a server channel: Incoming.group), as its messages
    # were recorded (migration 0019): its prompts label each user turn with its sender.
    shared: bool = False
    # Read with it (SqlStore); None where a store does not.
    facts: ChatFacts | None = None


@dataclass(frozen=True, slots=True)
class TurnPrefs:
    """Everything a skill needs to know about the sender and the chat of one message."""

    user_ref: int | None  # users.id of the sender; None for a message without one
    language: str | None
    auto_translate: str | None
    keep_messages: bool
    reply_to_text: str | None
    platform_language: str | None = None  # what the platform reports for the sender


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune (Store.prune) removed: how many messages, and from which conversations
    (whose cached windows a process that keeps them as objects drops)."""

    count: int
    conversations: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `Store.forget_user` deleted (without `apply`: would delete)."""

    messages: int = 0
    # The bot's answers in the shared chats since their first message there (they may quote
    # them): emptied to a stub, the messages they answer kept.
    emptied: int = 0
    # Every conversation it changed: the user's own (closed) and every thread of each shared
    # chat they wrote in (their messages gone, its summary and "what did I miss" answers
    # dropped): the caches of each are dropped.
    conversations: tuple[int, ...] = ()
    # The user's own conversations, emptied and renamed to tombstones (as `Store.erase`).
    closed: tuple[int, ...] = ()
    # The idempotency keys of the messages deleted: the cache's marks of each (edits,
    # deletions, rate counts) are dropped.
    message_keys: tuple[str, ...] = ()
    users: int = 0


class PruneInterrupted(StorageError):
    """A prune that failed after some of its batches had committed (each batch is a
    transaction of its own): `pruned` says what those removed, so that the caller can still
    drop the windows it keeps of those conversations (the next prune never touches them
    again: their rows are gone)."""

    def __init__(self, message: str, pruned: Pruned) -> None:
        super().__init__(message)
        self.pruned = pruned


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """A message of a chat as "what did I miss" shows it."""

    id: int
    author: str
    is_bot: bool
    content: str
    created_at: datetime
    kept: bool = False  # an OBSERVED message: an answer quoting it is a DIGEST


@dataclass(frozen=True, slots=True)
class PageMessage:
    """A message of a conversation's page (`Store.message_page`). An answer says the newest
    of the messages it answers (`reply_to`) and, where it delivered an agent's message
    (bot.handoff), who the agent is and what the agent wrote (`agent` None: no agent)."""

    id: int
    role: Role
    content: str
    created_at: datetime
    reply_to: int | None = None
    agent: str | None = None
    agent_text: str = ""


class Store(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def record_incoming(
        self, incoming: Incoming, *, kind: MessageKind, token_count: int
    ) -> Recorded:
        """Insert the user (if new), the conversation (if new) and the message, atomically.

        A repeated idempotency key writes nothing and returns the first message's id with
        is_new=False, also when two callers race on the same key.
        """
        ...

    async def conversation_id(self, key: ConversationKey, *, fresh: bool = False) -> int | None:
        """The id of an existing conversation; None if nothing was ever recorded in it.
        A worker may answer from its memory: an id another worker erased since (Store.erase,
        a tombstone now) until this one records a message in the chat. `fresh`: looked up
        in the database, for a write that must land where a later erase finds it (the
        handoff desk's)."""
        ...

    async def pending(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        """Unanswered user messages of a conversation, oldest first."""
        ...

    async def move_chat(self, platform: str, old_chat_id: str, new_chat_id: str) -> int:
        """The chat has a new id on its platform (a Telegram group that became a
        supergroup): its conversations, and with them their history and settings, are
        moved to it, unless the new id has conversations already. Returns how many moved."""
        ...

    async def merge_chat(self, lease: TurnLease, old_id: int, new_id: int) -> bool:
        """The chat's new id had a conversation already (a message of the supergroup came
        before the move was known): the old conversation `old_id` is merged into `new_id`,
        in one transaction, under `lease`, the old conversation's turn lease (no turn of it
        is in flight anywhere). Its messages (pending ones stay pending), signals and summary
        go to `new_id`; its settings (chat preferences, handoff state) too, where `new_id`
        has none of its own; the old conversation is left empty. Both conversations'
        redaction counts go up: a window cached of either is stale. False, and nothing
        written, when the lease was lost (another worker took it) or either is gone."""
        ...

    async def record_reply(
        self,
        conversation_id: int,
        answers: Sequence[int],
        text: str,
        *,
        kind: MessageKind,
        token_count: int,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> RecordedReply | None:
        """Insert the assistant message and mark `answers` answered by it, atomically.
        `idempotency_key`: the key it is redacted by (`redact`) once deleted in the chat.

        With `epoch` (the turn's delivery, see begin_delivery): the fence is that delivery,
        which it ends; every one of `answers` still pending is settled by this answer. Returns
        None and writes nothing when the delivery is no longer this epoch's (another worker
        took it over). Without: returns None and writes nothing if any of `answers` was
        already answered.
        """
        ...

    async def count_attempt(self, message_ids: Sequence[int]) -> int:
        """Count a failed turn on each of `message_ids` that is still pending; the most
        attempts any of them has now (0 when none is pending any more)."""
        ...

    async def state(self, conversation_id: int) -> ConversationState: ...

    async def context_messages(
        self, conversation_id: int, after_id: int, limit: int, *, authors: bool = False
    ) -> Sequence[ContextRow]:
        """The newest `limit` answered CHAT messages (both roles) with id > after_id, oldest
        first. Served by an index on (conversation_id, id): cost does not grow with history.
        `authors`: with each sender's display name (in the same statement)."""
        ...

    async def fold_summary(
        self, conversation_id: int, summary: str, through_id: int, tokens: int, redactions: int
    ) -> int | None:
        """Replace the summary with `summary` (of `tokens` tokens, as the window counts
        them), folded from the turns up to the answer `through_id`, if the conversation's
        count of redactions is still `redactions` (that of the window it was folded from), in
        the same statement. The summary covers the messages up to the id returned (the new
        summary_through_id): `through_id`, or less where a user's chat message at or before
        it is not answered by then (sent while an earlier answer streamed, it is answered
        later): every message up to the id returned is folded, and a window rebuilt from the
        messages after it leaves none out. None, writing nothing, when a message was redacted
        since: the summary may hold the deleted text, and would carry it into every later
        prompt."""
        ...

    async def reset_context(self, conversation_id: int) -> None:
        """Start a fresh context: context_start_id = newest message id, summary cleared."""
        ...

    async def history(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        """The newest `limit` messages of every kind but OBSERVED, oldest first."""
        ...

    def turn_lease(
        self,
        conversation_id: int,
        owner: str,
        *,
        ttl_s: float,
        wait_s: float,
        pending_limit: int = 0,
    ) -> AbstractAsyncContextManager[TurnLease]:
        """The conversation's turn lease for `owner` (unique per process), with a new epoch.
        Renewed every ttl_s/3 while held, lapses ttl_s after a holder died. Raises
        TimeoutError after wait_s. `pending_limit`: the first `pending(...)` page is read with
        the take (`TurnLease.pending`)."""
        ...

    async def begin_delivery(
        self,
        lease: TurnLease,
        conversation_id: int,
        first_id: int,
        last_id: int,
        *,
        replacing: DeliveryState | None = None,
    ) -> bool:
        """Before the first visible piece of an answer to messages first_id..last_id: record
        that `lease` shows it. `replacing`: an unfinished delivery this one takes over, as it
        was read (its shown pieces are kept, to be edited; `seen` None: this worker's own).
        False when the lease was lost, a delivery other than `replacing` is under way, or its
        worker showed a sign of life since it was read (a newer heartbeat than `seen`):
        nothing may be shown."""  # fmt: skip
        ...

    async def note_delivery(
        self, conversation_id: int, epoch: int, shown: dict[int, str | int]
    ) -> None:
        """The platform's references to the pieces shown so far (for a takeover to edit)."""
        ...

    async def hold_delivery(self, conversation_id: int, epoch: int, owner: str) -> bool:
        """Whether the delivery of `epoch` is still `owner`'s (its heartbeat refreshed, as a
        renewal does): False once another worker took it over, or it was settled."""
        ...

    async def end_delivery(self, conversation_id: int, epoch: int, *, abandon: bool) -> None:
        """A delivery that will not be recorded by its worker: cleared (nothing was shown),
        or abandoned (something was: left for any worker to finish, owner None)."""
        ...

    async def delivery(self, conversation_id: int) -> DeliveryState | None:
        """The conversation's unfinished delivery, if any."""
        ...

    async def conversations_with_pending(
        self, older_than: datetime | None = None
    ) -> Sequence[tuple[int, ConversationKey]]:
        """Conversations that have unanswered user messages (work left by a crash); with
        `older_than`, only those with such a message recorded before it and no live lease
        (the orphan sweep)."""
        ...

    async def ping(self) -> None: ...

    async def schema_revision(self) -> str | None:
        """The database's schema revision (Alembic's), None where none is recorded: one
        read on the lease keeper's connection, like `ping` (/readyz asks it)."""
        ...

    async def last_platform_message_ids(
        self, platform: str, since: datetime
    ) -> dict[ConversationKey, str]:
        """Per conversation of `platform`, the platform's id of its newest recorded message
        that has one, where that message was sent at or after `since`: where an adapter's
        backfill starts reading what arrived while it was away (Discord)."""
        ...

    async def recorded(self, idempotency_keys: Sequence[str]) -> frozenset[str]:
        """Those of `idempotency_keys` that a recorded message has (one read): what an
        adapter's backfill reads back and was recorded already, to be left alone."""
        ...

    async def withdraw(self, key: ConversationKey, platform_message_id: str) -> bool:
        """A message its sender deleted before its turn ran: if still pending, mark it
        answered by nothing, out of context and summaries, its text replaced by a stub.
        True when a pending message was withdrawn."""
        ...

    async def edit(
        self, idempotency_key: str, text: str, token_count: int, edited_at: datetime | None = None
    ) -> int | None:
        """A message its sender edited (a chat message, or a kept group message): its text
        replaced by `text`, pending or answered, and as `redact` does, the count of
        redactions raised and a summary it was folded into dropped, in the same transaction.
        `edited_at`: the edit's time by the platform's clock, kept with the message; an edit
        older than the one the message holds changes nothing (None: not known, taken as the
        newest, and the time kept stays). The id of its conversation; None when no such
        message is recorded with another text (a command, a stub, a message deleted or
        withdrawn, the same text) or with a newer edit."""
        ...

    async def redact(self, idempotency_key: str) -> int | None:
        """A message its sender deleted after it was recorded and answered (or kept), or an
        answer deleted in the chat (recorded with its key): its text replaced by a stub
        (DELETED_STUB; an answer's ANSWER_DELETED_STUB) wherever it is read again (context,
        /history, summaries to come), and the conversation's count of redactions raised in
        the same transaction (ConversationState.redactions: a window built before it is
        stale). A chat message
        already folded into the running summary (after context_start_id, at or before
        summary_through_id) drops the summary in that transaction too (summary_through_id 0):
        the next window is built from the messages since context_start_id and folded again.
        The id of its conversation, whose cached context is then stale; None when no such
        message is recorded."""
        ...

    # Reads for the skills (bot.storage.prefs hands them on): messages are read and deleted
    # only here.

    async def turn_prefs(self, message_id: int) -> TurnPrefs:
        """One round trip: the sender's and the chat's preferences and the replied-to text."""
        ...

    async def delete_observed(self, conversation_id: int) -> int:
        """Delete the group messages kept for summaries (OBSERVED), and the answers built
        from them (DIGEST) with the messages those answer; returns how many kept ones."""
        ...

    async def prune(self, before: datetime, *, dry_run: bool = False) -> Pruned:
        """The retention policy: delete the messages created before `before`, except those
        a turn still needs (pending, or in an unfinished delivery) and a question whose
        answer is newer; drop the summaries that quote them and raise their conversations'
        count of redactions, so that a cached window is stale (in the transaction of each
        batch). `dry_run`: count them, change nothing."""
        ...

    async def last_seen_id(self, conversation_id: int, user_ref: int, before_id: int) -> int:
        """The id up to which the user has seen this chat: their last message before
        `before_id`, or the answer to it; 0 if they never wrote here."""
        ...

    # Reads and erasure for the support API, the handoff desk and the metrics.

    async def message_page(
        self,
        key: ConversationKey,
        *,
        kinds: Sequence[MessageKind],
        before: int | None,
        limit: int,
    ) -> list[PageMessage]:
        """The newest `limit` messages of `kinds` with some text and id < `before` (None: the
        newest), oldest first, each answer with its `reply_to` and agent (one connection,
        three statements at most)."""
        ...

    async def message_by_platform_id(
        self, key: ConversationKey, platform_message_id: str
    ) -> int | None:
        """The id of the conversation's newest message with this platform id, if any."""
        ...

    async def message_text(self, key: ConversationKey, message_id: int) -> str | None:
        """The stored text of one of the conversation's messages (None: not there)."""
        ...

    async def message_by_key(self, idempotency_key: str) -> StoredMessage | None:
        """The message recorded under this idempotency key, if any."""
        ...

    async def unanswered_questions(self, conversation_id: int, limit: int) -> list[str]:
        """The texts of the newest messages whose signal (bot.handoff) says the knowledge
        base had nothing for them, oldest first."""
        ...

    async def pending_stats(self) -> tuple[int, datetime | None]:
        """How many user messages are pending in all conversations, and the oldest's time."""
        ...

    async def erase(
        self, key: ConversationKey, user_id: str, usage: Sequence[tuple[str, str]]
    ) -> list[int]:
        """In one transaction: the messages of every conversation of the chat `key` (any
        thread) and its handoff rows deleted, each conversation row emptied and renamed to
        an opaque tombstone (its id is never reused), its unfinished delivery ended; the
        user `user_id` of the platform and its token usage under each (scope, subject) of
        `usage` deleted. The conversation ids it had."""
        ...

    async def forget_user(
        self, platform: str, user_id: str, usage: Sequence[tuple[str, str]], *, apply: bool
    ) -> Forgotten:
        """In one transaction (`apply`; else it only counts): the user's messages in every
        conversation and the answers to them deleted; their own conversations (not shared,
        nobody else wrote there) emptied and renamed as `erase` does; in each thread of the
        shared chats they wrote in, the summary and the answers that quote kept messages
        (DIGEST) dropped with the quoted replies, the bot's answers since their first
        message there emptied to a stub (they may quote them) and so are the handoff's notes,
        and the count of redactions raised; their preferences and token usage (each (scope,
        subject) of `usage`) deleted and their row removed (on SQLite kept as a tombstone:
        ids are never given out again). The newest message of the database, if it goes,
        stays as a stub."""
        ...

    async def messages_between(
        self,
        conversation_id: int,
        *,
        after_id: int = 0,
        before_id: int,
        since: datetime | None = None,
        limit: int,
    ) -> list[LoggedMessage]:
        """The newest `limit` chat messages (the conversation's and, where the chat keeps
        them, the group's; commands and their answers left out) with after_id < id <
        before_id and, if given, sent after `since`; oldest first."""
        ...


async def _always(_id: int, _copy: object) -> bool:
    return True


@dataclass(frozen=True)  # no slots: Codec[X](...) sets __orig_class__
class Codec(Generic[T]):
    """How an object crosses into a shared cache and back. `decode` raises ValueError or
    TypeError on bytes it cannot read (written by another version): the object is loaded.
    A copy another worker wrote may be stale (an outage, a dropped write): it is used only
    when `current(id, copy)` says it is."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]
    current: Callable[[int, T], Awaitable[bool]] = _always


class ReadThrough(Protocol[T]):
    """Objects of one kind by id, kept in the cache and loaded from SQL on a miss
    (`Cache.read_through`). Whoever changes the SQL behind one puts it, refreshes it or
    invalidates it.

    A miss's load is kept only where nothing was put meanwhile (`Cache.add`), so a load
    that read SQL before a change never replaces what the change put or refreshed after it.
    `invalidate` cannot promise that (a load under way may still add what it read before):
    use it only where a copy is checked before use (`Codec.current`) or nobody else loads."""

    async def get(self, id_: int) -> T: ...

    async def put(self, id_: int, value: T) -> None: ...

    async def refresh(self, id_: int) -> None:
        """Load it from SQL now and put it (after a change of the SQL behind it)."""
        ...

    async def invalidate(self, id_: int) -> None: ...


class Cache(Protocol):
    """A key-value store of what can be rebuilt from SQL, under the keys of
    bot.storage.keys. Failures never raise: a get misses, a write is dropped."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """`set`, only where the key holds nothing."""
        ...

    async def set_newer(self, key: str, value: bytes, order: str, ttl_s: float) -> None:
        """`set`, unless the key holds a value set so with a later `order` (strings compared
        as they sort: times of one fixed format): in one step, also where two workers write
        at once (an edit's mark, ConversationManager.edit)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def count(self, key: str, window_s: float, *, once: str | None = None) -> int:
        """Add one to the counter `key` and return it; the counter starts at the first hit
        and lapses `window_s` later (a fixed window, shared by every worker on Redis).
        `once`: a key naming this hit (a message); a hit named before within the window adds
        nothing and gets the count its first call got, even when both calls run at once.
        0 when the cache is unreachable: limits built on it fail open."""
        ...

    def read_through(
        self, key: Callable[[int], str], load: Callable[[int], Awaitable[T]], codec: Codec[T],
        *, ttl_s: float,
    ) -> ReadThrough[T]:  # fmt: skip
        """Objects under `key(id)`, loaded by `load(id)` on a miss. In process: the objects
        themselves, in the cache's one LRU, trusted (this process is their only writer).
        In Redis: through `codec`, shared by every worker."""
        ...

    async def ping(self) -> None:
        """Ask the cache whether it answers (a health check: unlike the rest, it always
        asks, and it raises StorageError, the failure as its cause, when there is no answer,
        so that /readyz and `parley doctor` can say why)."""
        ...

    async def aclose(self) -> None: ...
