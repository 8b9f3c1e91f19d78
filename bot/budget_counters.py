"""The counters behind the token budgets (bot.budget): reserve, then settle.

A turn reserves an estimate before it asks the model; the reservation is refused when the
tokens already spent that day plus those reserved by turns in flight plus this estimate would
pass the budget. At the end of the turn its reservations are replaced by what it really spent.

`RedisCounter` is shared by every worker and exact: one Lua script checks and reserves
atomically, for the user and the site at once. Per subject and day it keeps a hash (`used`,
`held`, and one `r:<id>` field per reservation) and a sorted set of the reservations by expiry;
each script first drops the reservations past their expiry, so a worker that died mid-turn
holds its reservations for at most `reservation_ttl_s`. Redis keeps nothing on disk: a counter
missing its `used` field is rebuilt from SQL (`UsageLog`) before it is used.

`LocalCounter` is the same in one process: the embedded default without Redis, and the
fallback while Redis is unreachable (exact within the process; across workers, each sees the
others' usage only once it is recorded in SQL).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from bot.storage.keys import budget as budget_key
from bot.storage.usage import Subject, UsageLog

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Counters outlive their day by this long, then Redis drops them (SQL keeps the usage).
KEEP_S = 2 * 86400


class Verdict(enum.Enum):
    ADMITTED = "admitted"
    # Refused only because of reservations in flight, which may settle below their estimate:
    # worth asking again once they have.
    WAIT = "wait"
    OVER = "over"  # the tokens already spent leave no room for the estimate


@dataclass(frozen=True, slots=True)
class Limited:
    subject: Subject
    limit: int


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    subject: Subject | None = None  # the one whose budget refused


class Counter(Protocol):
    async def reserve(
        self,
        day: date,
        limited: Sequence[Limited],
        rid: str,
        amount: int,
        *,
        force: bool,
        now_s: float,
        expires_s: float,
    ) -> Decision:
        """Reserve `amount` for each subject, or refuse (never when `force`)."""
        ...

    async def settle(
        self, day: date, limited: Sequence[Limited], rids: Sequence[str], actual: int
    ) -> None:
        """Release the reservations `rids` and count `actual` tokens instead."""
        ...


# KEYS: hash, zset per subject. ARGV: now_ms, expires_ms, id, amount, force, keep_s, limits...
# Returns {2, 0} admitted, {1, i} wait, {0, i} over, {-1, i} subject i has no `used` yet.
_RESERVE = """
local now, amount, n = tonumber(ARGV[1]), tonumber(ARGV[4]), #KEYS / 2
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now)) do
    local held = tonumber(redis.call('HGET', h, 'r:' .. id) or '0')
    redis.call('HINCRBY', h, 'held', -held)
    redis.call('HDEL', h, 'r:' .. id)
    redis.call('ZREM', z, id)
  end
  if redis.call('HEXISTS', h, 'used') == 0 then return {-1, i} end
end
if ARGV[5] == '0' then
  for i = 1, n do
    local h, limit = KEYS[2 * i - 1], tonumber(ARGV[6 + i])
    local used = tonumber(redis.call('HGET', h, 'used'))
    local held = tonumber(redis.call('HGET', h, 'held') or '0')
    if used + amount > limit then return {0, i} end
    if used + held + amount > limit then return {1, i} end
  end
