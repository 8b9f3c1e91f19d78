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
from tests.discord_api import next_id
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
    retention = {"retention_days": 1}
    async with started(tmp_path, backend, api, conversation=retention, **cfg) as h:
        # Sent two days ago (its snowflake says so), answered then.
        sent = next_id(utcnow() - timedelta(days=2))
        question = ev.message_create(
            "old question", channel=ev.CHANNEL, mentions_bot=True, message_id=sent
        )
        await h.deliver_event(question)
        await h.idle()
        store = h.app.store
        async with store.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(
                sa.update(MessageRow).values(created_at=utcnow() - timedelta(days=2))
            )
        # retention_days = 1: the worker's daily prune.
        pruned = await store.prune(utcnow() - timedelta(days=1))
        assert pruned.count >= 2
    async with started(tmp_path, backend, api, conversation=retention, **cfg) as h:
        await backfilled(h, 1)
        await h.idle()
        assert threads_opened(api) == ["old question"]
        assert len(backend.requests) == 1


async def test_a_prune_that_fails_after_a_batch_still_drops_the_in_process_windows_it_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch of a prune commits on its own. A prune that fails at a later batch (the
    database briefly out of reach: StorageError, tried again 5 minutes later) left the
    conversations of the batches it had committed unknown to the worker: `forget` runs only
    after a whole prune, so the worker's in-process windows kept the pruned text, and the next
    prune never touches those conversations again (their rows are gone). The pruned text
    stays in every prompt of that conversation."""
    import asyncio
    import sqlite3

    from bot.conversation import retention
    from bot.storage.sql_store import PRUNE_BATCH
    from tests.test_retention import DAYS, SECRET, backdate_all, last_prompt, message, worker

    monkeypatch.setattr(retention, "FIRST_PRUNE_WITHIN_S", 0.0)
    monkeypatch.setattr(retention, "RETRY_AFTER_S", 0.05)
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    settings = {"retention_days": DAYS, "retention_interval_s": 3600.0}
    async with worker(url, None, "", **settings) as w:
        await w.manager.handle(message(f"my key is {SECRET}", "f1"))
        await w.manager.handle(message("and the weather?", "f2"))
        assert [t for t in last_prompt(w.backend) if SECRET in t]  # in the in-process window
        await backdate_all(w, DAYS + 1)
        # Enough other old rows (newer than that turn) that the prune needs a second batch,
        # which fails.
        cid = await w.store.conversation_id(message("x", "x").key)
        rows = [{"conversation_id": cid + 1000, "role": "assistant", "kind": "chat",
                 "content": f"old {i}", "created_at": utcnow() - timedelta(days=DAYS + 0.5)}
                for i in range(PRUNE_BATCH)]  # fmt: skip
        async with w.store.engine.begin() as conn:
            await conn.execute(sa.text("PRAGMA foreign_keys=OFF"))
            await conn.execute(sa.insert(MessageRow), rows)
        batches = 0
        retried = asyncio.Event()

        def second_batch_fails(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
            nonlocal batches
            if statement.lstrip().upper().startswith("DELETE FROM MESSAGES "):
                batches += 1
                if batches == 2:  # SQLAlchemy's error for a busy SQLite file
                    locked = sqlite3.OperationalError("database is locked")
                    raise sa.exc.OperationalError(statement, params, locked)
                if batches == 3:  # the prune tried again, after its failure was handled
                    retried.set()

        sa.event.listen(w.store.engine.sync_engine, "before_cursor_execute", second_batch_fails)
        w.manager.start()  # the worker's own prune: at once, then again after the failure
        async with asyncio.timeout(30):  # a hang detector only
            await retried.wait()
        # The question and its answer were pruned by the first (committed) batch...
        async with w.store.engine.connect() as conn:
            texts = list((await conn.execute(sa.select(MessageRow.content))).scalars())
        assert not [t for t in texts if SECRET in t]
        # ...and the next turn must not see them.
        await w.manager.handle(message("what did I say?", "f3"))
        assert not [t for t in last_prompt(w.backend) if SECRET in t]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_answer_is_not_pruned_while_its_question_stays(database_url: str) -> None:
    """'A turn goes whole, with its answer' (docs/database.md): a question is kept while its
    answer is newer than the cutoff, but an answer is pruned by its own created_at alone. A
    question's created_at is the platform's clock (Discord's snowflake time, to the
    millisecond), its answer's the worker's: with the worker's clock a second behind Discord's,
    a quick answer (a command) is older than its question, and a prune whose cutoff falls
    between them deletes the answer and keeps the question, answered by a row that is gone."""
    from bot.storage.base import MessageKind
    from tests.test_retention import message, opened

    async with opened(database_url) as store:
        asked = await store.record_incoming(
            message("/help", "sk1", sent_at=utcnow() + timedelta(seconds=1)),
            kind=MessageKind.COMMAND, token_count=1,
        )  # fmt: skip
        reply = await store.record_reply(
            asked.conversation_id, [asked.message_id], "Help.", kind=MessageKind.COMMAND,
            token_count=1,
        )  # fmt: skip
        assert reply is not None
        later = await store.record_incoming(  # a later message: the reply is not the newest
            message("later", "sk2", sent_at=utcnow() + timedelta(days=1)),
            kind=MessageKind.CHAT, token_count=1,
        )  # fmt: skip
        assert later.message_id > reply.id
        await store.prune(utcnow() + timedelta(milliseconds=500))
        async with store.engine.connect() as conn:  # type: ignore[attr-defined]
            ids = set((await conn.execute(sa.select(MessageRow.id))).scalars())
        assert (asked.message_id in ids) == (reply.id in ids)
