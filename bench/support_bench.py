"""The support channel under load: one worker, 500 visitors with open event streams, 50
turns a second, an instant backend, PostgreSQL + Redis.

    python -m bench.support_bench [--visitors 500] [--rate 50] [--seconds 10]

The worker runs in a child process (`parley`'s real app, the support adapter, uvicorn), so its
memory is its own; the visitors (httpx, httpx-sse) run in this one. Figures:

    first delta   time from the model's first token (the instant backend writes its wall-clock
                  time into that token) to the visitor's receipt of the first `delta` event
    turn time     POST /v1/messages sent -> `answer` event received, against the console path
                  on the same store: Intake.submit -> the console sink has the whole answer,
                  the same backend, the same PostgreSQL and Redis, the same pace
    memory        the worker's resident memory with every stream open and idle, less before
                  they opened, per stream

Targets, fixed before measuring (issue 15):
    turn time (median) <= 1.5 x the console path's median
    first delta p99    <= 50 ms after the model's first token
    memory per idle open stream < 64 KB
Exit status 1 when one is missed, 2 when PostgreSQL or Redis cannot be reached or the
benchmark fails.

Service addresses: PARLEY_BENCH_POSTGRES_URL (admin URL; a database parley_bench_<random> is
made and dropped) and PARLEY_BENCH_REDIS_URL (keys under a random prefix, deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bench.entry import positive_float, positive_int, run_main
from bot.types import ChatMessage, ConversationKey, Incoming, User

DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
ORIGIN = "https://bench.example"
SECRET = "support-bench-secret-support-bench-secret"

TURN_RATIO_TARGET = 1.5
FIRST_DELTA_P99_TARGET_MS = 50.0
STREAM_MEMORY_TARGET_KB = 64.0


class InstantBackend:
    """Answers at once in three chunks; the first carries the wall-clock time it was made."""

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("instant", "instant", 32768, exact_token_counts=False)

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(estimate_tokens(m.content) + 4 for m in messages)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        yield Chunk(text=f"[{time.time():.6f}]")
        yield Chunk(text=" Your order ships")
        yield Chunk(text=" tomorrow.")
        yield Chunk(usage=Usage(0, 8), finish_reason="stop")

    async def aclose(self) -> None:
        return None


def _settings(database_url: str, redis_url: str, prefix: str, port: int = 8080) -> Any:
    from bot.settings import load_settings

    return load_settings(
        None,
        database={"url": database_url, "pool_size": 20},
        redis={"url": redis_url, "key_prefix": prefix, "max_connections": 200},
        knowledge={"load_sample": False, "semantic": False},
        conversation={"rate_limit_messages": 0},
        adapters=["support"],
        http={"host": "127.0.0.1", "port": port},
        # Every visitor of the benchmark connects from 127.0.0.1: no per-address caps.
        support={
            "token_secret": SECRET,
            "ip_requests": 10**6,
            "visitor_messages": 10**6,
            "streams_per_address": 10**6,
        },
    )


# -- the worker (child process) -------------------------------------------------------------


async def serve(database_url: str, redis_url: str, prefix: str) -> None:
    """The worker as `parley run` serves it: the kit's HttpHost (adapters/kit/http.py)."""
    from adapters.kit.runner import host_for
    from adapters.support.adapter import SupportAdapter
    from bot.app import Parley

    port = free_port()
    settings = _settings(database_url, redis_url, prefix, port)
    async with Parley(settings, backend=InstantBackend()) as app:  # type: ignore[arg-type]
        section = settings.section("support")
        host = host_for(app)
        adapter = SupportAdapter(host, section)
        app.intake.register("support", adapter, section.access)
        async with adapter:
            serving = asyncio.create_task(host.http.serve())
            async with httpx.AsyncClient() as probe:
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await probe.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                            break
                    await asyncio.sleep(0.05)
            print(f"ready {port}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the visitors (this process) ------------------------------------------------------------


@dataclass
class Turn:
    posted: float
    first_delta_ms: float | None = None
    answered: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Visitor:
    id: str
    token: str
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    turn: Turn | None = None


_STAMP = re.compile(r"\[([0-9.]+)\]")


async def watch(client: httpx.AsyncClient, visitor: Visitor) -> None:
    """One visitor's open stream: times the first delta and the answer of its turn."""
    params = {"token": visitor.token}
    async with aconnect_sse(client, "GET", "/v1/events", params=params) as source:
        source.response.raise_for_status()
        visitor.opened.set()
        async for event in source.aiter_sse():
            turn = visitor.turn
            if turn is None or not event.data:
                continue
            if event.event == "delta" and turn.first_delta_ms is None:
                # The first delta starts with the time stamp the model's first token carries;
                # the chunks after it may come in the same event (the outbox sends what is
                # ready together), so it is read from the front, not taken whole.
                stamp = _STAMP.match(event.json()["text"])
                if stamp is None:
                    raise ValueError("the first delta does not start with the model's stamp")
                turn.first_delta_ms = (time.time() - float(stamp.group(1))) * 1000
            elif event.event == "answer":
                turn.answered = time.perf_counter()
                turn.done.set()


async def paced(count: int, rate: float, start: Any) -> list[asyncio.Task[Any]]:
    """Start `count` jobs at `rate` a second (start(n) returns the coroutine)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks = []
    for n in range(count):
        await asyncio.sleep(max(0.0, began + n / rate - loop.time()))
        tasks.append(asyncio.create_task(start(n)))
    return tasks


async def support_run(
    url: str, site_key: str, pid: int, visitors: int, rate: float, seconds: float
) -> dict[str, Any]:
    # Streams and requests on clients of their own: httpcore's pool looks through all its
    # connections for each request, which 500 open streams would make the client's cost.
    many = httpx.Limits(max_connections=visitors + 50, max_keepalive_connections=visitors + 50)
    headers = {"Origin": ORIGIN}
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=many) as streams,
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client,
    ):
        gate = asyncio.Semaphore(50)

        async def new_visitor(_: int) -> Visitor:
            async with gate:
                made = await client.post("/v1/visitors", headers={"X-Parley-Site-Key": site_key})
                made.raise_for_status()
                return Visitor(made.json()["visitor_id"], made.json()["token"])

        people = await asyncio.gather(*(new_visitor(n) for n in range(visitors)))

        async def turn(visitor: Visitor, n: int) -> Turn:
            visitor.turn = current = Turn(time.perf_counter())
            auth = {"Authorization": f"Bearer {visitor.token}"}
            posted = await client.post("/v1/messages", headers=auth, json={"text": f"q{n}"})
            posted.raise_for_status()
            async with asyncio.timeout(30):
                await current.done.wait()
            return current

        # Warm-up: code paths, connection pools, caches; not measured.
        warm = people[:20]
        watchers = [asyncio.create_task(watch(streams, v)) for v in warm]
        await asyncio.gather(*(v.opened.wait() for v in warm))
        await asyncio.gather(*(turn(v, n) for n, v in enumerate(warm)))
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await asyncio.sleep(1.0)
        for v in warm:
            v.opened.clear()

        before = rss_kb(pid)
        watchers = [asyncio.create_task(watch(streams, v)) for v in people]
        async with asyncio.timeout(60):
            await asyncio.gather(*(v.opened.wait() for v in people))
        await asyncio.sleep(2.0)  # idle: what stays is what an open stream costs
        after = rss_kb(pid)

        count = int(rate * seconds)
        cpu_before = cpu_s(pid)
        tasks = await paced(count, rate, lambda n: turn(people[n % len(people)], n))
        turns = await asyncio.gather(*tasks)
        cpu_per_turn_ms = (cpu_s(pid) - cpu_before) / count * 1000
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return {
        "turn_ms": [((t.answered or 0) - t.posted) * 1000 for t in turns],
        "first_delta_ms": [t.first_delta_ms for t in turns if t.first_delta_ms is not None],
        "memory_kb": (after - before) / visitors,
        "cpu_per_turn_ms": cpu_per_turn_ms,
        "rss_before_kb": before,
        "rss_after_kb": after,
    }


class ConsoleSink:
    """The console path's end: the whole answer in hand, as the terminal prints it."""

    def __init__(self) -> None:
        self.finished: dict[str, asyncio.Event] = {}

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        _ = "".join([c async for c in chunks])
        self.finished[key.chat_id].set()

    async def is_admin(self, incoming: Incoming) -> bool:
        return False


async def console_run(
    database_url: str, redis_url: str, prefix: str, visitors: int, rate: float, seconds: float
) -> tuple[list[float], float]:
    from bot.app import Parley
    from bot.policy import AccessRules

    settings = _settings(database_url, redis_url, prefix)
    sink = ConsoleSink()
    async with Parley(settings, backend=InstantBackend()) as app:  # type: ignore[arg-type]
        app.intake.register("console", sink, AccessRules())

        async def turn(n: int) -> float:
            chat = f"console-{n % visitors}"
            sink.finished[chat] = done = asyncio.Event()
            incoming = Incoming(
                ConversationKey("console", chat), User("console", chat), f"q{n}",
                idempotency_key=f"console:{uuid.uuid4().hex}",
            )  # fmt: skip
            began = time.perf_counter()
            await app.intake.submit(incoming)
            async with asyncio.timeout(30):
                await done.wait()
            return (time.perf_counter() - began) * 1000

        await asyncio.gather(*(turn(n) for n in range(20)))  # warm-up
        count = int(rate * seconds)
        cpu_before = cpu_s(os.getpid())
        tasks = await paced(count, rate, turn)
        times = list(await asyncio.gather(*tasks))
        return times, (cpu_s(os.getpid()) - cpu_before) / count * 1000


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: what a turn costs, whatever else
    shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[tuple[str, str, str]]:
    import asyncpg
    import redis.asyncio as aioredis

    admin = os.environ.get("PARLEY_BENCH_POSTGRES_URL", DEFAULT_PG_ADMIN)
    redis_url = os.environ.get("PARLEY_BENCH_REDIS_URL", DEFAULT_REDIS)
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    prefix = f"parley-bench-{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin, timeout=5)
    probe = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    await probe.ping()
    await conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rpartition('/')[0]}/{name}".replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield url, redis_url, prefix
    finally:
        async for key in probe.scan_iter(match=f"{prefix}:*"):
            await probe.delete(key)
        await probe.aclose()
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def make_site(database_url: str) -> str:
    from adapters.support.sites import SiteStore
    from bot.storage import migrate
    from bot.storage.database import create_engine

    await migrate.upgrade(database_url)
    engine = create_engine(database_url)
    try:
        site = await SiteStore(engine).add_site("bench", [ORIGIN])
    finally:
        await engine.dispose()
    return site.public_key


