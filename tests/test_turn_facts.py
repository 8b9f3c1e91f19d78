"""A turn takes its conversation's handoff state and chat preferences from the turn lease's own
statement (bot.storage.base.ChatFacts, issue 19): no cache round trip for them, and what it
acts on is SQL's, as of the lease, whatever a cache holds. The proof: a cached copy made wrong
on purpose changes nothing (before, the turn believed the cache)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bot.app import Parley
from bot.handoff.types import HandoffState
from bot.settings import load_settings
from bot.storage import keys, migrate
from bot.types import ConversationKey, Incoming, User
from tests.doubles import ScriptedBackend

WEB, VISITOR = ConversationKey("web", "facts"), User("web", "facts", "Visitor")


class Replies:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def deliver(self, key: ConversationKey, chunks: AsyncIterator[str], **_: Any) -> None:
        self.texts.append("".join([chunk async for chunk in chunks]))


async def test_a_turn_acts_on_the_handoff_state_and_preferences_in_sql_not_a_cached_copy(
    postgres_url: str, redis_url: str, key_prefix: str
) -> None:
    await migrate.upgrade(postgres_url)
    settings = load_settings(
        None,
        database={"url": postgres_url},
        redis={"url": redis_url, "key_prefix": key_prefix},
    )
    sink, backend = Replies(), ScriptedBackend()
    redis = Redis.from_url(redis_url)
    try:
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            app.manager.attach("web", sink)
            await app.manager.handle(Incoming(WEB, VISITOR, "hello", "f1"))
            assert sink.texts == ["echo: hello"]
            cid = await app.store.conversation_id(WEB)
            assert cid is not None

            # A person takes the conversation; the cache is then made to say "the bot".
            await app.desk.take(WEB, "sam")
            status, _ = await app.desk.repo.status_and_language(cid)
            assert status.state is HandoffState.HUMAN
            stale_bot = json.dumps(["bot", None, "", None, "", ""])
            await redis.set(f"{key_prefix}:{keys.handoff(cid)}", stale_bot)
            await app.manager.handle(Incoming(WEB, VISITOR, "are you there?", "f2"))
            assert sink.texts == ["echo: hello"]  # the person's: recorded, not answered

            # Back to the bot; the cache is made to say a person still has it.
            await app.desk.give_back(WEB, "sam")
            stale_human = json.dumps(["human", "agent", "", "2026-12-03T10:00:00+00:00", "sam", ""])
            await redis.set(f"{key_prefix}:{keys.handoff(cid)}", stale_human)
            await app.manager.handle(Incoming(WEB, VISITOR, "back again?", "f3"))
            assert sink.texts[-1] == "echo: back again?"

            # Auto-translation on in SQL, the cached preferences say off: it is on.
            await app.prefs.set_auto_translate(cid, "de")
            await redis.set(f"{key_prefix}:{keys.chat_prefs(cid)}", json.dumps([None, False]))
            before = len(backend.requests)
            english = "The delivery arrived this morning and everything was there."
            await app.manager.handle(Incoming(WEB, VISITOR, english, "f4"))
            asked = [r.messages[0].content for r in backend.requests[before:]]
            assert any("German" in system for system in asked), asked
    finally:
        await redis.aclose()


async def test_on_sqlite_a_turn_reads_the_handoff_state_it_was_given_with_the_lease(
    tmp_path: Path,
) -> None:
    """The same facts on SQLite (RETURNING with correlated subqueries; `since` comes back
    naive and is read as UTC): a person's conversation is forwarded, not answered."""
    settings = load_settings(None, database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"})
    sink = Replies()
    async with Parley(settings, backend=ScriptedBackend()) as app:  # type: ignore[arg-type]
        app.manager.attach("web", sink)
        await app.manager.handle(Incoming(WEB, VISITOR, "hello", "s1"))
        status = await app.desk.take(WEB, "sam")
        await app.manager.handle(Incoming(WEB, VISITOR, "anyone?", "s2"))
        assert sink.texts == ["echo: hello"]
        cid = await app.store.conversation_id(WEB)
        assert cid is not None
        state = await app.store.state(cid)
        assert state.facts is not None and state.facts.handoff is not None
        from_facts, _ = await app.desk.repo.status_and_language(cid, state)
        assert from_facts == status and from_facts.since is not None
        assert from_facts.since.tzinfo is not None
        await app.desk.give_back(WEB, "sam")
        await app.manager.handle(Incoming(WEB, VISITOR, "back?", "s3"))
        assert sink.texts[-1] == "echo: back?"
