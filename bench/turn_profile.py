"""Where a Parley turn's time goes (issue 19): no target, the figures behind the note.

One turn at a time, on PostgreSQL + Redis against bench.turn_overhead's stand-in model server,
next to the bare streaming client in the same process: per turn, wall and CPU time; and each
call on the store, the cache and the handoff's signals made during the turns, how often and
how long (wall, measured around Parley's own methods, which this process wraps: no other
library is touched). `--desk`: a help desk reaches the conversations (a support deployment),
so the handoff's triggers are weighed and its signals kept at every turn; without one (a chat
bot on Telegram or the console) they are not. Exit 0, or 1 when it fails.
`python -m bench.turn_profile [--turns N] [--desk]`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from bench.bare_client import MODEL, Bare, new_client
from bench.entry import positive_int, run_main
from bench.turn_overhead import REDIS_URL, Sink, drop_keys, fresh_database, model_server, wait_for
from bot.app import Parley
from bot.cli_commands import settle_heap
from bot.handoff.repo import HandoffRepository
from bot.handoff.turns import HandoffTurns
from bot.settings import Settings
from bot.storage.cache import RedisCache
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User
from tests.doubles import AnyDesk

TURNS_PER_CONVERSATION = 6
WRAPPED: dict[type, tuple[str, ...]] = {
    SqlStore: (
        "record_incoming", "record_reply", "begin_delivery", "note_delivery", "end_delivery",
        "context_messages", "pending", "count_attempt", "state",
    ),
    RedisCache: ("get", "set", "add", "delete", "count"),
    HandoffTurns: ("assess",),
    HandoffRepository: ("record_signals",),
}  # fmt: skip


class Calls:
    """Count and wall time of each wrapped method, while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.seen: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def wrap(self, cls: type, name: str) -> None:
        method: Callable[..., Awaitable[Any]] = getattr(cls, name)
        label = f"{cls.__name__}.{name}"

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return await method(*args, **kwargs)
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                entry = self.seen[label]
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        setattr(cls, name, timed)


async def bare_turns(base_url: str, turns: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per turn of the bare client."""
    async with new_client(base_url) as client:
        bare = Bare(client)
        for n in range(8):
            await bare.turn(f"warm-{n % 2}", "warm up")
        wall, cpu = time.perf_counter(), time.process_time()
        for n in range(turns):
            await bare.turn(f"b-{n // TURNS_PER_CONVERSATION}", f"question {n}, how are you?")
        return _per_turn(wall, cpu, turns)


async def parley_turns(
    base_url: str, turns: int, calls: Calls, *, desk: bool
) -> tuple[float, float]:
    """(wall ms, CPU ms) per turn through ConversationManager.handle."""
    prefix = f"parley-profile-{uuid.uuid4().hex[:8]}"
    try:
        async with fresh_database() as db_url:
            settings = Settings(
                database={"url": db_url},  # type: ignore[arg-type]
                redis={"url": REDIS_URL, "key_prefix": prefix},  # type: ignore[arg-type]
                backend={"kind": "openai", "base_url": base_url, "model": MODEL},  # type: ignore[arg-type]
            )
            async with Parley(settings) as app:
                app.manager.attach("bench", Sink())  # type: ignore[arg-type]
                if desk:
                    app.desk.attach(AnyDesk())
                settle_heap()  # as `parley run` does once started

                async def turn(conversation: str, text: str) -> None:
                    key, user = ConversationKey("bench", conversation), User("bench", conversation)
                    await app.manager.handle(
                        Incoming(key, user, text, idempotency_key=uuid.uuid4().hex)
                    )

                for n in range(8):
                    await turn(f"warm-{n % 2}", "warm up")
                calls.on = True
                wall, cpu = time.perf_counter(), time.process_time()
                for n in range(turns):
                    await turn(f"p-{n // TURNS_PER_CONVERSATION}", f"question {n}, how are you?")
                found = _per_turn(wall, cpu, turns)
                calls.on = False
                return found
    finally:
        await drop_keys(prefix)


def _per_turn(wall: float, cpu: float, turns: int) -> tuple[float, float]:
    return (
        (time.perf_counter() - wall) * 1000 / turns,
        (time.process_time() - cpu) * 1000 / turns,
    )


async def run(turns: int, *, desk: bool) -> None:
    calls = Calls()
    for cls, names in WRAPPED.items():
        for name in names:
            calls.wrap(cls, name)
    with model_server() as base_url:
        await wait_for(base_url)
        bare = await bare_turns(base_url, turns)
        parley = await parley_turns(base_url, turns, calls, desk=desk)
    where = "a help desk reaches them" if desk else "no help desk"
    print(f"{turns} turns, one at a time ({TURNS_PER_CONVERSATION} per conversation), {where}")
    print(f"bare client    per turn: wall {bare[0]:6.2f} ms, CPU {bare[1]:6.2f} ms")
    print(f"Parley         per turn: wall {parley[0]:6.2f} ms, CPU {parley[1]:6.2f} ms")
    print(f"{'call (wall, around the method)':40} {'per turn':>9} {'ms each':>8} {'ms/turn':>8}")
    for label, (count, seconds) in sorted(calls.seen.items(), key=lambda kv: -kv[1][1]):
        each = seconds * 1000 / count
        print(f"{label:40} {count / turns:9.2f} {each:8.3f} {seconds * 1000 / turns:8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=positive_int, default=600, help="turns measured (600)")
    parser.add_argument("--desk", action="store_true", help="a help desk reaches the chats")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run(args.turns, desk=args.desk))
    return 0


if __name__ == "__main__":
    run_main("bench.turn_profile", main)
