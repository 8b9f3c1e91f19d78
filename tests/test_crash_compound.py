"""Two faults at once on a `parley run` worker (tests/crash_cluster.py), one worker running at
a time so the victim is known: PostgreSQL cut while the worker shows an answer in a private
chat, and the worker killed before the database comes back.

In a private chat Telegram shows the answer as drafts, then one message (`sendMessage`) whose
id the worker notes in SQL, so that a worker finishing the answer edits it instead of sending
another. With the database cut, that note fails; killed before the database is back, the
worker leaves a message nobody can know was sent, and the next worker sends the answer again:
the user sees it twice. So while the database cannot be reached (the lease's renewals fail), a
worker holds what it would show until the database confirms the delivery, and only drafts,
which the answer's message replaces, were shown (docs/conversations.md, "Guarantees").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.crash_cluster import Balancer, Users, Worker, cluster, settled_after_a_kill
from tests.slow_model import SlowModel
from tests.telegram_api import FakeBotApi

CHAT = 1000
TAG = f"Q{CHAT}x1"
COMPLETE = f"w{SlowModel().words - 1}"
# What a worker logs once it has shown the answer without the database (the old way: the
# answer's message sent, its record waiting) or holds it back (nothing more shown).
SHOWN_WITHOUT_DATABASE = "answer shown but not recorded yet"
HELD_BACK = "answer held back until the database confirms"


@dataclass
class ActsOnFirstDraft(FakeBotApi):
    """Calls `on_draft()` on the first draft that shows TAG, before the Bot API answers it."""

    on_draft: Callable[[], None] | None = None
    acted: asyncio.Event = field(default_factory=asyncio.Event)

    async def _sendMessageDraft(self, params: dict[str, Any]) -> object:  # type: ignore[override]
        result = super()._sendMessageDraft(params)
        if not self.acted.is_set() and TAG in str(params.get("text")) and self.on_draft:
            self.on_draft()
            self.acted.set()
        return result


async def _logged(worker: Worker, *lines: str) -> str:
    """Wait until the worker's log has one of `lines`; which."""
    while True:
        text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
        for line in lines:
            if line in text:
                return line
        await asyncio.sleep(0.05)


async def test_killed_while_postgres_is_cut_mid_answer_shows_it_once(
    tmp_path: Path, postgres_url: str
) -> None:
    api = ActsOnFirstDraft()
    model = SlowModel()
    async with cluster(tmp_path, postgres_url, model, workers=1, api=api) as (group, _):
        api.on_draft = lambda: group.proxy.cut(3600)  # until the test ends the cut
        balancer = Balancer(group)
        users = Users(balancer, chats=1, per_chat=1, seed=1)
        assert users.chat_ids == [CHAT]
        seen = ""

        async def kill() -> None:
            nonlocal seen
            async with asyncio.timeout(60):
                await api.acted.wait()
                seen = await _logged(group.workers[0], SHOWN_WITHOUT_DATABASE, HELD_BACK)
            await group.killed(0)
            group.proxy.cut(0)  # the database is back, its worker gone

        verdict = await settled_after_a_kill(group, api, balancer, users, model, kill)
        assert not group.tracebacks(), group.tracebacks()[0]
    texts = api.texts(CHAT)
    print(f"\n{verdict.figures('PostgreSQL cut, then SIGKILL')}; the first worker: {seen!r}")
    assert len(texts) == 1, texts
    assert TAG in texts[0] and COMPLETE in texts[0]
    assert len(api.sent("sendMessage", CHAT)) == 1
    assert verdict.ok and not verdict.sent_before_a_kill and verdict.answered == 1, verdict