end
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', h, 'held', amount)
  redis.call('HSET', h, 'r:' .. ARGV[3], amount)
  redis.call('ZADD', z, tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', h, tonumber(ARGV[6]))
  redis.call('EXPIRE', z, tonumber(ARGV[6]))
end
return {2, 0}
"""

# KEYS: hash, zset per subject. ARGV: actual, keep_s, ids... A counter without `used` (Redis
# lost it mid-turn) is left alone: it is rebuilt from SQL, which this turn is recorded in.
_SETTLE = """
local actual = tonumber(ARGV[1])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  for j = 3, #ARGV do
    local held = redis.call('HGET', h, 'r:' .. ARGV[j])
    if held then
      redis.call('HINCRBY', h, 'held', -tonumber(held))
      redis.call('HDEL', h, 'r:' .. ARGV[j])
      redis.call('ZREM', z, ARGV[j])
    end
  end
  if redis.call('HEXISTS', h, 'used') == 1 then
    redis.call('HINCRBY', h, 'used', actual)
    redis.call('EXPIRE', h, tonumber(ARGV[2]))
  end
end
return 0
"""

# KEYS: hash. ARGV: tokens. `used` raised to at least that (a missing one is rebuilt anyway).
_RAISE = """
local used = redis.call('HGET', KEYS[1], 'used')
if used and tonumber(used) < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'used', ARGV[1]) end
return 0
"""

_VERDICTS = {2: Verdict.ADMITTED, 1: Verdict.WAIT, 0: Verdict.OVER}


class RedisCounter:
    """Budgets shared by every worker (see the module docstring). Redis errors propagate:
    the caller decides what to do without Redis."""

    def __init__(self, client: Redis, usage: UsageLog, *, key_prefix: str) -> None:
        self._client = client
        self._usage = usage
        self._prefix = key_prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._raise = client.register_script(_RAISE)

    def _keys(self, day: date, limited: Sequence[Limited]) -> list[str]:
        # Both keys of every subject on the same day: one hash tag, one Redis Cluster slot.
        return [
            budget_key(self._prefix, day, item.subject.scope, item.subject.name, part)
            for item in limited
            for part in ("h", "z")
        ]

    async def reserve(
        self,
        day: date,
        limited: Sequence[Limited],
        rid: str,
        amount: int,
        *,
        force: bool,
        now_s: float,
        expires_s: float,
    ) -> Decision:
        keys = self._keys(day, limited)
        args: list[Any] = [int(now_s * 1000), int(expires_s * 1000), rid, amount, int(force)]
        args += [KEEP_S, *(item.limit for item in limited)]
        while True:
            code, index = (int(v) for v in await self._reserve(keys=keys, args=args))
            if code != -1:
                who = limited[index - 1].subject if index else None
                return Decision(_VERDICTS[code], who)
            await self._rebuild(keys[2 * index - 2], day, limited[index - 1].subject)

    async def _rebuild(self, key: str, day: date, subject: Subject) -> None:
        """Start a counter at what SQL recorded (HSETNX: a worker that got there first wins,
        with the same figure)."""
        spent = await self._usage.tokens(day, subject)
        await self._client.hsetnx(key, "used", spent)
        await self._client.expire(key, KEEP_S)

    async def settle(
        self, day: date, limited: Sequence[Limited], rids: Sequence[str], actual: int
    ) -> None:
        await self._settle(keys=self._keys(day, limited), args=[actual, KEEP_S, *rids])

    async def catch_up(self, day: date, item: Limited, recorded: int) -> None:
        """Raise the subject's spent tokens to `recorded` (what SQL holds): turns counted
        while Redis was unreachable never reached it."""
        await self._raise(keys=self._keys(day, [item])[:1], args=[recorded])


@dataclass(slots=True)
class _Tally:
    used: int = 0
    held: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> amount, expiry

    def holding(self, now_s: float) -> int:
        for rid in [r for r, (_, expires) in self.held.items() if expires <= now_s]:
            del self.held[rid]
        return sum(amount for amount, _ in self.held.values())


class LocalCounter:
    """The same counter in this process. `used` is what this process counted, raised to what
    SQL recorded (other workers' turns too) at every reservation, read without flushing the
    usage written behind (UsageLog.counted)."""

    def __init__(self, usage: UsageLog) -> None:
        self._usage = usage
        self._tallies: dict[tuple[date, Subject], _Tally] = {}

    async def reserve(
        self,
        day: date,
        limited: Sequence[Limited],
        rid: str,
        amount: int,
        *,
        force: bool,
        now_s: float,
        expires_s: float,
    ) -> Decision:
        recorded = [await self._usage.counted(day, item.subject) for item in limited]
        # From here to the end nothing awaits: the check and the reservation are one step.
        self._forget_before(day)
        tallies = [self._tallies.setdefault((day, item.subject), _Tally()) for item in limited]
        for tally, spent in zip(tallies, recorded, strict=True):
            tally.used = max(tally.used, spent)
        if not force:
            for item, tally in zip(limited, tallies, strict=True):
                if tally.used + amount > item.limit:
                    return Decision(Verdict.OVER, item.subject)
                if tally.used + tally.holding(now_s) + amount > item.limit:
                    return Decision(Verdict.WAIT, item.subject)
        for tally in tallies:
            tally.held[rid] = (amount, expires_s)
        return Decision(Verdict.ADMITTED)

    async def settle(
        self, day: date, limited: Sequence[Limited], rids: Sequence[str], actual: int
    ) -> None:
        for item in limited:
            tally = self._tallies.get((day, item.subject))
            if tally is None:
                continue
            tally.used += actual
            for rid in rids:
                tally.held.pop(rid, None)

    def counted_here(self, day: date, limited: Sequence[Limited]) -> list[Limited]:
        """Those of `limited` this process has counted (or `mark`ed) on `day`."""
        return [item for item in limited if (day, item.subject) in self._tallies]

    def mark(self, day: date, limited: Sequence[Limited]) -> None:
        """Note that the shared counter missed tokens of these subjects (counted_here)."""
        for item in limited:
            self._tallies.setdefault((day, item.subject), _Tally())

    def forget(self, day: date, subject: Subject) -> None:
        self._tallies.pop((day, subject), None)

    def _forget_before(self, day: date) -> None:
        for stale in [k for k in self._tallies if k[0] < day]:
            del self._tallies[stale]
