"""The turn being run, for every log line and metric of it: a context variable the manager
sets once per turn (`turn_scope`).

A context variable, not an argument threaded through every call: a turn's log lines come
from the manager, the skills, the backends and the adapters' delivery, and tasks started
inside the turn inherit it (asyncio copies the context into each task), so every line of a
turn carries the same fields without any of those layers knowing about logging.

The fields are identifiers, never text: the conversation key (platform, chat and thread
ids), the platform, and the turn (the id of the newest message the turn answers, unique
across workers because SQL assigns it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from bot.types import ConversationKey

Outcome = Literal["answered", "failed", "refused", "limited", "deferred"]


@dataclass(slots=True)
class TurnScope:
    """One turn: what its log lines say, and what its metrics are labelled and timed with."""

    conversation: str
    platform: str
    turn: int
    # What answered it: "chat", a command's name, "intent" (a skill took a plain message).
    skill: str = "chat"
    outcome: Outcome = "answered"
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None


_CURRENT: ContextVar[TurnScope | None] = ContextVar("parley_turn", default=None)


@contextmanager
def turn_scope(key: ConversationKey, turn: int, *, skill: str = "chat") -> Iterator[TurnScope]:
    """The current turn within the block (and in the tasks started in it)."""
    scope = TurnScope(str(key), key.platform, turn, skill)
    token = _CURRENT.set(scope)
    try:
        yield scope
    finally:
        _CURRENT.reset(token)


def current_turn() -> TurnScope | None:
    return _CURRENT.get()


def note(*, skill: str | None = None, outcome: Outcome | None = None) -> None:
    """Say what the current turn turned out to be (no-op outside a turn)."""
    scope = _CURRENT.get()
    if scope is None:
        return
    if skill is not None:
        scope.skill = skill
    if outcome is not None:
        scope.outcome = outcome


class TurnFieldsFilter(logging.Filter):
    """Stamps `conversation`, `platform` and `turn` on each record (None outside a turn).

    On the handler, where the record is formatted in the thread and context that logged it:
    a formatter run later (a queue handler's listener) would no longer see the variable."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _CURRENT.get()
        record.conversation = scope.conversation if scope else None
        record.platform = scope.platform if scope else None
        record.turn = scope.turn if scope else None
        return True
