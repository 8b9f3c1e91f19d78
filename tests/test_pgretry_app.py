"""A Parley app on PostgreSQL answers the first turns after the server dropped its pooled
connections (a restart) in their own run, not when the sweep comes round: a plain message,
and a command whose "I don't know" is weighed by the handoff triggers (signals written on
the relaxed engine, whose pool the turn had not used yet)."""

from __future__ import annotations

import pytest

from bot.app import Parley
from bot.settings import Settings
from bot.skills.qa import I_DONT_KNOW
from bot.storage import migrate
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.test_pgretry_repositories import Killer

KEY = ConversationKey("test", "chat-1")
ADA = User("test", "u1", "Ada")


@pytest.mark.postgres
async def test_first_turns_after_the_connections_were_killed_are_answered(
    postgres_url: str,
) -> None:
    await migrate.upgrade(postgres_url)
    settings = Settings(
        database={"url": postgres_url},  # type: ignore[arg-type]
        # No sweep: an answer can only come from the message's own turn.
        conversation={"sweep_interval_s": 0},  # type: ignore[arg-type]
    )
    kill = Killer(postgres_url)
    try:
        async with Parley(settings, backend=ScriptedBackend()) as app:
            sink = CollectingSink()
            app.manager.attach("test", sink)
            await app.manager.handle(Incoming(KEY, ADA, "hello", idempotency_key="u-0"))
            again = Incoming(KEY, ADA, "again", idempotency_key="u-1")
            await kill.before(app.manager.handle(again))
            assert sink.replies[KEY] == ["echo: hello", "echo: again"]
            ask = Incoming(KEY, ADA, "/ask how do I reset my password?", idempotency_key="u-2")
            await kill.before(app.manager.handle(ask))
            assert sink.replies[KEY][2:] == [I_DONT_KNOW]
    finally:
        await kill.aclose()
