"""A platform that stops answering (`bot.errors.PlatformAway`): its turns wait, the model is
not asked again while it is away, and the answer is made again once it is back.

`PlatformWatch` is what an adapter's `deliver` and `ensure_reachable`
(`bot.conversation.sink.Reachable`) need:

- `away(key, exc)` in `deliver` when the streamer gave up on the platform: raises the
  manager's `OutputAway`, so the turn is not recorded and its messages wait (the delivery is
  finished in the messages it showed, by the next attempt);
- `shown(key)` after an answer was shown;
- `ensure_reachable()` before a turn: while the platform is away, OutputAway at once; every
  `look_s` one caller looks (`probe`, a cheap call such as Telegram's getMe), and the others
  meanwhile wait without asking (a look can take tens of seconds; every waiting conversation
  asking at once would be a herd against a platform that is already struggling).

A platform can answer the look and still fail this conversation's calls (a 5xx for one chat,
a send refused in a way the client reports as a network error): after `MAX_TRIES` such turns
in a row for one conversation (each within COUNT_FOR_S of the one before) the answer is given
up, as a refusal is (recorded, and the log
says it was not shown), so that the model is not asked again and again for an answer nobody
sees, each time counted against the user's budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from bot.conversation.manager import OutputAway
from bot.errors import PlatformAway
from bot.lru import Lru
from bot.outage import Outage
from bot.types import ConversationKey

log = logging.getLogger(__name__)

# Turns of one conversation that the platform failed in a row before its answer is given up;
# a failure this long after the last one starts the count again (the platform came back in
# between, or another worker showed the answer).
MAX_TRIES = 5
COUNT_FOR_S = 600.0
# Conversations whose failed turns are counted.
COUNTED = 10_000


class PlatformWatch:
    def __init__(
        self,
        platform: str,
        probe: Callable[[], Awaitable[object]],
        *,
        service: str,
        look_s: float,
        logger: logging.Logger,
    ) -> None:
        self._platform = platform
        self._probe = probe
        self._outage = Outage(look_s, meanwhile="answers wait", logger=logger, service=service)
        self._log = logger
        self._looking = False
        self._look_s = look_s
        self._answered_at = -look_s  # when a look taken after a failed answer last answered
        self._tries: Lru[tuple[int, float]] = Lru(COUNTED)  # key -> (tries, last failure)

    @property
    def down(self) -> bool:
        return self._outage.down

    async def away(self, key: ConversationKey, exc: PlatformAway) -> None:
        """The platform gave up on this conversation's answer: OutputAway (the turn waits),
        unless it did so MAX_TRIES times in a row; then the answer is given up (return).

        The platform is taken for away, and every conversation's turns wait, only when a look
        fails too: one channel's 5xx held every other conversation's answers for the next
        look, 5 s later, again at each of its tries (a helper's review). When the look
        answers, only this conversation waits (the sweep or its next message tries again)."""
        now = time.monotonic()
        before, last = self._tries.get(key) or (0, now)
        tries = before + 1 if now - last < COUNT_FOR_S else 1
        if tries >= MAX_TRIES:
            self._tries.discard(key)
            self._log.warning(
                "%s: reply not shown: %s (failed %d times in a row; given up)", key, exc, tries
            )
            return
        self._tries.put(key, (tries, now))
        if not self._outage.down and await self._answers(now):
            self._log.warning(
                "%s: reply not shown: %s (the platform answers; tried again)", key, exc
            )
            raise OutputAway(self._platform) from exc
        self._outage.failed(exc)
        raise OutputAway(self._platform) from exc

    async def _answers(self, now: float) -> bool:
        """Whether the platform answers a look: one at a time, and at most one every
        `look_s`. A failure while a look is out, or soon after one answered, is taken for
        this conversation's alone (it waits); the look in flight decides for the platform."""
        if self._looking or now - self._answered_at < self._look_s:
            return True
        self._looking = True
        try:
            await self._probe()
        except Exception:  # whatever the look met, the platform is away
            return False
        finally:
            self._looking = False
        self._answered_at = time.monotonic()
        return True

    def shown(self, key: ConversationKey) -> None:
        self._tries.discard(key)
        self._outage.succeeded()

    async def ensure_reachable(self) -> None:
        if not self._outage.down:
            return
        if self._looking or not self._outage.should_try():
            raise OutputAway(self._platform)
        self._looking = True
        try:
            await self._probe()
        except Exception as exc:  # whatever the look met, the platform is not back
            self._outage.failed(exc)
            raise OutputAway(self._platform) from exc
        finally:
            self._looking = False
        self._outage.succeeded()
