"""`/metrics` after a conversation through the real app: the text the Prometheus server
reads, parsed with the library's own parser, shows what happened."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from adapters.kit.http import HttpHost
from adapters.kit.metrics_route import metrics_host, metrics_route, serve_all
from backends.base import Chunk, GenerationRequest
from backends.fallback import FallbackChain
from backends.resilience import ResilientBackend
from bot.app import Parley
from bot.conversation.manager import OutputAway
from bot.errors import AdapterError, BackendUnavailable
from bot.metrics import UNKNOWN_COMMAND, Metrics, turn_kind
from bot.settings import BackendSettings, HttpSettings, Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage import migrate
from bot.storage.base import MessageKind, StoredMessage
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.ports import free_port

KEY = ConversationKey("test", "chat-1")
USER = User("test", "u1", "Ada")
_ids = itertools.count()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def incoming(text: str) -> Incoming:
    return Incoming(KEY, USER, text, idempotency_key=f"metrics-{next(_ids)}")


def settings_for(tmp_path: Path) -> Settings:
    return Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"})  # type: ignore[arg-type]


async def scrape(route: Route) -> tuple[str, Samples]:
    host = HttpHost(HttpSettings())
    host.mount(route)
    return await scrape_host(host)


async def scrape_host(host: HttpHost) -> tuple[str, Samples]:
    transport = httpx.ASGITransport(app=host.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_conversation_moves_the_counters(tmp_path: Path) -> None:
    backend = ResilientBackend(ScriptedBackend(), BackendSettings(), name="scripted")
    async with Parley(settings_for(tmp_path), backend=backend) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        route = metrics_route(app.metrics)
        _, before = await scrape(route)
        assert value(before, "parley_turns_total", platform="test", skill="chat",
                     outcome="answered") == 0  # fmt: skip
        await app.manager.handle(incoming("hello there"))
        await app.manager.handle(incoming("and again"))
        await app.manager.handle(incoming("/help"))
        _, after = await scrape(route)

    assert sink.replies[KEY][0] == "echo: hello there"
    chat = {"platform": "test", "skill": "chat"}
    assert value(after, "parley_turns_total", **chat, outcome="answered") == 2
    assert value(after, "parley_turns_total", platform="test", skill="help",
                 outcome="answered") == 1  # fmt: skip
    assert value(after, "parley_turn_duration_seconds_count", **chat) == 2
    assert value(after, "parley_turn_first_token_seconds_count", **chat) == 2
    assert value(after, "parley_tokens_total", platform="test", direction="out") > 0
    assert value(after, "parley_backend_requests_total", backend="scripted") == 2
    assert value(after, "parley_backend_tries_total", backend="scripted") == 2
    assert value(after, "parley_backend_errors_total", backend="scripted") == 0
    assert value(after, "parley_backend_breaker_state", backend="scripted") == 0
    # Every message was answered: nothing pending, read from SQL at scrape time.
    assert value(after, "parley_pending_messages") == 0
    assert value(after, "parley_pending_oldest_age_seconds") == 0


class AwaySink:
    """A platform whose output is out of reach (the support channel's event log in a Redis
    outage) for its first `away` answers."""

    def __init__(self, away: int) -> None:
        self.away, self.texts = away, list[str]()

    async def deliver(self, key: ConversationKey, chunks: Any, **_: Any) -> None:
        if self.away > 0:
            self.away -= 1
            raise OutputAway("the event log is out of reach")
        self.texts.append("".join([chunk async for chunk in chunks]))


async def test_a_turn_that_waits_for_its_platform_is_deferred_not_failed(tmp_path: Path) -> None:
    """Each turn that found its output away counted as failed: a Redis blip of a few seconds
    fired the failed-turns alert although every message was answered."""
    async with Parley(settings_for(tmp_path), backend=ScriptedBackend()) as app:
        sink = AwaySink(away=1)
        app.manager.attach("test", sink)
        route = metrics_route(app.metrics)
        recorded = await app.manager.submit(incoming("hello"))
        await app.manager.wait_idle(recorded.conversation_id)
        await app.manager.recover()  # as the sweep would, once it can be shown
        await app.manager.wait_idle(recorded.conversation_id)
        _, samples = await scrape(route)
    assert sink.texts == ["echo: hello"]
    chat = {"platform": "test", "skill": "chat"}
    assert value(samples, "parley_turns_total", **chat, outcome="deferred") == 1
    assert value(samples, "parley_turns_total", **chat, outcome="answered") == 1
    assert value(samples, "parley_turns_total", **chat, outcome="failed") == 0


async def test_pending_messages_and_their_age_are_read_from_sql(tmp_path: Path) -> None:
    async with Parley(settings_for(tmp_path)) as app:
        # No sink attached and no worker started: recorded, still pending.
        await app.store.record_incoming(incoming("waiting"), kind=MessageKind.CHAT, token_count=1)
        _, samples = await scrape(metrics_route(app.metrics))
    assert value(samples, "parley_pending_messages") == 1
    assert value(samples, "parley_pending_oldest_age_seconds") >= 0


async def test_pending_gauges_are_unknown_while_the_database_cannot_be_read(
    tmp_path: Path,
) -> None:
    """They kept their last reading (0 for an empty queue) through a database outage."""
    async with Parley(settings_for(tmp_path)) as app:
        await app.store.record_incoming(incoming("waiting"), kind=MessageKind.CHAT, token_count=1)
        route = metrics_route(app.metrics)
        _, before = await scrape(route)
        async with app.store.engine.begin() as conn:  # the query now fails
            await conn.execute(sa.text("ALTER TABLE messages RENAME TO messages_elsewhere"))
        _, during = await scrape(route)
    assert value(before, "parley_pending_messages") == 1
    assert math.isnan(value(during, "parley_pending_messages"))
    assert math.isnan(value(during, "parley_pending_oldest_age_seconds"))


async def test_every_database_pool_is_reported(postgres_url: str) -> None:
    await migrate.upgrade(postgres_url)
    settings = Settings(database={"url": postgres_url, "pool_size": 4})  # type: ignore[arg-type]
    async with Parley(settings) as app:
        route = metrics_route(app.metrics)
        _, idle = await scrape(route)
        async with app.store.engine.connect():  # one connection of the main pool in use
            _, busy = await scrape(route)
    # Opened before traffic (SqlStore.start): 4 main connections, max(2, 4 // 2) relaxed, and
    # the lease keeper's one.
    assert value(idle, "parley_db_connections", pool="main", state="idle") == 4
    assert value(idle, "parley_db_connections", pool="keeper", state="idle") == 1
    assert value(idle, "parley_db_connections", pool="main", state="in_use") == 0
    assert value(idle, "parley_db_connections", pool="relaxed", state="idle") == 2
    assert value(busy, "parley_db_connections", pool="main", state="in_use") == 1
    assert value(busy, "parley_db_connections", pool="main", state="idle") == 3


async def test_an_sqlite_file_reports_its_pool_and_the_keepers(tmp_path: Path) -> None:
    async with Parley(settings_for(tmp_path)) as app:
        _, samples = await scrape(metrics_route(app.metrics))
    pools = {dict(labels)["pool"] for name, labels in samples if name == "parley_db_connections"}
    assert pools == {"main", "keeper"}  # no relaxed pool: WAL commits need no sync there


def test_command_names_users_invent_do_not_become_series() -> None:
    def command(text: str) -> StoredMessage:
        return StoredMessage(1, 1, Role.USER, MessageKind.COMMAND, text, 1, datetime.now(UTC))

    router = CommandRouter()
    register_core_commands(router)
    assert turn_kind([command("/made-up-by-a-user")], router) == UNKNOWN_COMMAND
    assert turn_kind([command("/help")], router) == "help"


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.refused("test")
    assert first.registry is not second.registry
    assert (
        second.registry.get_sample_value(
            "parley_turns_total", {"platform": "test", "skill": "none", "outcome": "refused"}
        )
        is None
    )


def test_the_dashboard_uses_only_metrics_parley_exports() -> None:
    dashboard = json.loads((Path(__file__).parents[1] / "docs/grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"parley_\w+", target["expr"])
    }
    exported = {
        sample
        for family in Metrics().registry.collect()
        for sample in _sample_names(family.name, family.type)
    }
    assert used and used <= exported, used - exported


def _sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return {name}


async def test_the_metrics_port_is_a_host_of_its_own_and_fails_as_one_line() -> None:
    assert metrics_host("127.0.0.1", 0, Metrics(), None) is None  # 0: off
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        own = metrics_host("127.0.0.1", port, Metrics(), None)
        assert own is not None and own.in_use
        _, samples = await scrape_host(own)
        assert ("parley_pending_messages", frozenset()) in samples
        free = HttpHost(HttpSettings(port=free_port()))
        free.mount(metrics_route(Metrics()))
        # One host cannot listen: serving stops (the other one too) with its one line, which
        # names the metrics server's section (it said "http:", pointing at [http] port).
        with pytest.raises(AdapterError, match=rf"^metrics: cannot listen on 127.0.0.1:{port}: "):
            await serve_all([free, own])


async def test_a_stopping_worker_is_still_scraped() -> None:
    """A stop refuses new input for up to `shutdown_grace_s`, but `/metrics` takes none: the
    outcomes of the turns finished or cut in the grace must reach Prometheus (it got 503
    "this worker is stopping" on the metrics port, and the last counts were never seen)."""
    metrics = Metrics()
    own = metrics_host("127.0.0.1", free_port(), metrics, None)
    assert own is not None
    own.draining = True
    metrics.refused("test")
    _, samples = await scrape_host(own)
    refused = frozenset({"platform": "test", "skill": "none", "outcome": "refused"}.items())
    assert samples[("parley_turns_total", refused)] == 1


WORKER = """
import sys
from bot.metrics import Metrics
metrics = Metrics()
metrics.refused("test")
metrics.pending.set(int(sys.argv[1]))
sys.stdout.buffer.write(metrics.exposition()[0])
"""


def test_multiprocess_mode_adds_up_the_workers_of_a_machine(tmp_path: Path) -> None:
    """What docs/operations.md promises: with PROMETHEUS_MULTIPROC_DIR set before start, any
    worker's /metrics reports every worker's counters (here two workers, then a third)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    scrapes = [
        subprocess.run(
            [sys.executable, "-c", WORKER, str(pending)],
            env=env, cwd=Path(__file__).parents[1], capture_output=True, check=True, timeout=60,
        ).stdout.decode()
        for pending in (3, 5)
    ]  # fmt: skip
    families = {f.name: f for f in text_string_to_metric_families(scrapes[-1])}
    (refused,) = families["parley_turns"].samples
    assert refused.value == 2  # both workers' counters, from the second worker's scrape
    (pending,) = families["parley_pending_messages"].samples
    assert pending.value == 5  # the most recent reading, not a sum


