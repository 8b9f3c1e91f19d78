"""Parley next to vLLM's OpenAI-compatible server: N conversations at once (issue 19).

    .venv/bin/python -m bench.concurrency                # N = 1, 8, 32, 64; 6 turns (~10 min)
    .venv/bin/python -m bench.concurrency --quick        # a smoke run: N = 1, 8; 2 turns; 2 rounds
    .venv/bin/python -m bench.concurrency --profile /tmp/parley-64.pstats
    .venv/bin/python -m bench.concurrency --server URL --model-dir DIR   # a running server

Targets, fixed before measuring (bench/README.md), in one run:
- wall time: Parley <= 1.05x the bare streaming client at each N of 1, 8, 32 and 64
  (the median of the per-round ratios; printed with their min-max range);
- added CPU per turn at 64 <= 1.2x that at 1. Added CPU is this process's CPU seconds per turn
  in a Parley round minus those in the bare round it is paired with, the median over rounds
  (with other sizes: the largest N against the smallest).

Set-up: vLLM's server on the tiny model (tests/tinymodel.py) with prefix caching off, so that
neither side profits from the other's cached prompts, pinned to one core and this process to
another (when the machine has two or more; `--no-pin` leaves both unpinned). Parley runs with
default settings apart from PostgreSQL (a fresh database made by the migrations and dropped at
the end), Redis (a key prefix of its own, deleted at the end) and the backend: kind openai as
the factory builds it (retries, breaker, its bounded pool), the model's tokenizer loaded here
(`backend.tokenizer`, no `/tokenize` request per count), temperature 0, 32 reply tokens. Each
conversation is its own user (the per-user rate limit never answers for the model), and every
turn is awaited with `manager.handle`, its reply read to the end by a sink. Once started,
Parley's heap is settled as `parley run` settles it (`bot.cli_commands.settle_heap`).

First, untimed, two one-turn conversations through each side (connections, pools, the first
requests). Then for each N, one untimed round per side (Parley, then bare with its requests),
and `--rounds` timed rounds in ABBA order: Parley then bare in even rounds, bare then Parley in
odd ones, so that drift on a shared machine hits both alike. Without the untimed round the
first batch of N and the first long prompts (the server's first steps at those sizes) fell on
Parley, in the first half of round 0.
- A Parley round is N new conversations at once, the turns of each in order. Every chat request
  Parley makes is noted (`bench.prefix_cache.Recording` keeps the request only; the reply
  streams straight from the factory's backend). A round in which a turn did not reach the model
  fails the bench.
- A bare round sends the requests of the first Parley round of that N (round 0 starts with
  Parley) to `/v1/chat/completions` with one `httpx.AsyncClient` with the pool limits Parley's
  client has: N conversations at once, each reply streamed and every event parsed to the end.
- Greedy sampling keeps the work equal: the prompt and generated tokens the server counted
  (`/metrics`) are printed per side, and Parley rounds whose prompts differ from the first are
  counted.
Printed per N: the ratios, the median wall and CPU times, the requests the server logged per
turn by path and the TCP connections they came on (its access log), and the load average
before and after: on a shared machine, read the figures with it.

`--profile PATH` adds one Parley round at the largest N under cProfile after the timed ones,
timed in this process's CPU seconds (waiting for the server is not Parley's cost), writes it
as a pstats file and prints the top 25 functions by cumulative and by own time.

Exit 0 when every target is met; 1 when one is missed or the bench fails (one line, no
traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from backends.factory import build_resilient_backend
from backends.openai_compat import connection_limits
from bench.entry import positive_int, run_main
from bench.prefix_cache import CHAT_PATH, Recording, Seen, metric, serving
from bench.turn_overhead import REDIS_URL, Sink, drop_keys, fresh_database
from bot.app import Parley
from bot.cli_commands import settle_heap
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, User
from tests.fixtures_vllm import SERVED_MODEL
from tests.tinymodel import build_tiny_model

WALL_TARGET = 1.05  # Parley's wall time over the bare client's, at every N
CPU_GROWTH_TARGET = 1.2  # added CPU per turn at the largest N over that at the smallest
SIZES = [1, 8, 32, 64]
TURNS = 6
ROUNDS = 3
MAX_TOKENS = 32
QUESTIONS = ["hello there", "what is the weather like", "and tomorrow?", "thanks a lot"]
ACCESS_LINE = re.compile(r'(\d+\.\d+\.\d+\.\d+:\d+) - "(\w+) (\S+) HTTP')
SERVER_TOKENS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")


class BenchFailed(Exception):
    """The two sides did not do the same work: the figures would compare nothing."""


def settings_for(base_url: str, db_url: str, prefix: str, model_dir: Path) -> Settings:
    return Settings(
        database={"url": db_url},  # type: ignore[arg-type]
        redis={"url": REDIS_URL, "key_prefix": prefix},  # type: ignore[arg-type]
        backend={  # type: ignore[arg-type]
            "kind": "openai",
            "base_url": base_url,
            "model": SERVED_MODEL,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "tokenizer": str(model_dir),
        },
    )


class AccessLog:
    """The server's access log, read from where the last read stopped (None: a server this
    bench did not start, whose log it cannot read)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._offset = 0

    def since_last(self) -> tuple[Counter[str], int]:
        """Requests per "METHOD /path" and distinct client connections since the last call."""
        if self.path is None:
            return Counter(), 0
        with self.path.open("rb") as log:
            log.seek(self._offset)
            text = log.read().decode(errors="replace")
            self._offset = log.tell()
        counts: Counter[str] = Counter()
        peers: set[str] = set()
        for peer, method, path in ACCESS_LINE.findall(text):
            counts[f"{method} {path}"] += 1
            peers.add(peer)
        return counts, len(peers)


