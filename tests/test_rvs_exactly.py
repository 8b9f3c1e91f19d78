"""Hostile review of "kept, and answered exactly once": a message's retries and repeats are
not counted against its sender, and one sender's documents never hold every reading slot."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from bot import phrases
from bot.app import Parley
from bot.documents import DocumentSource
from bot.errors import StorageError
from bot.policy import AccessRules
from bot.settings import Settings
from bot.storage import migrate
from bot.storage.base import MessageKind
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.services import _pg_admin_async
from tests.test_documents import pdf

KEY = ConversationKey("test", "chat-1")
ADA = User("test", "u1", "Ada")


def _settings(url: str, **conversation: object) -> Settings:
    return Settings(
        database={"url": url},  # type: ignore[arg-type]
        conversation=conversation,  # type: ignore[arg-type]
    )


async def _user_rows(app: Parley) -> list[tuple[MessageKind, str]]:
    rows = await app.store.history(1, 50)
    return [(r.kind, r.content) for r in rows if r.role is Role.USER]


@pytest.mark.parametrize("cache", ["memory", "redis"])
async def test_rvs_repeated_deliveries_do_not_count_against_the_sender(
    tmp_path: Path, cache: str, request: pytest.FixtureRequest
) -> None:
    """Telegram re-sends an update it got no 200 for: the repeats are one message, so the
    sender's next genuine message is within the limit (2 a window) and answered."""
    settings = _settings(f"sqlite+aiosqlite:///{tmp_path}/parley.db", rate_limit_messages=2)
    if cache == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("key_prefix")
        settings = Settings(
            database=settings.database,
            conversation=settings.conversation,
            redis={"url": url, "key_prefix": prefix},  # type: ignore[arg-type]
        )
    async with Parley(settings, backend=ScriptedBackend()) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        for _ in range(3):  # one message, delivered three times
            await app.manager.handle(Incoming(KEY, ADA, "first", idempotency_key="u-1"))
        await app.manager.handle(Incoming(KEY, ADA, "second", idempotency_key="u-2"))
        assert await _user_rows(app) == [
            (MessageKind.CHAT, "first"),
            (MessageKind.CHAT, "second"),
        ]
        assert sink.replies[KEY] == ["echo: first", "echo: second"]


@pytest.mark.redis
async def test_repeats_delivered_at_the_same_moment_count_once(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """Two workers get the same message at once (a webhook retried while the first delivery
    is still running): the sender's count goes up by one, so their next message is answered.
    The count and its mark for the message are one atomic step in Redis."""
    database = {"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"}
    settings = Settings(
        database=database,  # type: ignore[arg-type]
        conversation={"rate_limit_messages": 2},  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": key_prefix},  # type: ignore[arg-type]
    )
    async with Parley(settings, backend=ScriptedBackend()) as one, Parley(settings) as two:
        sink = CollectingSink()
        one.manager.attach("test", sink)
        first = Incoming(KEY, ADA, "first", idempotency_key="u-1")
        others = [Incoming(KEY, User("test", "u9"), "", idempotency_key=f"o-{i}") for i in range(3)]
        for app in (one, two):  # connections open in both pools: the six calls really race
            await asyncio.gather(*(app.manager.over_rate_limit(o) for o in others))
        decided = await asyncio.gather(
            *(app.manager.over_rate_limit(first) for app in [one, two] * 3)
        )
        assert decided == [False] * 6
        await one.manager.handle(first)
        await one.manager.handle(Incoming(KEY, ADA, "second", idempotency_key="u-2"))
        assert sink.replies[KEY] == ["echo: first", "echo: second"]


@pytest.mark.postgres
async def test_rvs_retries_during_a_database_outage_never_lose_the_text(
    postgres_url: str,
) -> None:
    """While PostgreSQL refuses connections every delivery of a message fails (the webhook
    answers 503, the platform retries); once it is back, the message is kept as written and
    answered, however many retries the outage took."""
    await migrate.upgrade(postgres_url)
    name = postgres_url.rpartition("/")[2]
    settings = _settings(postgres_url, rate_limit_messages=2)
    async with Parley(settings, backend=ScriptedBackend()) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        await app.manager.handle(Incoming(KEY, ADA, "hello", idempotency_key="u-0"))
        message = Incoming(KEY, ADA, "my order 1234 never came", idempotency_key="u-1")
        await _pg_admin_async(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            await _pg_admin_async(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            for _ in range(3):  # the platform's retries, each refused
                with pytest.raises(StorageError):
                    await app.manager.submit(message)
        finally:
            await _pg_admin_async(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await app.manager.handle(message)  # the retry after the outage
        assert await _user_rows(app) == [
            (MessageKind.CHAT, "hello"),
            (MessageKind.CHAT, "my order 1234 never came"),
        ]
        assert sink.replies[KEY] == ["echo: hello", "echo: my order 1234 never came"]
        assert phrases.RATE_LIMITED not in sink.replies[KEY]


def _document(name: str, data: bytes, downloaded: asyncio.Event) -> DocumentSource:
    async def download() -> bytes:
        downloaded.set()
        return data

    return DocumentSource(name, "", len(data), download)


async def test_rvs_one_senders_slow_documents_do_not_make_others_wait(tmp_path: Path) -> None:
    """Two slots (the default): a sender's two heavy PDFs (each within every cap, a few
    seconds of parsing) must not hold both while another sender's short note waits."""
    settings = Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},  # type: ignore[arg-type]
        conversation={"rate_limit_messages": 0},  # type: ignore[arg-type]
        documents={"timeout_s": 60, "max_chars": 10**9, "max_bytes": 20_000_000},  # type: ignore[arg-type]
    )
    # One page of 12 MB of text operators that hardly compress: seconds of parsing, yet no
    # more than a file of its size may unpack to (a page that unpacks to far more than its
    # file is refused before it is read, at once: no longer a slow document).
    rng = random.Random(0)
    line = b"BT /F1 12 Tf 72 700 Td (%s) Tj ET\n"
    heavy = pdf(1, b"".join(line % rng.randbytes(30).hex().encode() for _ in range(130_000)))
    assert 20 * len(heavy) > 12_000_000
    bob = User("test", "u2", "Bob")
    async with Parley(settings, backend=ScriptedBackend()) as app:
        sink = CollectingSink()
        app.intake.register("test", sink, AccessRules())  # type: ignore[arg-type]
        reads = [asyncio.Event() for _ in range(3)]
        slow = [
            asyncio.create_task(
                app.intake.submit_document(
                    Incoming(KEY, ADA, "", idempotency_key=f"a{i}"),
                    _document(f"big{i}.pdf", heavy, reads[i]),
                )
            )
            for i in range(2)
        ]
        try:
            # Ada's first is downloaded and read; her second waits for her turn (a sender's
            # documents are downloaded one at a time too), holding no slot.
            waits = [asyncio.create_task(reads[i].wait()) for i in range(2)]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in pending:
                wait.cancel()
            await asyncio.sleep(0.05)
            assert reads[0].is_set() != reads[1].is_set()
            note = asyncio.create_task(
                app.intake.submit_document(
                    Incoming(ConversationKey("test", "chat-2"), bob, "", idempotency_key="b0"),
                    _document("note.txt", b"The meeting is on Monday.", reads[2]),
                )
            )
            done, _ = await asyncio.wait([*slow, note], return_when=asyncio.FIRST_COMPLETED)
            assert done == {note}  # read beside Ada's first PDF, not after both
            assert note.result() is not None
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            await app.intake.idle()