POOL_WORKER = """
import asyncio, sys
import bot.metrics
from bot.app import Parley
from bot.settings import Settings

async def main():
    settings = Settings(database={"url": sys.argv[1], "pool_size": 4})
    async with Parley(settings):
        await asyncio.sleep(0.5)  # serves, and is never scraped itself

asyncio.run(main())
"""
SCRAPER = """
import sys
from bot.metrics import Metrics
sys.stdout.buffer.write(Metrics().exposition()[0])
"""


def test_in_multiprocess_mode_each_worker_publishes_its_own_pools(
    tmp_path: Path, postgres_url: str
) -> None:
    """A scrape runs in the one worker it reaches: the others' pool gauges were set only
    when they were scraped themselves, so a saturated pool elsewhere never showed (a
    helper's walkthrough: 10 idle connections shown, 32 open). Each worker publishes its
    own readings now."""
    asyncio.run(migrate.upgrade(postgres_url))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(script: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            env=env, cwd=Path(__file__).parents[1], capture_output=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    run(POOL_WORKER, postgres_url)
    scrape = run(SCRAPER)
    samples = [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(scrape)
        for s in f.samples
    ]
    main = [
        v for n, labels, v in samples if n == "parley_db_connections" and ("pool", "main") in labels
    ]
    assert sum(main) == 4  # the worker's four connections, in use or idle


class DownBackend(ScriptedBackend):
    """A model server that refuses every request."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        raise BackendUnavailable("connection refused")
        yield Chunk()  # an async generator, like every backend's stream()


async def test_a_fallback_answer_and_the_primary_failure_are_counted(tmp_path: Path) -> None:
    once = BackendSettings(retry={"attempts": 1})  # type: ignore[arg-type]
    chain = FallbackChain(
        [
            ResilientBackend(DownBackend(), once, name="primary"),
            ResilientBackend(ScriptedBackend(), once, name="spare"),
        ]
    )
    async with Parley(settings_for(tmp_path), backend=chain) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        await app.manager.handle(incoming("anyone there?"))
        _, samples = await scrape(metrics_route(app.metrics))
    assert sink.replies[KEY][0].startswith("echo: anyone there?")
    assert value(samples, "parley_backend_fallbacks_total") == 1
    assert value(samples, "parley_backend_errors_total", backend="primary") == 1
    assert value(samples, "parley_backend_requests_total", backend="spare") == 1
    assert value(samples, "parley_turns_total", platform="test", skill="chat",
                 outcome="answered") == 1  # fmt: skip


class Gate:
    """What an adapter's outbound rate limiter counts (adapters.telegram.limits.FloodGate)."""

    def __init__(self) -> None:
        self.api_calls = 0
        self.retries_after_429 = 0


class GatedAdapter:
    platform = "chat-platform"

    def __init__(self) -> None:
        self.gate = Gate()


def test_platform_calls_and_429s_are_read_from_the_adapters_gate() -> None:
    metrics, adapter = Metrics(), GatedAdapter()
    metrics.watch_adapter(adapter)
    adapter.gate.api_calls, adapter.gate.retries_after_429 = 7, 2
    metrics.sync()
    adapter.gate.api_calls = 9
    metrics.sync()  # increments since the last copy, not the totals again
    labels = {"platform": "chat-platform"}
    assert metrics.registry.get_sample_value("parley_platform_api_calls_total", labels) == 9
    assert metrics.registry.get_sample_value("parley_platform_throttled_total", labels) == 2