async def main(visitors: int, rate: float, seconds: float) -> int:
    try:
        stack = services()
        database_url, redis_url, prefix = await stack.__aenter__()
    except Exception as exc:
        print(f"support_bench: PostgreSQL or Redis not reachable: {type(exc).__name__}: {exc}")
        return 2
    try:
        site_key = await make_site(database_url)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.support_bench", "--serve",
            database_url, redis_url, prefix,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None and child.stdin is not None
        ready = (await child.stdout.readline()).decode().split()
        if not ready or ready[0] != "ready":
            print("support_bench: the worker did not start")
            return 2
        url = f"http://127.0.0.1:{ready[1]}"
        try:
            support = await support_run(url, site_key, child.pid, visitors, rate, seconds)
        finally:
            child.stdin.close()
            await child.wait()
        console, console_cpu = await console_run(
            database_url, redis_url, prefix, visitors, rate, seconds
        )
    finally:
        await stack.__aexit__(None, None, None)
    return report(support, console, console_cpu, visitors, rate, seconds)


def report(
    support: dict[str, Any],
    console: list[float],
    console_cpu: float,
    visitors: int,
    rate: float,
    seconds: float,
) -> int:
    turn_ms, first = support["turn_ms"], support["first_delta_ms"]
    turn_median, console_median = statistics.median(turn_ms), statistics.median(console)
    ratio = turn_median / console_median
    first_p99 = percentile(first, 0.99)
    memory = support["memory_kb"]
    print(f"support API: {visitors} open streams, {rate:g} turns/s for {seconds:g} s, "
          f"{len(turn_ms)} turns, PostgreSQL + Redis, instant backend")  # fmt: skip
    print(
        f"  first delta after the model's first token: median {statistics.median(first):.1f} "
        f"ms, p99 {first_p99:.1f} ms   (target p99 <= {FIRST_DELTA_P99_TARGET_MS:g} ms)"
    )
    print(
        f"  turn time: support median {turn_median:.1f} ms (p99 "
        f"{percentile(turn_ms, 0.99):.1f}), console path median {console_median:.1f} ms (p99 "
        f"{percentile(console, 0.99):.1f}): {ratio:.2f}x   (target <= {TURN_RATIO_TARGET:g}x)"
    )
    print(f"  memory per idle open stream: {memory:.1f} KB (worker RSS "
          f"{support['rss_before_kb'] / 1024:.0f} -> {support['rss_after_kb'] / 1024:.0f} MB)"
          f"   (target < {STREAM_MEMORY_TARGET_KB:g} KB)")  # fmt: skip
    print(f"  CPU per turn: support worker {support['cpu_per_turn_ms']:.1f} ms, console path "
          f"{console_cpu:.1f} ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(the visitors' client shares the machine)")  # fmt: skip
    missed = [
        name
        for name, ok in (
            ("turn time", ratio <= TURN_RATIO_TARGET),
            ("first delta p99", first_p99 <= FIRST_DELTA_P99_TARGET_MS),
            ("memory per stream", memory < STREAM_MEMORY_TARGET_KB),
        )
        if not ok
    ]
    print("targets: " + ("all met" if not missed else "MISSED: " + ", ".join(missed)))
    return 1 if missed else 0


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.support_bench")
    parser.add_argument("--visitors", type=positive_int, default=500)
    parser.add_argument("--rate", type=positive_float, default=50.0)
    parser.add_argument("--seconds", type=positive_float, default=10.0)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("PARLEY_") and "BENCH" not in k]:
        del os.environ[name]  # the bench chooses its own setup
    if args.serve:
        asyncio.run(serve(*args.serve))
        return 0
    return asyncio.run(main(args.visitors, args.rate, args.seconds))


if __name__ == "__main__":
    run_main("bench.support_bench", cli)