@dataclass
class Side:
    """What one side (Parley or bare) did over the timed rounds of one N."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    tokens: list[float] = field(default_factory=lambda: [0.0, 0.0])  # prompt, generated


class Bench:
    """One Parley app and one bare client against one server, as long-running processes."""

    def __init__(self, app: Parley, recording: Recording, url: str, log: AccessLog) -> None:
        self.app = app
        self.recording = recording
        self.log = log
        concurrency = app.settings.backend.concurrency
        self.http = httpx.AsyncClient(
            base_url=url, timeout=300, limits=connection_limits(concurrency)
        )
        self.probe = httpx.AsyncClient(base_url=url, timeout=30)  # /metrics, between rounds
        self.mismatched = 0

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.probe.aclose()

    async def parley(self, n: int, turns: int, tag: str) -> list[list[Seen]]:
        """N conversations through Parley; the chat requests each made, in order."""
        self.recording.seen.clear()
        self.recording.sessions.clear()

        async def conversation(i: int) -> None:
            key, user = ConversationKey("bench", f"{tag}-{i}"), User("bench", f"{tag}-{i}")
            for t in range(turns):
                text = f"{QUESTIONS[t % len(QUESTIONS)]} ({i})"
                await self.app.manager.handle(Incoming(key, user, text, f"{tag}-{i}-{t}"))

        await asyncio.gather(*(conversation(i) for i in range(n)))
        by_session: dict[str, list[Seen]] = {f"bench:{tag}-{i}": [] for i in range(n)}
        for seen, session in zip(self.recording.seen, self.recording.sessions, strict=True):
            by_session.setdefault(session, []).append(seen)
        made = sum(map(len, by_session.values()))
        if made != n * turns:
            raise BenchFailed(f"N={n}: Parley made {made} chat requests for {n * turns} turns")
        return list(by_session.values())

    async def bare(self, prompts: list[list[Seen]]) -> None:
        """The captured requests, sent as a bare streaming client sends them."""

        async def turn(seen: Seen) -> None:
            body = {
                "model": SERVED_MODEL,
                "messages": [m.as_openai() for m in seen.messages],
                "max_tokens": seen.max_tokens,
                "temperature": seen.temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            parts: list[str] = []
            async with self.http.stream("POST", CHAT_PATH, json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:]).get("choices") or []:
                            parts.append(choice.get("delta", {}).get("content") or "")

        async def conversation(turns: list[Seen]) -> None:
            for seen in turns:
                await turn(seen)

        await asyncio.gather(*(conversation(turns) for turns in prompts))

    async def timed(self, side: Side, run: Callable[[], Awaitable[None]]) -> None:
        before = [await metric(self.probe, name) for name in SERVER_TOKENS]
        self.log.since_last()
        wall, cpu = time.perf_counter(), time.process_time()
        await run()
        side.cpu.append(time.process_time() - cpu)
        side.wall.append(time.perf_counter() - wall)
        await asyncio.sleep(0.3)  # the last request's access log line and counters
        counts, connections = self.log.since_last()
        side.requests += counts
        side.connections += connections
        for i, name in enumerate(SERVER_TOKENS):
            side.tokens[i] += await metric(self.probe, name) - before[i]


def same_prompts(a: list[list[Seen]], b: list[list[Seen]]) -> bool:
    return [[s.messages for s in c] for c in a] == [[s.messages for s in c] for c in b]


async def measure(bench: Bench, n: int, turns: int, rounds: int) -> tuple[Side, Side]:
    """`rounds` timed rounds per side in ABBA order; the first Parley round's requests are
    what every bare round sends."""
    parley, bare = Side(), Side()
    # Untimed, both sides once at this N first: the round that first sends a batch of N and
    # prompts of up to `turns` turns (the server's first steps at those sizes, the store's first
    # statements of a later turn on each connection) would otherwise be a Parley round, round
    # 0's first half.
    await bench.bare(await bench.parley(n, turns, f"n{n}-warm"))
    sent: list[list[list[Seen]]] = []  # per Parley round, compared after the timing
    for r in range(rounds):

        async def parley_round(tag: str = f"n{n}-r{r}") -> None:
            sent.append(await bench.parley(n, turns, tag))

        async def bare_round() -> None:
            await bench.bare(sent[0])

        for side, one in [(parley, parley_round), (bare, bare_round)][:: 1 if r % 2 == 0 else -1]:
            await bench.timed(side, one)
    bench.mismatched += sum(not same_prompts(prompts, sent[0]) for prompts in sent[1:])
    return parley, bare


@dataclass
class Row:
    """The figures of one N."""

    n: int
    ratios: list[float]
    added_cpu_ms: list[float]  # per turn, per round pair

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def added_ms(self) -> float:
        return statistics.median(self.added_cpu_ms)


def summarise(n: int, turns: int, parley: Side, bare: Side, logged: bool) -> Row:
    ratios = [p / b for p, b in zip(parley.wall, bare.wall, strict=True)]
    added = [1000 * (p - b) / (n * turns) for p, b in zip(parley.cpu, bare.cpu, strict=True)]
    row = Row(n, ratios, added)
    cpu_p, cpu_b = (1000 * statistics.median(s.cpu) / (n * turns) for s in (parley, bare))
    print(
        f"{n:>4}  {row.ratio:6.3f} {min(ratios):6.3f} {max(ratios):6.3f}"
        f"  {statistics.median(parley.wall):8.3f} {statistics.median(bare.wall):8.3f}"
        f"  {cpu_p:7.2f} {cpu_b:7.2f}  {row.added_ms:7.2f}"
    )
    order = " ".join(f"{'PB' if r % 2 == 0 else 'BP'}:{x:.3f}" for r, x in enumerate(ratios))
    print(f"        per round (order:ratio): {order}")
    print(f"        added CPU ms per turn per round: {' '.join(f'{a:.2f}' for a in added)}")
    total = n * turns * len(ratios)
    for name, side in (("parley", parley), ("bare", bare)):
        paths = ", ".join(f"{p} {c / total:.2f}" for p, c in sorted(side.requests.items()))
        logged_line = (
            f"requests per turn: {paths}; connections per round "
            f"{side.connections / len(ratios):.1f}"
            if logged
            else "no access log"
        )
        print(
            f"        {name}: server tokens prompt/generated {side.tokens[0]:.0f}/"
            f"{side.tokens[1]:.0f}; {logged_line}"
        )
    return row


def verdicts(rows: list[Row]) -> list[tuple[bool | None, str]]:
    """(met, line) per target; None where the sizes run do not allow it."""
    out: list[tuple[bool | None, str]] = [
        (
            row.ratio <= WALL_TARGET,
            f"wall time at N={row.n}: Parley / bare client {row.ratio:.3f}x "
            f"({min(row.ratios):.3f}-{max(row.ratios):.3f}), target <= {WALL_TARGET}x",
        )
        for row in rows
    ]
    low, high = min(rows, key=lambda r: r.n), max(rows, key=lambda r: r.n)
    if low.n == high.n:
        return [*out, (None, "added CPU per turn: needs two sizes")]
    growth = high.added_ms / low.added_ms if low.added_ms > 0 else float("inf")
    out.append(
        (
            growth <= CPU_GROWTH_TARGET,
            f"added CPU per turn at N={high.n} {high.added_ms:.2f} ms <= {CPU_GROWTH_TARGET}x "
            f"that at N={low.n} {low.added_ms:.2f} ms (x{growth:.2f})",
        )
    )
    return out


async def profile_round(bench: Bench, n: int, turns: int, path: Path) -> None:
    # Timed in CPU seconds of this process: time spent waiting for the server (in epoll) or
    # for a core another process holds is not Parley's cost.
    profiler = cProfile.Profile(time.process_time)
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    await bench.parley(n, turns, f"n{n}-profile")
    profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    profiler.dump_stats(path)
    print(
        f"\nprofile of one Parley round at N={n} ({n * turns} turns; {wall:.1f} s, {cpu:.1f} CPU s"
        f" under the profiler) written to {path}; times below are CPU seconds"
    )
    by_package = own_time_by_package(profiler)
    total = sum(by_package.values())
    print("own CPU by package (a built-in function's time counted to its caller's package):")
    for package, seconds in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {package:28} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    print(
        "cumulative times below overstate frames around SQLAlchemy's greenlet switches, which"
        " cProfile cannot follow; own times (tottime) add up to the total"
    )
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    for order in ("cumulative", "tottime"):
        print(f"top 25 by {order}:")
        stats.sort_stats(order).print_stats(25)


def own_time_by_package(profiler: cProfile.Profile) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for entry in profiler.getstats():
        if isinstance(entry.code, str):
            continue  # a built-in: counted below, from each caller's subcalls
        package = package_of(entry.code.co_filename)
        totals[package] += entry.inlinetime
        for sub in entry.calls or []:
            if isinstance(sub.code, str):
                totals[package] += sub.inlinetime
    return totals


def package_of(filename: str) -> str:
    """ "sqlalchemy", "asyncio (stdlib)", "bot (Parley)": where a function's file lives."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    here = Path(__file__).resolve().parents[1]
    if Path(filename).is_relative_to(here):
        return f"{Path(filename).relative_to(here).parts[0]} (Parley)"
    stdlib = [i for i, part in enumerate(parts) if re.fullmatch(r"python3\.\d+", part)]
    if stdlib and stdlib[-1] + 1 < len(parts):
        return f"{parts[stdlib[-1] + 1].removesuffix('.py')} (stdlib)"
    return filename


