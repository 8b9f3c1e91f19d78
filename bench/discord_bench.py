"""Discord streaming under load: 50 busy channels against the local fake of Discord's REST API
(tests/discord_api.py), which keeps Discord's real limits: 5 sends or edits per 5 s per
channel and 50 requests a second per bot, each answered 429 with `retry_after` when exceeded.

    .venv/bin/python -m bench.discord_bench [--channels 50] [--rounds 2] [--words 500]

Parley runs with its default settings (stream_interval_s 1.0, the adapter's own rates) and a
SQLite file in a temporary folder; the model is an instant backend (its first token at once,
then one word every --word-ms). Each of the channels gets a question that mentions the bot,
all at once; when every answer is in, the next round of questions comes (--rounds), so a
channel's budget is still partly spent by its previous answer. Each answer is long enough to
be split over two messages and edited as it grows.

Printed: first token -> first visible update (the first send Discord accepted in the
channel after the turn's first token), median and p99, over the turns whose budget allowed
that send at once (the adapter's outbound gate, watched through its `gate` parameter, let it
through without waiting: the channel's 5 per 5 s and the bot's 50 a second had room), then
over every turn; Discord API calls per answer (typing, sends, edits, refused calls included);
429s met, and of those the ones on Parley's own sends and edits.

Targets, fixed before measuring (issue 14): 0 429s on Parley's own sends and edits; the
first visible update within 50 ms of the first token (p99) when the channel's budget allows.
The exit status is 1 when a target is missed, and non-zero when the run crashes or passes
GUARD_S.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.discord.adapter import DISCORD_RATES, DiscordAdapter
from adapters.discord.settings import DiscordSettings
from adapters.kit.gate import LocalGate
from adapters.kit.runner import host_for
from backends.base import Chunk, GenerationRequest
from bench.entry import non_negative_float, positive_int, run_main
from bot.app import Parley
from bot.settings import load_settings
from tests import discord_events as ev
from tests.discord_api import TOKEN, Call, FakeDiscordApi
from tests.doubles import ScriptedBackend

TARGET_FIRST_UPDATE_MS = 50.0
GUARD_S = 600.0
FIRST_CHANNEL = 7000
# A slot granted later than this after it was asked for waited for a budget.
WAITED_S = 0.001


class WatchedGate:
    """The adapter's own gate, noting when each slot was asked for and when it was granted."""

    def __init__(self) -> None:
        self._inner = LocalGate(DISCORD_RATES)
        self.granted: dict[str, list[tuple[float, float]]] = defaultdict(list)

    @asynccontextmanager
    async def slot(self, chat: str, *, group: bool) -> AsyncIterator[None]:
        asked = time.monotonic()
        async with self._inner.slot(chat, group=group):
            self.granted[chat].append((asked, time.monotonic()))
            yield


class InstantBackend(ScriptedBackend):
    """No wait before the first token; notes when each turn's first token leaves it (the
    conversation summaries Parley asks for between turns have no session, and are not noted)."""

    def __init__(self, words: int, word_s: float) -> None:
        answer = "\n\n".join(
            " ".join(f"word{i}{'.' if i % 12 == 11 else ''}" for i in range(start, start + 60))
            for start in range(0, words, 60)
        )
        # A context that holds every round's answers: no summary requests among the turns.
        super().__init__(lambda request: answer, delay=lambda: word_s, max_model_len=1 << 17)
        self.word_s = word_s
        self.first_tokens: dict[str, list[float]] = defaultdict(list)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        first = True
        async for chunk in super().stream(request):
            if first and chunk.text and request.session_id:
                self.first_tokens[request.session_id].append(time.monotonic())
                first = False
            yield chunk


def busy_guild(channels: int) -> dict[str, Any]:
    guild = ev.guild_create()
    guild["channels"] += [
        {"id": str(FIRST_CHANNEL + n), "type": 0, "name": f"busy-{n}", "position": 2 + n,
         "parent_id": str(ev.CATEGORY)}
        for n in range(channels)
    ]  # fmt: skip
    return guild


@asynccontextmanager
async def discord_stack(
    folder: Path, backend: InstantBackend, api: FakeDiscordApi, gate: WatchedGate
) -> AsyncIterator[DiscordAdapter]:
    async with api.serving():
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{folder}/parley.db"},
            knowledge={"load_sample": False},
            adapters=["discord"],
            discord={"token": TOKEN},
        )
        async with Parley(settings, backend=backend) as app:
            section = settings.section("discord")
            assert isinstance(section, DiscordSettings)
            adapter = DiscordAdapter(host_for(app), section, store=app.store, gate=gate)
            app.intake.register("discord", adapter, section.access)
            async with adapter:
                connection = asyncio.create_task(adapter.run())
                try:
                    yield adapter
                finally:
                    connection.cancel()
                    await asyncio.gather(connection, return_exceptions=True)


