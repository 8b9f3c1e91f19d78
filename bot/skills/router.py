"""Commands (`/name args`, also `/name@botname args` as group chats send them) and intents.

A handler returns its whole answer (`str`) or a stream of text deltas (`AsyncIterator[str]`);
the manager streams either to the platform. Skills register commands and intents here, so
adding a skill is one module with a `register(router, services)` function (see
bot/skills/registry.py); /help lists whatever is registered.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot import phrases
from bot.phrases import N_
from bot.types import ConversationKey, Incoming, User

if TYPE_CHECKING:
    from bot.conversation.context import ContextLoader
    from bot.sentiment.types import TurnSignals
    from bot.settings import ConversationSettings
    from bot.storage.base import ChatFacts, Store

# say(sentence, **fields): the sentence in the language of the user being answered.
Say = Callable[..., Awaitable[str]]


async def say_in_english(sentence: str, **fields: object) -> str:
    return phrases.say(sentence, None, **fields)


def _unmarked() -> None:
    return None


_COMMAND = re.compile(r"^/([A-Za-z][A-Za-z0-9_]{0,31})(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.S)


@dataclass(frozen=True, slots=True)
class TurnContext:
    key: ConversationKey
    conversation_id: int
    user: User
    args: str
    store: Store
    context: ContextLoader
    settings: ConversationSettings
    # The message being answered (0 where a caller has none, e.g. a unit test).
    message_id: int = 0
    # Every sentence a handler says goes through this (mark it with N_ for the catalogues).
    say: Say = say_in_english
    # The knowledge-base collection /ask searches (a support site's; "" : the default).
    collection: str = ""
    # What the turn learned before answering (sentiment, "asks for a person"): the intent
    # router may fill it, the "human" intent's handler sets wants_human (bot.handoff).
    signals: TurnSignals | None = None
    # The chat's preferences and handoff row as the turn lease read them (its first turn
    # only; None: read them from the repositories).
    facts: ChatFacts | None = None
    # Called by a handler whose answer quotes the chat's kept messages (OBSERVED): the answer
    # is recorded as a DIGEST, deleted with them by /keep delete.
    quotes_kept: Callable[[], None] = _unmarked


Answer = str | AsyncIterator[str]
Handler = Callable[[TurnContext], Awaitable[Answer] | AsyncIterator[str]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    handler: Handler
    hidden: bool = False
    # Longest message the command takes; None: conversation.max_message_chars. Commands that
    # work on pasted text (/summarize, /translate) take more.
    max_chars: int | None = None
    # In a group conversation, running it with arguments (changing what the whole chat gets)
    # is for the chat's admins; asking for the current state is for everyone.
    admin_only: bool = False
    # In a group conversation, for the chat's admins even without arguments (/reset: the
    # whole channel's context, and the answer another member is being given).
    group_admin_only: bool = False


@dataclass(frozen=True, slots=True)
class Intent:
    """A skill a plain message can be routed to. `match` is the cheap pattern check: the
    text for the handler's `args` when the message asks for this skill, else None."""

    name: str
    description: str  # for the model's classification prompt
    handler: Handler
    match: Callable[[str], str | None]


class PlainRouting(Protocol):
    """How the manager hands plain messages to the skills (bot.skills.intents.SkillRouting)."""

    async def remember(self, message_id: int, incoming: Incoming) -> None:
        """Keep what a later turn needs of a newly recorded message (its replied-to text)."""
        ...

    async def route(self, ctx: TurnContext, text: str) -> Answer | None:
        """A skill's answer to a plain message, or None to answer it as chat."""
        ...

    async def keeps_messages(self, conversation_id: int) -> bool:
        """Whether the chat opted in to keeping its group messages (/keep on)."""
        ...

    async def language_of(self, message_id: int, text: str) -> str:
        """The language to speak to the sender of a recorded message in (an IETF tag)."""
        ...


def parse_command(text: str) -> tuple[str, str] | None:
    """("name", "args") for a command message, None for anything else."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


async def resolve(result: Awaitable[Answer] | AsyncIterator[str]) -> Answer:
    """A handler's result as an answer: an `async def` returns one, an async generator is one."""
    if inspect.isawaitable(result):
        return await result
    return result


class CommandRouter:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._intents: dict[str, Intent] = {}

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"command /{command.name} is registered twice")
        self._commands[command.name] = command

    def add_intent(self, intent: Intent) -> None:
        if intent.name in self._intents:
            raise ValueError(f"intent {intent.name!r} is registered twice")
        self._intents[intent.name] = intent

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    @property
    def commands(self) -> list[Command]:
        return [c for c in self._commands.values() if not c.hidden]

    @property
    def intents(self) -> list[Intent]:
        return list(self._intents.values())

    def intent(self, name: str) -> Intent | None:
        return self._intents.get(name)

    def match_intent(self, text: str) -> tuple[Intent, str] | None:
        """The first registered intent whose pattern matches, with its handler's args."""
        for intent in self._intents.values():
            args = intent.match(text)
            if args is not None:
                return intent, args
        return None

    async def help_text(self, say: Say = say_in_english) -> str:
        lines = [await say(N_("Commands:"))]
        lines += [f"/{c.name} - {await say(c.summary)}" for c in self.commands]
        lines.append(await say(N_("Anything else is a message for me.")))
        return "\n".join(lines)

    async def dispatch(self, ctx: TurnContext, name: str) -> Answer:
        command = self._commands.get(name)
        if command is None:
            return await ctx.say(N_("Unknown command /{name}. Send /help to see what I can do."),
                                 name=name)  # fmt: skip
        return await resolve(command.handler(ctx))