def pin() -> str | None:
    """The server's core, this process on another one; None with fewer than two cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    os.sched_setaffinity(0, cores[1:2])
    print(f"pinned: vLLM server on CPU {cores[0]}, this process on CPU {cores[1]}")
    return str(cores[0])


async def run(args: argparse.Namespace) -> list[tuple[bool | None, str]]:
    folder = Path(tempfile.mkdtemp(prefix="parley-concurrency-"))
    if args.server:
        model_dir, server_cpus, log = args.model_dir, None, AccessLog(None)
    else:
        model_dir = build_tiny_model(folder / "model")
        server_cpus = None if args.no_pin else pin()
        log = AccessLog(folder / "server.log")  # where `serving` writes the server's output
    prefix = f"parley-bench-{uuid.uuid4().hex[:8]}"
    with serving(args.server, model_dir, ["--no-enable-prefix-caching"], server_cpus) as url:
        try:
            async with fresh_database() as db_url:
                settings = settings_for(url, db_url, prefix, model_dir)
                # Only the requests are noted: replies stream as the factory's backend streams.
                backend = build_resilient_backend(settings.backend)
                assert backend is not None
                recording = Recording(backend, follow=False)
                async with Parley(settings, backend=recording) as app:  # type: ignore[arg-type]
                    app.manager.attach("bench", Sink())  # type: ignore[arg-type]
                    settle_heap()  # as `parley run` does once started
                    bench = Bench(app, recording, url, log)
                    try:
                        rows = await measure_all(bench, args)
                    finally:
                        await bench.aclose()
        finally:
            await drop_keys(prefix)
    return verdicts(rows)


async def measure_all(bench: Bench, args: argparse.Namespace) -> list[Row]:
    await bench.bare(await bench.parley(2, 1, "warmup"))  # connections, pools, first requests
    print(
        f"PostgreSQL + Redis, local token counts; {args.turns} turns per conversation, "
        f"{args.rounds} rounds (ABBA), {MAX_TOKENS} reply tokens"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    print(
        "   N  ratio: median   min    max   wall: parley s  bare s  CPU ms/turn: P      B   added"
    )
    rows = []
    for n in args.sizes:
        parley, bare = await measure(bench, n, args.turns, args.rounds)
        rows.append(summarise(n, args.turns, parley, bare, bench.log.path is not None))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if bench.mismatched:
        print(f"{bench.mismatched} Parley rounds sent other prompts than the capture run")
    if args.profile:
        await profile_round(bench, max(args.sizes), args.turns, args.profile)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=SIZES)
    parser.add_argument("--turns", type=positive_int, default=TURNS)
    parser.add_argument(
        "--rounds", type=positive_int, default=ROUNDS, help="timed rounds per side and N"
    )
    parser.add_argument("--quick", action="store_true", help="N = 1, 8; 2 turns; 2 rounds")
    parser.add_argument("--no-pin", action="store_true", help="leave server and bench unpinned")
    parser.add_argument("--profile", type=Path, help="write a pstats file of one round at max N")
    parser.add_argument(
        "--server",
        help="base URL of a running vLLM server on the tiny model (tests/tinymodel.py) instead "
        "of starting one: not pinned, prefix caching as it was started, no access log",
    )
    parser.add_argument("--model-dir", type=Path, help="with --server: the model's folder")
    args = parser.parse_args()
    if bool(args.server) != bool(args.model_dir):
        parser.error("--server and --model-dir go together")
    if args.quick:
        args.sizes, args.turns, args.rounds = [1, 8], 2, 2
    # One line per request at INFO otherwise, on both sides: not what either client costs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results = asyncio.run(run(args))
    for met, line in results:
        print({True: "PASS ", False: "MISS ", None: "SKIP "}[met] + line)
    return 0 if all(met is not False for met, _ in results) else 1


if __name__ == "__main__":
    run_main("bench.concurrency", main)