@dataclass
class Figures:
    latencies_ms: list[float]  # of the turns whose budget allowed their first send at once
    all_latencies_ms: list[float]
    answers: int
    calls: int
    refused: int
    refused_own: int
    took_s: float

    def print(self) -> None:
        for what, figures in [
            ("budget allowing", self.latencies_ms),
            ("every turn", self.all_latencies_ms),
        ]:
            print(
                f"first token -> first visible update, {what} ({len(figures)} turns): "
                f"median {_median(figures):.1f} ms, p99 {_p99(figures):.1f} ms, "
                f"max {max(figures, default=0):.1f} ms"
            )
        print(
            f"Discord API calls per answer {self.calls / self.answers:.2f} "
            f"({self.calls} calls, {self.answers} answers in {self.took_s:.1f} s) | "
            f"429s met {self.refused}, on Parley's own sends and edits {self.refused_own}"
        )


def _median(figures: list[float]) -> float:
    return statistics.median(figures) if figures else float("nan")


def _p99(figures: list[float]) -> float:
    ranked = sorted(figures)
    return ranked[min(len(ranked) - 1, int(len(ranked) * 0.99))] if ranked else float("nan")


def _is_write(call: Call) -> bool:
    return call.method in ("POST", "PATCH") and "/messages" in call.path


def measure(
    api: FakeDiscordApi, backend: InstantBackend, gate: WatchedGate, channels: list[int]
) -> Figures:
    allowed, every = [], []
    for channel in channels:
        sends = [
            c.at
            for c in api.calls
            if c.channel_id == channel and c.method == "POST" and _is_write(c) and c.status == 200
        ]
        for first in backend.first_tokens[f"discord:{channel}"]:
            shown = min((at for at in sends if at >= first), default=None)
            if shown is None:
                raise RuntimeError(f"channel {channel}: an answer was never shown")
            every.append((shown - first) * 1000)
            # The first slot asked for in the channel after the first token: the first send.
            asked, granted = min(g for g in gate.granted[str(channel)] if g[0] >= first)
            if granted - asked <= WAITED_S:
                allowed.append((shown - first) * 1000)
    refused = api.refused()
    return Figures(
        latencies_ms=allowed,
        all_latencies_ms=every,
        answers=sum(len(backend.first_tokens[f"discord:{channel}"]) for channel in channels),
        calls=sum(1 for c in api.calls if c.channel_id in set(channels)),
        refused=len(refused),
        refused_own=sum(1 for c in refused if _is_write(c)),
        took_s=0.0,
    )


async def run(channels: int, rounds: int, words: int, word_s: float) -> Figures:
    backend = InstantBackend(words, word_s)
    api = FakeDiscordApi(guilds=[busy_guild(channels)])  # Discord's own limits
    gate = WatchedGate()
    ids = [FIRST_CHANNEL + n for n in range(channels)]
    with tempfile.TemporaryDirectory() as folder:
        async with discord_stack(Path(folder), backend, api, gate) as adapter:
            began = time.monotonic()
            for round_ in range(rounds):
                for n, channel in enumerate(ids):
                    author = ev.USER + n
                    payload = ev.message_create(
                        f"question {round_} in channel {n}?",
                        channel=channel,
                        author=author,
                        mentions_bot=True,
                    )
                    api.push("MESSAGE_CREATE", payload)
                await adapter.handled((round_ + 1) * channels)
                await adapter.idle()
            took = time.monotonic() - began
    figures = measure(api, backend, gate, ids)
    figures.took_s = took
    return figures


async def bench(channels: int, rounds: int, words: int, word_ms: float) -> bool:
    print(
        f"{channels} channels x {rounds} rounds, {words}-word answers (one word every "
        f"{word_ms} ms), default settings, Discord's limits (5 per 5 s per channel, 50/s)"
    )
    async with asyncio.timeout(GUARD_S):
        figures = await run(channels, rounds, words, word_ms / 1000)
    figures.print()
    checks = [
        ("0 429s on Parley's own sends and edits", figures.refused_own == 0),
        (
            f"first visible update within {TARGET_FIRST_UPDATE_MS:.0f} ms of the first token "
            "(p99, budget allowing)",
            bool(figures.latencies_ms) and _p99(figures.latencies_ms) <= TARGET_FIRST_UPDATE_MS,
        ),
    ]
    for what, ok in checks:
        print(f"target {what}: {'ok' if ok else 'MISSED'}")
    return all(ok for _, ok in checks)


def main() -> bool:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--channels", type=positive_int, default=50)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--words", type=positive_int, default=500)
    parser.add_argument("--word-ms", type=non_negative_float, default=5.0)
    args = parser.parse_args()
    # The bench chooses its settings: Parley settings from the environment must not leak in.
    for name in [k for k in os.environ if k.startswith("PARLEY_")]:
        del os.environ[name]
    return asyncio.run(bench(args.channels, args.rounds, args.words, args.word_ms))


if __name__ == "__main__":
    run_main("bench.discord_bench", main)
