"""A start hands on again only the handoff requests that did not reach every help desk: a
trial saw every worker start post the handoff note to Chatwoot again for every conversation
waiting for a person. The real Telegram adapter and app on PostgreSQL (tests/test_handoff.py's
stack), a recording desk bridge."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.handoff.types import EventKind, HandoffState
from tests.doubles import ScriptedBackend
from tests.test_handoff import KEY, RecordingBridge, pg, scripted, send, stack

pytestmark = pytest.mark.postgres
__all__ = ["pg"]  # the fixture, used by name


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    url: str = request.getfixturevalue("pg")
    return url


async def test_a_request_every_desk_took_is_not_sent_again_at_the_next_start(
    database: str,
) -> None:
    pg = database
    first = RecordingBridge()
    async with stack(pg, ScriptedBackend(scripted), bridge=first) as (app, adapter, _):
        await send(app, adapter, 1, "I want to talk to a human")
        assert (await app.desk.status(KEY)).state is HandoffState.WAITING
        assert first.kinds() == [EventKind.REQUESTED]
        assert await app.desk.repo.waiting() == []  # delivered: nothing owed
    again = RecordingBridge()
    async with stack(pg, ScriptedBackend(scripted), bridge=again) as (app, _, _):
        await app.desk.idle()
        assert again.events == []


async def test_a_request_a_desk_dropped_is_sent_again_at_the_next_start(pg: str) -> None:
    failing = RecordingBridge(fail=100)  # refuses every try: dropped after five
    async with stack(pg, ScriptedBackend(scripted), bridge=failing) as (app, adapter, _):
        await send(app, adapter, 1, "I want to talk to a human")
        assert failing.events == [] and failing.tries == 5
        (owed,) = await app.desk.repo.waiting()
    again = RecordingBridge()
    async with stack(pg, ScriptedBackend(scripted), bridge=again) as (app, _, _):
        await app.desk.idle()
        assert again.kinds() == [EventKind.REQUESTED]
        assert again.events[0].conversation_id == owed[0]
        assert await app.desk.repo.waiting() == []
