"""Daily token budgets (bot.budget) on real PostgreSQL and Redis: exact across two workers,
the one sentence a user over budget gets, the day boundary, reservations of a dead worker,
Redis going away, and `parley usage`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, date, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot import phrases
from bot.app import Parley
from bot.budget import MESSAGE_OVERHEAD_TOKENS, subjects_of
from bot.budget_counters import Limited, LocalCounter, RedisCounter, Verdict
from bot.cli import main
from bot.errors import ConfigError
from bot.settings import Settings, load_settings
from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.usage import Subject, UsageLog
from bot.types import ChatMessage, ConversationKey, Incoming, User
from tests.doubles import CollectingSink
from tests.redis_server import PrivateRedis

ADA = User("test", "ada", "Ada")
NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
COMPLETION_TOKENS = 30
MAX_TOKENS = 64
ANSWER = "fine, thanks"


class UsageBackend:
    """The model seam: answers `ANSWER` after a short latency (so that turns overlap) and
    reports usage as a vLLM server does: the prompt's tokens and the completion's."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []
        self.reported = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("usage", "usage", 4096, exact_token_counts=True)

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        await asyncio.sleep(0.005)  # the model's latency, not a wait for anything
        yield Chunk(text=ANSWER)
        usage = Usage(await self.count_chat_tokens(request.messages), COMPLETION_TOKENS)
        self.reported += usage.prompt_tokens + usage.completion_tokens
        yield Chunk(usage=usage, finish_reason="stop")

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def pg_url(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


SYSTEM_PROMPT = "You are Parley, a concise and helpful assistant. Answer in the user's language."


def _settings(db_url: str, redis_url: str | None, prefix: str, **budget: object) -> Settings:
    redis = {"url": redis_url, "key_prefix": prefix, "retry_after_failure_s": 30.0}
    return Settings(
        database={"url": db_url},  # type: ignore[arg-type]
        redis=redis if redis_url else {},  # type: ignore[arg-type]
        backend={"max_tokens": MAX_TOKENS},  # type: ignore[arg-type]
        # The budgets below are sized in turns of this prompt's length, not the default's
        # (which may grow: a sentence about fenced documents made three turns cost over 250).
        conversation={"rate_limit_messages": 0, "system_prompt": SYSTEM_PROMPT},  # type: ignore[arg-type]
        budget=budget,  # type: ignore[arg-type]
    )


def _message(chat: str, text: str = "hello there", user: User = ADA) -> Incoming:
    key = ConversationKey(user.platform, chat)
    return Incoming(key, user, text, idempotency_key=f"{chat}:{text}")


async def _spent(app: Parley, subject: Subject, day: date | None = None) -> int:
    return await app.budgets.usage.tokens(day or NOON.date(), subject)


async def _run_turns(apps: list[Parley], user: User, turns: int) -> dict[str, int]:
    """`turns` concurrent turns of `user`, each in a conversation of its own, dealt out to
    the workers in turn. How many were answered by the model and how many refused."""
    sinks = [CollectingSink() for _ in apps]
    for app, sink in zip(apps, sinks, strict=True):
        app.budgets.clock = lambda: NOON
        app.manager.attach("test", sink)
    messages = [_message(f"{user.user_id}-{i}", user=user) for i in range(turns)]
    await asyncio.gather(*(apps[i % len(apps)].manager.handle(m) for i, m in enumerate(messages)))
    replies = [r for sink in sinks for got in sink.replies.values() for r in got]
    assert len(replies) == turns  # every turn got exactly one reply
    refusal = phrases.say(phrases.BUDGET_USED_UP, "", zone="UTC")
    assert set(replies) <= {ANSWER, refusal}
    answering = sum(ANSWER in (r for got in sink.replies.values() for r in got) for sink in sinks)
    return {
        "answered": replies.count(ANSWER),
        "refused": replies.count(refusal),
        "workers answering": answering,
    }


async def test_budgets_are_exact_across_two_workers(
    pg_url: str, redis_url: str, key_prefix: str
) -> None:
    """200 concurrent turns of one user stop at the same total on two workers sharing
    PostgreSQL and Redis as on one worker (within one turn), and never above the budget."""
    limit = 3000
    settings = _settings(pg_url, redis_url, key_prefix, user_daily_tokens=limit)
    # 200 turns at once keep the event loop busy: on a loaded machine a Redis reply can wait
    # past the 1 s socket timeout, and a timed-out Redis is counted per worker from SQL (each
    # worker up to the whole budget: the Redis-down test's case, not this one's).
    settings.redis.socket_timeout_s = 10.0
    totals = []
    for workers, user in ((1, User("test", "solo")), (2, User("test", "duo"))):
        backend = UsageBackend()
        async with (
            Parley(settings, backend=backend) as one,
            Parley(settings, backend=backend) as two,
        ):
            counts = await _run_turns([one, two][:workers], user, 200)
            # Each worker writes its sums behind (every budget.usage_flush_s): the other
            # worker's last ones are written first, as that worker's own flush would.
            await two.budgets.usage.flush()
            total = await _spent(one, Subject("user", f"test:{user.user_id}"))
        # Every token the backend reported for the turns it ran is counted, and only those.
        assert total == backend.reported
        assert counts["answered"] == len(backend.requests)
        assert counts["refused"] > 0
        assert counts["workers answering"] == workers
        totals.append(total)

    one_turn = backend.reported // len(backend.requests)
    estimate = one_turn - COMPLETION_TOKENS + MAX_TOKENS  # what a turn reserves
    one_worker, two_workers = totals
    assert abs(two_workers - one_worker) <= one_turn
    for total in totals:
        assert limit - estimate < total <= limit


def _metric(app: Parley, name: str, **labels: str) -> float:
    text = app.metrics.exposition()[0].decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
async def test_a_user_over_budget_gets_one_sentence_and_commands_still_work(
    pg_url: str, redis_url: str, key_prefix: str, shared: bool
) -> None:
    hans = User("test", "hans", "Hans", language="de")
    settings = _settings(
        pg_url, redis_url if shared else None, key_prefix,
        user_daily_tokens=150, timezone="Europe/Berlin",
    )  # fmt: skip
    backend, sink = UsageBackend(), CollectingSink()
    async with Parley(settings, backend=backend) as app:
        app.budgets.clock = lambda: NOON
        app.manager.attach("test", sink)
        for text in ("hello there", "and again", "/help"):
            await app.manager.handle(_message("chat", text, user=hans))
        spent = await _spent(app, Subject("user", "test:hans"))
        refused = _metric(app, "parley_budget_refused_total", budget="user")
        counted = _metric(app, "parley_budget_tokens_total", platform="test")
        turns_refused = _metric(app, "parley_turns_total", outcome="refused")

    first, second, help_text = sink.replies[ConversationKey("test", "chat")]
    assert first == ANSWER
    # The estimate of the second turn (its prompt holds the first) no longer fits: refused
    # with one sentence, in the user's language, saying when the budget starts afresh.
    assert second == phrases.say(phrases.BUDGET_USED_UP, "de", zone="Europe/Berlin")
    assert "Mitternacht (Europe/Berlin)" in second
    assert help_text.startswith("Befehle:")  # /help needs no model: answered as ever
    assert len(backend.requests) == 1
    assert spent == backend.reported
    assert (refused, counted, turns_refused) == (1, backend.reported, 1)


async def test_skill_calls_count_to_the_budget(
    pg_url: str, redis_url: str, key_prefix: str
) -> None:
    """/translate calls the model from a skill; the seam counts it to the sender, and a
    skill is refused like chat once the budget is used up."""
    settings = _settings(pg_url, redis_url, key_prefix, user_daily_tokens=1000)
    backend, sink = UsageBackend(), CollectingSink()
    async with Parley(settings, backend=backend) as app:
        app.budgets.clock = lambda: NOON
        app.manager.attach("test", sink)
        await app.manager.handle(_message("chat", "/translate to German good morning"))
        after_one = await _spent(app, Subject("user", "test:ada"))
        reported_one = backend.reported
        for i in range(10):
            await app.manager.handle(_message("chat", f"/translate to German good night {i}"))
        total = await _spent(app, Subject("user", "test:ada"))

    assert after_one == reported_one > 0
    assert total == backend.reported <= 1000
    replies = sink.replies[ConversationKey("test", "chat")]
    refusal = phrases.say(phrases.BUDGET_USED_UP, "", zone="UTC")
    answered = len(backend.requests)
    assert 1 < answered < len(replies)
    assert replies[answered:] == [refusal] * (len(replies) - answered)


async def test_the_budget_resets_at_midnight_of_its_time_zone(
    pg_url: str, redis_url: str, key_prefix: str
) -> None:
    settings = _settings(
        pg_url, redis_url, key_prefix, user_daily_tokens=100, timezone="Europe/Berlin"
    )
    backend, sink = UsageBackend(), CollectingSink()
    before_midnight = datetime(2026, 12, 1, 22, 59, tzinfo=UTC)  # 23:59 in Berlin
    async with Parley(settings, backend=backend) as app:
        app.manager.attach("test", sink)
        app.budgets.clock = lambda: before_midnight
        await app.manager.handle(_message("a"))
        await app.manager.handle(_message("b"))  # the day's budget is used up
        app.budgets.clock = lambda: before_midnight + timedelta(minutes=2)  # 00:01 in Berlin
        await app.manager.handle(_message("c"))
        lines = await app.budgets.usage.report(date(2026, 12, 1))

    answers = [sink.replies[ConversationKey("test", c)][0] for c in "abc"]
    assert answers == [
        ANSWER,
        phrases.say(phrases.BUDGET_USED_UP, "", zone="Europe/Berlin"),
        ANSWER,
    ]
    by_day = {line.day: line.spent for line in lines}
    assert by_day[date(2026, 12, 2)].turns == 1 and by_day[date(2026, 12, 2)].refused == 0
    assert by_day[date(2026, 12, 1)].turns == 1 and by_day[date(2026, 12, 1)].refused == 1


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
async def test_a_reservation_never_settled_expires(
    pg_url: str, redis_url: str, key_prefix: str, shared: bool
) -> None:
    """The reservation of a worker that died mid-turn holds room only until it expires."""
    engine = create_engine(pg_url)
    client = Redis.from_url(redis_url)
    usage = UsageLog(engine)
    counter = RedisCounter(client, usage, key_prefix=key_prefix) if shared else LocalCounter(usage)
    day, ada = NOON.date(), [Limited(Subject("user", "test:ada"), 1000)]
    t0, ttl = NOON.timestamp(), 900.0
    try:
        dead = await counter.reserve(
            day, ada, "dead", 900, force=False, now_s=t0, expires_s=t0 + ttl
        )
        assert dead.verdict is Verdict.ADMITTED
        blocked = await counter.reserve(
            day, ada, "b", 200, force=False, now_s=t0 + 10, expires_s=t0 + ttl
        )
        # Only a reservation blocks it, not spent tokens: worth waiting for, not refused.
        assert blocked.verdict is Verdict.WAIT
        later = t0 + ttl + 1
        after = await counter.reserve(
            day, ada, "c", 200, force=False, now_s=later, expires_s=later + ttl
        )
        assert after.verdict is Verdict.ADMITTED
        await counter.settle(day, ada, ["c"], 1000)  # spent: now over, whatever is reserved
        over = await counter.reserve(
            day, ada, "d", 1, force=False, now_s=later, expires_s=later + ttl
        )
        assert over.verdict is Verdict.OVER and over.subject == ada[0].subject
    finally:
        await client.aclose()
        await engine.dispose()


async def test_a_worker_that_died_mid_turn_blocks_its_user_until_its_reservation_expires(
    pg_url: str, redis_url: str, key_prefix: str
) -> None:
    settings = _settings(pg_url, redis_url, key_prefix, user_daily_tokens=1000)
    client = Redis.from_url(redis_url)
    backend, sink = UsageBackend(), CollectingSink()
    ttl = settings.budget.reservation_ttl_s
    async with Parley(settings, backend=backend) as app:
        app.manager.attach("test", sink)
        dead = RedisCounter(client, app.budgets.usage, key_prefix=key_prefix)
        ada = [Limited(Subject("user", "test:ada"), 1000)]
        t0 = NOON.timestamp()
        await dead.reserve(
            NOON.date(), ada, "dead", 1000, force=False, now_s=t0, expires_s=t0 + ttl
        )
        # The worker never settles it. Once it has expired, the user is answered again.
        app.budgets.clock = lambda: NOON + timedelta(seconds=ttl + 1)
        await app.manager.handle(_message("after"))
    await client.aclose()
    assert sink.replies[ConversationKey("test", "after")] == [ANSWER]


async def test_redis_down_counts_per_worker_from_sql_and_says_so_once(
    pg_url: str, private_redis: PrivateRedis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(pg_url, private_redis.url, key_prefix, user_daily_tokens=250)
    settings.redis.retry_after_failure_s = 0.05
    backend, sink = UsageBackend(), CollectingSink()
    caplog.set_level(logging.WARNING, logger="bot.budget")
    async with Parley(settings, backend=backend) as app:
        app.budgets.clock = lambda: NOON
        app.manager.attach("test", sink)
        await app.manager.handle(_message("redis-up"))  # counted in Redis
        await private_redis.kill()
        for chat in ("down-1", "down-2", "down-3"):  # counted here, from SQL on
            await app.manager.handle(_message(chat))
        await private_redis.start()  # back, and empty: rebuilt from SQL
        await app.manager.handle(_message("redis-back"))
        spent = await _spent(app, Subject("user", "test:ada"))
    client = Redis.from_url(private_redis.url)
    key = f"{key_prefix}:budget:{{{NOON.date().isoformat()}}}:user:test:ada:h"
    rebuilt = int(await client.hget(key, "used") or -1)
    await client.aclose()

    replies = [sink.replies[ConversationKey("test", c)][0] for c in
               ("redis-up", "down-1", "down-2", "down-3", "redis-back")]  # fmt: skip
    refusal = phrases.say(phrases.BUDGET_USED_UP, "", zone="UTC")
    assert replies == [ANSWER, ANSWER, ANSWER, refusal, refusal]
    assert spent == backend.reported == rebuilt <= 250
    said = [r for r in caplog.records if "token budgets are counted per worker" in r.getMessage()]
    assert len(said) == 1


def test_support_turns_count_to_the_visitor_and_the_site() -> None:
    key = ConversationKey("support", "acme:visitor-7")
    assert subjects_of(key, "visitor-7") == [
        Subject("user", "support:visitor-7"),
        Subject("site", "acme"),
    ]
    assert subjects_of(ConversationKey("test", "c"), "") == [Subject("user", "test:chat:c")]


async def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await asyncio.to_thread(main, argv)
    return code, capsys.readouterr().out


async def test_parley_usage_shows_each_user_and_site_per_day(
    pg_url: str, redis_url: str, key_prefix: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    settings = _settings(
        pg_url, redis_url, key_prefix, user_daily_tokens=5000, site_daily_tokens=20000
    )
    visitor = User("support", "v1", "Visitor")
    backend = UsageBackend()
    async with Parley(settings, backend=backend) as app:
        for platform in ("test", "support"):
            app.manager.attach(platform, CollectingSink())
        await app.manager.handle(_message("chat", "hello there"))
        await app.manager.handle(_message("chat", "how are you"))
        ada_spent = backend.reported
        await app.manager.handle(_message("acme:v1", "where is my order", user=visitor))
    monkeypatch.setenv("PARLEY_DATABASE__URL", pg_url)
    monkeypatch.setenv("PARLEY_BUDGET__USER_DAILY_TOKENS", "5000")

    code, out = await _cli(["usage", "--json", "--days", "2"], capsys)
    assert code == 0
    rows = {(r["budget"], r["who"]): r for r in json.loads(out)}
    assert set(rows) == {("user", "test:ada"), ("user", "support:v1"), ("site", "acme")}
    ada = rows[("user", "test:ada")]
    assert (ada["total"], ada["turns"], ada["refused"], ada["limit"]) == (ada_spent, 2, 0, 5000)
    assert ada["prompt"] + ada["completion"] == ada["total"]
    assert rows[("site", "acme")]["total"] == backend.reported - ada_spent
    assert rows[("site", "acme")]["limit"] is None  # not configured for the CLI

    code, out = await _cli(["usage", "--days", "2", "--user", "test:ada"], capsys)
    header, *lines = out.splitlines()
    assert header.split() == ["day", "budget", "who", "prompt", "completion", "total", "limit",
                              "turns", "refused"]  # fmt: skip
    assert len(lines) == 1 and lines[0].split()[1:] == [
        "user", "test:ada", str(ada["prompt"]), str(ada["completion"]), str(ada_spent), "5000",
        "2", "0",
    ]  # fmt: skip


async def test_parley_usage_rejects_bad_arguments_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["usage", "--days", "0"], ["usage", "--user", "ada"]):
        with pytest.raises(SystemExit) as exit_info:
            await asyncio.to_thread(main, argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("parley usage: error: argument")
        assert "Traceback" not in error


def test_an_unknown_time_zone_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_BUDGET__TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid setting PARLEY_BUDGET__TIMEZONE: not a known time zone; use an IANA name "
        "such as UTC"
    )
