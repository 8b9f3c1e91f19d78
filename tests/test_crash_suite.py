"""Exactly once under every fault, with real `parley run` workers (tests/crash_cluster.py).

Three webhook workers share PostgreSQL and Redis behind a load balancer that re-sends like
Telegram; users in private chats and groups ask tagged questions at a person's pace while the
test injects one fault. Afterwards, from what the users see: no question lost, none answered
twice, none out of order, no half answer left visible; the figures (including the longest
wait from acknowledgement to the first visible answer) are printed.

PARLEY_CRASH_RUNS=N runs each scenario N times (the issue asks for 5 before resolving).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.crash_cluster import Balancer, Cluster, Users, cluster, settle, watch_first_seen
from tests.slow_model import Flaky, SlowModel

# Three `parley run` workers, each with its pools (database.pool_size 10, and the relaxed
# and keeper engines): one such test of the run at a time (tests/conftest.py).
pytestmark = pytest.mark.many_connections

RUNS = range(int(os.environ.get("PARLEY_CRASH_RUNS", "1")))
CHATS = 16
PER_CHAT = 4
# Every question must be answered within this after the last was asked; a hang fails the
# test. A conversation of the flaky model can meet two hangs in a row (about 65 s each: the
# adaptive first-token limit, then a retry with the full one) and a group's flood limit.
SETTLE_WITHIN_S = 240.0

Fault = Callable[[Cluster], Awaitable[None]]


async def kill_three_times(group: Cluster) -> None:
    """SIGKILL mid-stream three times; restarted after the first two only."""
    for victim, restart in ((0, True), (1, True), (2, False)):
        await asyncio.sleep(6)
        group.kill(victim)
        if restart:
            await asyncio.sleep(2)
            await group.start_worker(victim)


async def redis_down_for_10_s(group: Cluster) -> None:
    await asyncio.sleep(6)
    await group.redis.kill()
    await asyncio.sleep(10)
    await group.redis.start()


async def postgres_cut_for_10_s(group: Cluster) -> None:
    await asyncio.sleep(6)
    group.proxy.cut(10)
    await asyncio.sleep(10)


async def paused_for_12_s(group: Cluster) -> None:
    """SIGSTOP mid-stream for twice the lease (and the liveness key's life), then SIGCONT:
    the others take its conversations over meanwhile, and the paused worker, running again,
    must not show the answers it was streaming (a second copy in a private chat)."""
    await asyncio.sleep(6)
    await group.pause(0, 12)


async def no_fault(group: Cluster) -> None:
    return None


async def run_scenario(
    name: str,
    tmp_path: Path,
    postgres_url: str,
    fault: Fault,
    model: SlowModel,
    *,
    chats: int = CHATS,
) -> None:
    async with cluster(tmp_path, postgres_url, model, workers=3) as (group, api):
        balancer = Balancer(group)
        users = Users(balancer, chats=chats, per_chat=PER_CHAT, seed=hash(name) & 0xFFFF)
        first_seen: dict[str, float] = {}
        watcher = asyncio.create_task(watch_first_seen(api, first_seen))
        try:
            await asyncio.gather(users.ask_all(), fault(group))
            verdict = await settle(
                api, users, model, first_seen, within_s=SETTLE_WITHIN_S,
                killed_at=group.killed_at,
            )  # fmt: skip
        finally:
            watcher.cancel()
            await balancer.aclose()
        tracebacks = group.tracebacks()
        failed = not verdict.ok or verdict.answered != chats * PER_CHAT or bool(tracebacks)
        kept = group.keep_logs(name.replace(" ", "-"), api) if failed else None
    figures = verdict.figures(name) + f", re-sent by the balancer {balancer.resent}"
    per_answer = model.requests / max(1, verdict.by_model)
    figures += f", model requests {model.requests} ({per_answer:.2f} per model answer)"
    if kept is not None:
        figures += f"; worker logs kept in {kept}"
    print(f"\n{figures}")
    assert verdict.ok, (figures, verdict)
    assert verdict.answered == chats * PER_CHAT
    assert not tracebacks, tracebacks[0]
    if model.flaky is None:
        assert not verdict.not_model, verdict.not_model[:3]
    else:
        # The breaker degrades, it does not cut (with the old defaults 15 of 640 questions got a
        # model answer). The targets for this server (>= 90% by the model, <= 2 requests
        # each) are a rate: bench/flaky_backend.py measures them on 640 questions; a sample of
        # 128 puts a run within a few questions of 90% by chance, so the test asks for less.
        assert verdict.by_model >= 0.75 * verdict.asked, figures
        assert per_answer <= 2.0, figures


@pytest.mark.parametrize("run", RUNS)
async def test_workers_killed_mid_stream(tmp_path: Path, postgres_url: str, run: int) -> None:
    await run_scenario("SIGKILL x3", tmp_path, postgres_url, kill_three_times, SlowModel())


@pytest.mark.parametrize("run", RUNS)
async def test_redis_killed_for_10_s(tmp_path: Path, postgres_url: str, run: int) -> None:
    await run_scenario("Redis down 10 s", tmp_path, postgres_url, redis_down_for_10_s, SlowModel())


@pytest.mark.parametrize("run", RUNS)
async def test_postgres_cut_for_10_s(tmp_path: Path, postgres_url: str, run: int) -> None:
    fault = postgres_cut_for_10_s
    await run_scenario("PostgreSQL cut 10 s", tmp_path, postgres_url, fault, SlowModel())


@pytest.mark.parametrize("run", RUNS)
async def test_a_worker_paused_past_its_leases(tmp_path: Path, postgres_url: str, run: int) -> None:
    await run_scenario("SIGSTOP 12 s", tmp_path, postgres_url, paused_for_12_s, SlowModel())


@pytest.mark.parametrize("run", RUNS)
async def test_flaky_model(tmp_path: Path, postgres_url: str, run: int) -> None:
    # Twice the chats: the share answered by the model is a rate, and 64 questions would put
    # one unlucky run a question or two under the 90%.
    model = SlowModel(flaky=Flaky())
    await run_scenario("flaky model", tmp_path, postgres_url, no_fault, model, chats=2 * CHATS)
