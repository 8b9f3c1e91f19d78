"""The seam between the core and a platform's output."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from bot.types import ConversationKey, Incoming


class ReplySink(Protocol):
    """Delivers one reply to a conversation, rendering it as the deltas arrive.

    The sink consumes `chunks` to the end (or raises). Stopping early closes the iterator,
    which aborts the model request behind it. `reply_to` is the platform's id of the message
    answered ("" if none): a sink may thread the reply to it.
    """

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None: ...


@runtime_checkable
class SiteScoped(Protocol):
    """A sink whose conversations each belong to a site with its own system prompt and
    knowledge-base collection (the support channel): the core asks it per conversation."""

    def system_prompt_for(self, key: ConversationKey) -> str | None:
        """The site's system prompt; None: the core's `conversation.system_prompt`."""
        ...

    def collection_for(self, key: ConversationKey) -> str:
        """The knowledge-base collection /ask searches ("" : the default one)."""
        ...


@runtime_checkable
class Reachable(Protocol):
    """A sink that can tell, before a turn runs, that it cannot show an answer now (a
    service it needs is out of reach: Chatwoot's API, the support channel's event log).
    `ensure_reachable(key)` then raises the manager's OutputAway, and the turn waits, pending,
    without asking the model anything (routing, skills, translations, the answer)."""

    async def ensure_reachable(self, key: ConversationKey) -> None: ...


@runtime_checkable
class KeepsAnswers(Protocol):
    """A sink whose platform keeps each whole answer where any worker can read it back (the
    support channel's event log), and shows it once: an answer another attempt at the same
    delivery completed is never shown again. Before a delivery that showed something is
    answered again (taken over from a worker that died, or run again after the platform was
    out of reach), the core asks `shown_answer` with the pieces that attempt noted
    (`Shown.showed`): the text of the answer it completed, which the core then records as
    it is, without asking the model again; None: none was completed, the turn runs. It may
    raise the manager's OutputAway (the platform is out of reach: the turn waits)."""

    async def shown_answer(
        self, key: ConversationKey, pieces: Mapping[int, str | int]
    ) -> str | None: ...


@runtime_checkable
class TellsDeletions(Protocol):
    """A sink whose platform tells the bot when one of its own messages is deleted (Discord's
    message delete events). Each answer is recorded under `answer_key` of the reference of
    its first message (None: under none), the key the adapter has the core redact
    (`ConversationManager.redact`) when that message is deleted: the answer is then recorded
    as a deleted message is (`bot.storage.base.ANSWER_DELETED_STUB`)."""

    def answer_key(self, ref: str | int) -> str | None: ...


@runtime_checkable
class TellsEdits(Protocol):
    """A sink whose platform tells the bot when a user edits a message (Telegram's
    edited_message, Discord's message update), which the adapter hands to the core
    (`Intake.edit`). `edits_marked` True: an edit may come before its message is recorded
    (a document still read, another worker recording it), so the core reads the edit's mark
    as it records a new message of this platform (one cache read)."""

    def edits_marked(self) -> bool: ...


@runtime_checkable
class OperatorFacing(Protocol):
    """A sink whose one user is the operator who runs the bot (the console). Only there does
    the core name settings and docs paths (how to set a model); a sink that does not declare
    it is taken to face users, who have no use for them."""

    operator_facing: Literal[True]


@runtime_checkable
class DeskHeld(Protocol):
    """A sink whose platform is the help desk itself (Chatwoot): its agents read each of the
    customer's messages there, as sent. While a person has such a conversation (or one was
    asked for), the bot says nothing in it, not even the rate limit's sentence: "I skipped
    this one" is untrue where the agent read it, and it is the bot's voice in the agent's
    conversation. Elsewhere (a web chat's agents see what Parley hands on) it is said."""

    desk_shows_messages: Literal[True]


class Platform(ReplySink, Protocol):
    """A sink that can also say whether the platform counts a sender as an admin where the
    message was sent (a Telegram group's administrators, a Discord member with Manage
    Server). The core asks only for admin-only commands in group conversations."""

    async def is_admin(self, incoming: Incoming) -> bool: ...


async def once(text: str) -> AsyncIterator[str]:
    """A reply that is complete from the start (commands, errors, no-model answers)."""
    yield text


class Shown(Protocol):
    """What the core keeps of an answer being shown, for a sink that shows it in pieces
    (messages it can edit): the pieces a previous attempt at this same answer already showed
    (piece index -> the platform's reference to it), which the sink edits instead of sending
    new ones, and `showed`, which the sink calls as soon as it knows the reference of a piece
    it sent. So a turn cut by a crash is finished by editing its own half answer, never left
    half and answered again. References are what the platform gives (ints or strings). Where
    `pieces` holds some as the delivery starts, the core hands the answer whole, in one chunk:
    those messages go from the old text to the final one, never through the new answer's
    first words."""

    @property
    def pieces(self) -> dict[int, str | int]: ...

    async def showed(self, index: int, ref: str | int) -> bool:
        """Note the reference of a piece sent; False when SQL could not take it (the database
        out of reach): a takeover will not know of this piece."""
        ...

    async def may_show(self) -> None:
        """Called before each send or edit: raises (the manager's Superseded) once another
        worker may have taken this answer over (this process was paused past its lease), so
        that a stale worker never overwrites the answer the user sees."""
        ...

    def deleted(self, still_shown: str = "") -> None:
        """A message of this answer was deleted in the chat while it was shown (a moderator:
        the platform's `MessageGone`): the answer is recorded as a deleted message is, its
        text replaced by a stub (`bot.storage.base.ANSWER_DELETED_STUB`), and what it
        answered is answered (never answered again). `still_shown`: the text of its first
        message, where a later one was deleted (a long answer): recorded, followed by the
        stub, where the sink keys the answer by its first message (`TellsDeletions`), whose
        deletion then still redacts it; elsewhere (no deletion events: Telegram) the stub
        alone, so that text a moderator may have removed is never kept."""
        ...


_SHOWN: ContextVar[Shown | None] = ContextVar("parley_shown", default=None)


def current_shown() -> Shown | None:
    """The answer being delivered in this task, for a sink that can edit what it showed."""
    return _SHOWN.get()


async def still_showing() -> None:
    """Raise (the manager's Superseded) when the answer being delivered in this task is no
    longer this worker's (`Shown.may_show`); nothing outside a turn. A sink calls it right
    before each request that changes what a chat sees, after any wait for a rate limit: a
    process paused during that wait must not send once it runs again."""
    shown = _SHOWN.get()
    if shown is not None:
        await shown.may_show()


def showing(shown: Shown | None) -> Token[Shown | None]:
    """Set the answer being delivered (the core does, around `ReplySink.deliver`)."""
    return _SHOWN.set(shown)


def done_showing(token: Token[Shown | None]) -> None:
    _SHOWN.reset(token)


@dataclass(frozen=True, slots=True)
class Author:
    """Who speaks in the reply being delivered, when it is not the bot: a person at the help
    desk (bot.handoff). `text` is what they wrote (before translation), `language` its
    language ("" : unknown); the delivered text is the customer's translation. `message_id`:
    their message's id in SQL (None: not known), which the reply's record answers."""

    name: str
    text: str
    language: str = ""
    message_id: int | None = None


_AUTHOR: ContextVar[Author | None] = ContextVar("parley_author", default=None)


def current_author() -> Author | None:
    """The person whose reply is being delivered in this task; None: the bot speaks. A sink
    may render it as such (the support channel's `agent` event) or prefix the name."""
    return _AUTHOR.get()


def speaking(author: Author | None) -> Token[Author | None]:
    """Set who speaks (the core does, around the delivery of an agent's reply)."""
    return _AUTHOR.set(author)


def done_speaking(token: Token[Author | None]) -> None:
    _AUTHOR.reset(token)
