"""Review findings on the retention policy (docs/database.md, "Retention")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

pytest.importorskip("discord")
pytest.importorskip("websockets")

from bot.storage.models import MessageRow
from bot.types import utcnow
from tests import discord_events as ev
from tests.doubles import ScriptedBackend
from tests.test_discord_backfill import backfilled, fake_discord, started, threads_opened


async def test_a_pruned_question_read_back_by_the_discord_backfill_is_not_answered_again(
    tmp_path: Path,
) -> None:
    """A Discord backfill reads an auto_thread channel from `backfill_hours` ago at every start,
    and takes every message whose idempotency key is not recorded. With retention_days shorter
    than backfill_hours (both accepted: 1 day and 72 h), a question answered, then pruned, is
    read back at the next start as new and answered a second time (a second thread)."""
    backend = ScriptedBackend(lambda request: "Here.")
    api = fake_discord()
    cfg = {"auto_thread": [ev.CHANNEL], "backfill_hours": 72}
    async with started(tmp_path, backend, api, **cfg) as h:
        question = ev.message_create("old question", channel=ev.CHANNEL, mentions_bot=True)
        await h.deliver_event(question)
        await h.idle()
        store = h.app.store
        # Two days pass (the question is 2 days old on Discord, within backfill_hours).
        async with store.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(
                sa.update(MessageRow).values(created_at=utcnow() - timedelta(days=2))
            )
        # retention_days = 1: the worker's daily prune.
        pruned = await store.prune(utcnow() - timedelta(days=1))
        assert pruned.count >= 2
    async with started(tmp_path, backend, api, **cfg) as h:
        await backfilled(h, 1)
        await h.idle()
        assert threads_opened(api) == ["old question"]
        assert len(backend.requests) == 1
