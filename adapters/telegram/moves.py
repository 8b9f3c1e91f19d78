"""Groups that `[telegram.access]` names and that have become supergroups since.

A basic group upgraded to a supergroup (an admin makes it public, turns topics on; a group
that grows) gets a new chat id, and the access rules name the old one: a blocked group was
answered again, an allowed one was told "this bot is private" by every message. Telegram
gives the supergroup no trace of its former id, so the adapter reports it itself: a message in
the supergroup has the old id among its scopes (bot.policy: rules on any scope apply), as a
Discord thread has its channel.

The move is learned from Telegram's service message (migrate_to_chat_id, migrate_from_chat_id:
`moved`), and, for a move this process did not see (it happened while it was stopped, another
worker got the service message), by asking about each named basic group (getChat: Telegram
refuses an upgraded group's old id with the new one), at most every RECHECK_S while group
messages come (a named chat that getChat finds to be something else than a basic group, a
supergroup already, is not asked about again). Of the other groups, only the moves this
process is told of are kept (`now`, bounded): a late message of the old group goes to the
supergroup's conversation.

The asking runs beside the messages, never in their way: a message waits for nothing but the
process's first look, and for that at most FIRST_LOOK_WAIT_S (one getChat per named group,
which a slow or unreachable Bot API would otherwise have put in front of every group message
every RECHECK_S); one that comes while a look is under way is placed by what is known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from telegram import Chat, ChatFullInfo
from telegram.error import ChatMigrated, TelegramError

from bot.lru import Lru

log = logging.getLogger(__name__)

# How often the named basic groups are asked about again while group messages come: how
# long a move seen by another worker (or none) goes unnoticed here, at most.
RECHECK_S = 300.0
# How long a message waits for the process's first look at the named groups.
FIRST_LOOK_WAIT_S = 2.0
# Moves of groups the rules do not name, kept from the service messages (old id -> new).
MOVES_KEPT = 10_000


class FormerChats:
    """Supergroup id -> the ids it had as a basic group that the access rules name; and a
    group's move this process was told of, old id -> new (`now`)."""

    def __init__(
        self,
        named: Iterable[str],
        get_chat: Callable[[int], Awaitable[ChatFullInfo]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._named = {int(i) for i in named if i.lstrip("-").isdigit()}
        self._unmoved = {i for i in self._named if i < 0}  # groups' ids are negative
        self._get_chat = get_chat
        self._clock = clock
        self._checked_at: float | None = None
        self._looking: asyncio.Task[None] | None = None
        # The process's first look, and when messages stop waiting for it (the loop's time).
        self._first: asyncio.Task[None] | None = None
        self._first_until = 0.0
        self._former: dict[int, tuple[str, ...]] = {}
        self._moves: Lru[int] = Lru(MOVES_KEPT)

    def now(self, chat_id: int) -> int | None:
        """The supergroup a group became, where this process was told of it; else None."""
        return self._moves.get(chat_id)

    async def of(self, chat_id: int) -> tuple[str, ...]:
        """A group's former ids that the rules name (a supergroup's; none for most). Starts
        a look at the named groups when one is due; waits for it only if it is the first,
        as does every message that comes while the first is under way (other chats' lanes
        after a start), within FIRST_LOOK_WAIT_S of its start."""
        if self._unmoved and self._due() and (self._looking is None or self._looking.done()):
            first = self._checked_at is None
            self._checked_at = self._clock()
            self._looking = asyncio.create_task(self.look())
            if first:
                self._first = self._looking
                self._first_until = asyncio.get_running_loop().time() + FIRST_LOOK_WAIT_S
        if self._first is not None and not self._first.done():
            left = self._first_until - asyncio.get_running_loop().time()
            if left > 0:
                await asyncio.wait([self._first], timeout=left)
        return self._former.get(chat_id, ())

    async def looked(self) -> None:
        """Wait for the look under way, if any, to end."""
        if self._looking is not None:
            await asyncio.gather(asyncio.shield(self._looking), return_exceptions=True)

    async def aclose(self) -> None:
        if self._looking is not None:
            self._looking.cancel()
            await asyncio.gather(self._looking, return_exceptions=True)

    def moved(self, old: int, new: int) -> None:
        self._moves.put(old, new)
        if old not in self._named:
            return
        self._unmoved.discard(old)
        former = self._former.get(new, ())
        if str(old) not in former:
            self._former[new] = (*former, str(old))
            log.info("chat %d, named in [telegram.access], is now the supergroup %d", old, new)

    async def look(self) -> None:
        """Ask about the named basic groups not known to have moved."""
        for old in sorted(self._unmoved):
            try:
                chat = await self._get_chat(old)
            except ChatMigrated as exc:
                self.moved(old, exc.new_chat_id)
            except TelegramError as exc:  # gone, the bot removed, unreachable: next time
                log.info("chat %d named in [telegram.access] not looked up: %s", old, exc)
            else:
                if chat.type != Chat.GROUP:  # a supergroup or a channel never moves
                    self._unmoved.discard(old)

    def _due(self) -> bool:
        return self._checked_at is None or self._clock() - self._checked_at >= RECHECK_S
