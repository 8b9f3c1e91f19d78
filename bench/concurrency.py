"""N concurrent conversations through Parley against the same prompts sent straight to vLLM.

    .venv/bin/python -m bench.concurrency                        # N = 1, 8, 64; 3 turns; 8 rounds
    .venv/bin/python -m bench.concurrency --sizes 1 8 --turns 2 --rounds 4
    .venv/bin/python -m bench.concurrency --pin                  # server and clients apart
    .venv/bin/python -m bench.concurrency --pin --counts local   # Parley counts tokens itself

Starts vLLM's OpenAI-compatible server on the tiny model with prefix caching off, so neither
side profits from the other's cached prompts. Parley runs with default settings apart from the
backend (kind openai as the factory builds it, temperature 0, 32 reply tokens): an operator
running plain chat. Each conversation is its own user, so the per-user rate limit (default 20
messages a minute) never answers for the model. One Parley app (one SQLite file) and one
direct `httpx.AsyncClient` serve the whole run, as a long-running bot and client would.

For each N:
1. Capture and warm-up (untimed): N conversations through Parley, recording every request it
   made to the model (`bench.prefix_cache.Recording`), then the same requests sent directly.
2. `--rounds` timed rounds in ABBA order: Parley then direct in even rounds, direct then
   Parley in odd ones, so drift on a shared machine hits both sides alike. A Parley round is N
   new conversations run concurrently (turns of one conversation in order, each awaited with
   `manager.handle`); a direct round sends the captured requests straight to
   `/v1/chat/completions`, N conversations concurrently, each streamed and read to the end.
   Greedy sampling keeps the replies, and so the work, the same; rounds whose Parley prompts
   differ from the captured ones are counted.
3. Printed per N: the median of the per-round ratios Parley / direct (target <= 1.05) with
   their min and max; `best-of`, the fastest Parley round over the fastest direct round (the
   rounds least disturbed by other work on the machine); the median wall times; the CPU
   seconds this process spent per round on each side (Parley's own work; the direct
   client's parsing); the tokens the server reported per round on each side (equal work);
   and per side the HTTP requests the server received per conversation turn, by path, with
   the TCP connections they came on. Requests are counted twice: by the clients' transports
   (`Tap`) and in the server's access log (client address and port give the connections).
   The load average is printed before and after: on a shared machine read it with the
   figures.

A benchmark reports; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.prefix_cache import CHAT_PATH, Recording, Seen, Tap, serving, tapped_backend
from bot.app import Parley
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink
from tests.fixtures_vllm import SERVED_MODEL
from tests.tinymodel import build_tiny_model

MAX_TOKENS = 32
QUESTIONS = ["hello there", "what is the weather like", "and tomorrow?", "thanks a lot"]
ACCESS_LINE = re.compile(r'(\d+\.\d+\.\d+\.\d+:\d+) - "(\w+) (\S+) HTTP')


def settings_for(base_url: str, folder: Path, tokenizer: str = "") -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{folder}/parley.db"},  # type: ignore[arg-type]
        backend={  # type: ignore[arg-type]
            "kind": "openai",
            "base_url": base_url,
            "model": SERVED_MODEL,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "tokenizer": tokenizer,
        },
    )


class AccessLog:
    """The server's access log, read from where the last read stopped."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._offset = 0

    def since_last(self) -> tuple[Counter[str], int]:
        """Requests per "METHOD /path" and distinct client connections since the last call."""
        if self._path is None or not self._path.exists():
            return Counter(), 0
        with self._path.open("rb") as log:
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
    """What one side (Parley or direct) did over the timed rounds of one N."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tap: Counter[str] = field(default_factory=Counter)
    server: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    tokens: list[tuple[int, int]] = field(default_factory=list)  # (prompt, completion)

    def per_turn(self, counts: Counter[str], turns: int) -> str:
        return ", ".join(f"{path} {n / turns:.2f}" for path, n in sorted(counts.items()))


class Bench:
    def __init__(self, app: Parley, recording: Recording, parley_tap: Tap, log: AccessLog):
        self.app = app
        self.recording = recording
        self.parley_tap = parley_tap
        self.log = log
        # The same connection limits as Parley's client (Tap), idle connections included:
        # dropped before vLLM's 5 s keep-alive closes them (the direct side has no retry, so
        # a connection reused as the server closes it would fail the round).
        self.direct_tap = Tap()
        self.http = httpx.AsyncClient(timeout=300, transport=self.direct_tap)
        self.mismatched = 0

    async def parley(self, base_url: str, n: int, turns: int, tag: str) -> list[list[Seen]]:
        """N conversations through Parley; the requests each made to the model, in order."""
        self.recording.seen.clear()
        self.recording.sessions.clear()

        async def conversation(i: int) -> None:
            key = ConversationKey("bench", f"{tag}-{i}")
            user = User("bench", f"{tag}-{i}")  # one person per conversation
            for t in range(turns):
                text = f"{QUESTIONS[t % len(QUESTIONS)]} ({i})"
                await self.app.manager.handle(Incoming(key, user, text, f"{key}-{t}"))

        await asyncio.gather(*(conversation(i) for i in range(n)))
        by_session: dict[str, list[Seen]] = {f"bench:{tag}-{i}": [] for i in range(n)}
        for seen, session in zip(self.recording.seen, self.recording.sessions, strict=True):
            by_session[session].append(seen)
        return list(by_session.values())

    async def direct(self, base_url: str, prompts: list[list[Seen]]) -> tuple[int, int]:
        """The requests sent straight to the server; (prompt, completion) tokens it reported."""
        work = [0, 0]

        async def conversation(turns: list[Seen]) -> None:
            for seen in turns:  # each request as Parley sent it
                body = {
                    "model": SERVED_MODEL,
                    "messages": [m.as_openai() for m in seen.messages],
                    "max_tokens": seen.max_tokens,
                    "temperature": seen.temperature,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                url = f"{base_url}{CHAT_PATH}"
                async with self.http.stream("POST", url, json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            event = json.loads(line[6:])  # parse like a client would
                            if event.get("usage"):
                                work[0] += event["usage"]["prompt_tokens"]
                                work[1] += event["usage"]["completion_tokens"]

        await asyncio.gather(*(conversation(turns) for turns in prompts))
        return work[0], work[1]


async def timed(
    side: Side, taps: Tap, log: AccessLog, run: Callable[[], Coroutine[Any, Any, Any]]
) -> Any:
    taps.counts.clear()
    log.since_last()
    wall, cpu = time.perf_counter(), time.process_time()
    result = await run()
    side.wall.append(time.perf_counter() - wall)
    side.cpu.append(time.process_time() - cpu)
    await asyncio.sleep(0.2)  # the access log line of the last request
    counts, connections = log.since_last()
    side.server += counts
    side.connections += connections
    side.tap += taps.counts
    return result


def work(prompts: list[list[Seen]]) -> tuple[int, int]:
    usages = [s.usage for c in prompts for s in c if s.usage is not None]
    return sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)


def same_prompts(a: list[list[Seen]], b: list[list[Seen]]) -> bool:
    return [[s.messages for s in c] for c in a] == [[s.messages for s in c] for c in b]


async def measure(bench: Bench, url: str, n: int, turns: int, rounds: int) -> tuple[Side, Side]:
    captured = await bench.parley(url, n, turns, f"n{n}-capture")
    await bench.direct(url, captured)
    chat_requests = sum(len(c) for c in captured)
    if chat_requests != n * turns:
        print(f"  N={n}: Parley made {chat_requests} model requests for {n * turns} turns")
    parley, direct = Side(), Side()
    for r in range(rounds):

        async def parley_round(r: int = r) -> list[list[Seen]]:
            return await bench.parley(url, n, turns, f"n{n}-r{r}")

        async def direct_round() -> tuple[int, int]:
            return await bench.direct(url, captured)

        for which in ("P", "D") if r % 2 == 0 else ("D", "P"):
            if which == "P":
                prompts = await timed(parley, bench.parley_tap, bench.log, parley_round)
                bench.mismatched += not same_prompts(prompts, captured)
                parley.tokens.append(work(prompts))
            else:
                direct.tokens.append(await timed(direct, bench.direct_tap, bench.log, direct_round))
    return parley, direct


def print_row(n: int, turns: int, rounds: int, parley: Side, direct: Side) -> None:
    ratios = [p / d for p, d in zip(parley.wall, direct.wall, strict=True)]
    best = min(parley.wall) / min(direct.wall)
    print(
        f"{n:>4}  {statistics.median(ratios):6.3f}  {min(ratios):6.3f}  {max(ratios):6.3f}"
        f"  {best:6.3f}"
        f"  {statistics.median(parley.wall):8.3f}  {statistics.median(direct.wall):8.3f}"
        f"  {statistics.median(parley.cpu):7.3f}  {statistics.median(direct.cpu):7.3f}"
    )
    order = " ".join(f"{'PD' if r % 2 == 0 else 'DP'}:{x:.2f}" for r, x in enumerate(ratios))
    print(f"        per round (order: ratio): {order}")
    tokens = " ".join(
        f"{p[0]}/{p[1]}-{d[0]}/{d[1]}" for p, d in zip(parley.tokens, direct.tokens, strict=True)
    )
    print(f"        tokens per round, prompt/completion Parley-direct: {tokens}")
    total = n * turns * rounds
    for name, side in (("parley", parley), ("direct", direct)):
        print(
            f"        {name}: per turn, client-counted: {side.per_turn(side.tap, total)}; "
            f"server log: {side.per_turn(side.server, total)}; "
            f"connections {side.connections / rounds:.1f} per round"
        )


async def run(
    sizes: list[int], turns: int, rounds: int, server: str | None, pin: bool, counts: str
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="parley-concurrency-"))
    model_dir = build_tiny_model(folder / "model")
    server_cpus = None
    if pin:
        # The server (API process and engine) on the first core, both clients on the others:
        # neither side's client work then takes CPU from the model, nor the model from it.
        cores = sorted(os.sched_getaffinity(0))
        server_cpus = str(cores[0])
        os.sched_setaffinity(0, cores[1:])
        print(f"pinned: vLLM server on CPU {server_cpus}, this process on {cores[1:]}")
    with serving(server, model_dir, ["--no-enable-prefix-caching"], server_cpus) as url:
        log = AccessLog(None if server else folder / "server.log")
        local = counts == "local"
        settings = settings_for(url, folder, str(model_dir) if local else "")
        if local:
            print("token counts: local (backend.tokenizer = the model folder): 1 request per turn")
        else:
            print("token counts: server (/tokenize): 2 requests per turn")
        parley_tap = Tap()
        recording = Recording(tapped_backend(settings.backend, parley_tap))
        async with Parley(settings, backend=recording) as app:  # type: ignore[arg-type]
            app.manager.attach("bench", CollectingSink())
            bench = Bench(app, recording, parley_tap, log)
            await bench.parley(url, 2, 1, "warmup")  # first requests, SQLite file, pools
            await bench.direct(url, await bench.parley(url, 2, 1, "warmup2"))
            print(f"{turns} turns per conversation, {rounds} rounds (ABBA), {MAX_TOKENS} tokens")
            print(
                f"load average before: {os.getloadavg()[0]:.2f} "
                f"(this machine: {os.cpu_count()} cores)"
            )
            print(
                "   N  ratio:  median     min     max  best-of  parley s  direct s"
                "  cpu P s  cpu D s"
            )
            for n in sizes:
                parley, direct = await measure(bench, url, n, turns, rounds)
                print_row(n, turns, rounds, parley, direct)
            await bench.http.aclose()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("target: median ratio <= 1.05 at every N")
    if bench.mismatched:
        print(f"{bench.mismatched} Parley rounds sent other prompts than the capture run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per side and N")
    parser.add_argument(
        "--server", help="base URL of a running vLLM server on the tiny model (no access log)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="vLLM server on the first core, this process on the others (needs 2+ cores)",
    )
    parser.add_argument(
        "--counts",
        choices=["server", "local"],
        default="server",
        help="server (default): Parley counts each message's tokens with /tokenize; local: "
        "with the model's tokenizer loaded in process (backend.tokenizer)",
    )
    args = parser.parse_args()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs at least 2 cores")
    asyncio.run(run(args.sizes, args.turns, args.rounds, args.server, args.pin, args.counts))


if __name__ == "__main__":
    main()
