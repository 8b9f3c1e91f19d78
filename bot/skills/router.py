"""Commands: `/name args`, also `/name@botname args` as group chats send them."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.types import ConversationKey, User

if TYPE_CHECKING:
    from bot.conversation.context import ContextLoader
    from bot.settings import ConversationSettings
    from bot.storage.base import Store

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


Handler = Callable[[TurnContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    handler: Handler
    hidden: bool = False


def parse_command(text: str) -> tuple[str, str] | None:
    """("name", "args") for a command message, None for anything else."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


class CommandRouter:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"command /{command.name} is registered twice")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    @property
    def commands(self) -> list[Command]:
        return [c for c in self._commands.values() if not c.hidden]

    def help_text(self) -> str:
        lines = ["Commands:"]
        lines += [f"/{c.name} - {c.summary}" for c in self.commands]
        lines.append("Anything else is a message for me.")
        return "\n".join(lines)

    async def dispatch(self, ctx: TurnContext, name: str) -> str:
        command = self._commands.get(name)
        if command is None:
            return f"Unknown command /{name}. Send /help to see what I can do."
        return await command.handler(ctx)
