"""Chatwoot's conversation events delivered out of order (its webhooks go out from a job
queue and are retried): an update older than one applied is ignored, on SQLite and
PostgreSQL. Failed before its fix."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from adapters.chatwoot.adapter import ChatwootAdapter
from adapters.chatwoot.payloads import (
    AgentAnswered,
    AgentReply,
    StatusChange,
    agent_name,
    read,
)
from adapters.chatwoot.settings import ChatwootSettings
from adapters.kit.runner import host_for
from bot.handoff import repo as handoff_repo
from bot.handoff.types import HandoffState, HandoffStatus, Reason
from bot.types import ConversationKey, utcnow
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ACCOUNT_SECRET, Conversation, FakeChatwoot, chatwoot_worker
from tests.test_handoff import pg

__all__ = ["pg"]  # the fixture, used by name

AGENT = {"id": 42, "name": "Alex", "type": "user"}
KEY = ConversationKey("chatwoot", f"{ACCOUNT}:31")
STATE_WRITES = ("UPDATE HANDOFF_STATES", "INSERT INTO HANDOFF_STATES")


def _update(
    fake: FakeChatwoot, conv: Conversation, status: str, updated_at: float | None
) -> dict[str, Any]:
    """The account webhook's conversation_status_changed for `status`, stamped `updated_at`
    (None: without one, as older Chatwoots send it)."""
    conv.status = status
    payload = {**fake.conversation_data(conv), "event": "conversation_status_changed"}
    payload["meta"]["assignee"] = AGENT if status == "open" else None
    if updated_at is None:
        del payload["updated_at"]
    else:
        payload["updated_at"] = updated_at
    return payload


async def test_an_older_status_delivered_after_a_newer_one_is_ignored(database_url: str) -> None:
    """Resolved in Chatwoot, then the earlier "open" of the same conversation delivered late:
    it took the conversation from the bot again, and the customer's next messages went to an
    agents' queue for a conversation Chatwoot shows resolved."""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "I want to talk to a person")
        await w.idle()
        assert (await w.app.desk.status(KEY)).state is HandoffState.WAITING

        # Stamps after the echo of Parley's own request (stamped by the fake's clock, this
        # one): a fixed stamp of 2027 is one from the future before then.
        base = fake.clock() + 1
        assert await _deliver(w, conv, "open", base + 0.25) is HandoffState.HUMAN
        assert await _deliver(w, conv, "resolved", base + 2.5) is HandoffState.BOT
        # The late "open", older than the resolution: ignored.
        assert await _deliver(w, conv, "open", base + 1.75) is HandoffState.BOT
        # The resolution delivered again (a retry) still applies; a newer "open" does.
        assert await _deliver(w, conv, "resolved", base + 2.5) is HandoffState.BOT
        assert await _deliver(w, conv, "open", base + 3.0) is HandoffState.HUMAN
        # Without updated_at (an older Chatwoot) every update applies, as before.
        assert await _deliver(w, conv, "resolved", None) is HandoffState.BOT


async def test_an_update_stamped_in_the_future_does_not_hold_back_later_ones(
    database_url: str,
) -> None:
    """A Chatwoot whose clock was wrong (years ahead) stamped one update: recorded, every later
    update looked older and was ignored for good, the conversation stuck with the bot while
    agents answered it in Chatwoot. Applied, not recorded; the updates after it are ordered."""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "I want to talk to a person")
        await w.idle()

        base = fake.clock() + 1  # after the echo of Parley's own request
        assert await _deliver(w, conv, "open", base) is HandoffState.HUMAN
        # Stamped 2100-01-01.
        assert await _deliver(w, conv, "resolved", 4_102_444_800.0) is HandoffState.BOT
        assert await _deliver(w, conv, "open", base + 2.0) is HandoffState.HUMAN
        # Older: ignored.
        assert await _deliver(w, conv, "resolved", base + 1.0) is HandoffState.HUMAN


async def test_of_two_updates_handled_at_once_the_older_never_follows_the_newer(
    database_url: str,
) -> None:
    """Two status webhooks handled at once (Chatwoot's job queue sends in parallel, Parley
    serves requests in parallel): the older ("resolved") found no newer time recorded, then
    the newer ("open", another agent) was recorded and applied, then the older gave the
    conversation back to the bot, which answered the customer as an agent in Chatwoot had it.
    Here the desk handles the newer one between the older one's reading of the state and its
    change, as a second request would."""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "I want to talk to a person")
        await w.idle()
        base = fake.clock() + 1  # after the echo of Parley's own request
        await w.adapter.act(StatusChange(KEY, "open", agent_name(42), base))
        assert (await w.app.desk.status(KEY)).state is HandoffState.HUMAN
        desk = w.app.desk
        older = StatusChange(KEY, "resolved", "", base + 1)
        newer = StatusChange(KEY, "open", agent_name(7), base + 2)

        class NewerBetween:
            """The app's desk, but for the newer update handled within the older's check."""

            def __getattr__(self, name: str) -> Any:
                return getattr(desk, name)

            async def give_back(
                self,
                key: ConversationKey,
                agent: str,
                *,
                updated_at: float | None = None,
                answer_within_s: float | None = None,
            ) -> HandoffStatus:
                if updated_at == older.updated_at:
                    await w.adapter.act(newer)
                return await desk.give_back(
                    key, agent, updated_at=updated_at, answer_within_s=answer_within_s
                )

        settings = w.app.settings.section("chatwoot")
        assert isinstance(settings, ChatwootSettings)
        host = dataclasses.replace(host_for(w.app), desk=NewerBetween())  # type: ignore[arg-type]
        await ChatwootAdapter(host, settings, client=w.adapter.client).act(older)
        status = await w.app.desk.status(KEY)
        assert (status.state, status.agent) == (HandoffState.HUMAN, agent_name(7))


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("1800000002.5", 1_800_000_002.5),
        ('"2027-01-15T08:00:00.5Z"', 1_800_000_000.5),
        ('"2027-01-15 08:00:00 UTC"', 1_800_000_000.0),
        ("NaN", None), ("Infinity", None), ('"yesterday"', None), ("null", None),
    ],
)  # fmt: skip
def test_chatwoots_updated_at_is_read_as_unix_seconds(stamp: str, seconds: float | None) -> None:
    body = '{"event": "conversation_updated", "id": 31, "status": "open", '
    body += f'"account": {{"id": {ACCOUNT}}}, "updated_at": {stamp}}}'
    change = read(body.encode(), reply_prefix="/reply")
    assert isinstance(change, StatusChange)
    assert change.updated_at == seconds


async def test_parleys_own_change_is_not_undone_by_an_older_update_delivered_late(
    database_url: str,
) -> None:
    """Parley's own changes (a give-back through its desk, the customer's request for a person)
    recorded no help-desk time: until Chatwoot's echo of them arrived, a retried webhook made
    before them still applied over them. Here Chatwoot already shows the status Parley sets,
    so no echo comes (as before it arrives): the late updates are older and ignored."""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "Hello")
        await w.idle()

        opened = fake.clock() - 10  # stamps further back than OWN_CHANGE_LEEWAY_S
        assert await _deliver(w, conv, "open", opened) is HandoffState.HUMAN
        conv.status = "pending"  # no echo of the give-back
        await w.app.desk.give_back(KEY, "api:ops")
        await w.idle()
        assert [c.body for c in fake.calls][-1] == {"status": "pending"}
        # The "open" made before the give-back, retried by Chatwoot's job queue.
        assert await _deliver(w, conv, "open", opened) is HandoffState.BOT

        conv.status = "open"  # no echo of the request
        await w.app.desk.request(KEY, Reason.ASKED)
        await w.idle()
        assert [c.body for c in fake.calls][-2] == {"status": "open"}
        assert (await w.app.desk.status(KEY)).state is HandoffState.WAITING
        # A "resolved" made before the customer's request, delivered after it.
        assert await _deliver(w, conv, "resolved", opened + 5) is HandoffState.WAITING
        # A change made in Chatwoot after Parley's still applies.
        assert await _deliver(w, conv, "resolved", fake.clock()) is HandoffState.BOT


@pytest.mark.postgres
async def test_a_status_update_is_checked_and_applied_in_one_transaction(pg: str) -> None:
    """The order check (recording the update's time) and the change ran in two transactions,
    two round trips where one does: the time is now recorded with the change, the row locked."""
    async with chatwoot_worker(pg, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "I want to talk to a person")
        await w.idle()
        base = fake.clock() + 1  # after the echo of Parley's own request
        await w.adapter.act(StatusChange(KEY, "open", agent_name(42), base))
        transactions: list[list[str]] = [[]]

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            transactions[-1].append(statement)

        def committed(conn: Any) -> None:
            transactions.append([])

        engine = w.app.store.engine.sync_engine
        event.listen(engine, "before_cursor_execute", seen)
        event.listen(engine, "commit", committed)
        try:
            await w.adapter.act(StatusChange(KEY, "resolved", "", base + 1))
        finally:
            event.remove(engine, "before_cursor_execute", seen)
            event.remove(engine, "commit", committed)
        assert (await w.app.desk.status(KEY)).state is HandoffState.BOT
        writing = [
            t for t in transactions
            if any(s.lstrip().upper().startswith(STATE_WRITES) for s in t)
        ]  # fmt: skip
        assert len(writing) == 1, writing
        assert any("FOR UPDATE" in s for s in writing[0])


async def test_a_resolution_after_an_agents_answer_delivered_late_applies(
    database_url: str,
) -> None:
    """An agent answered the customer in Chatwoot, then resolved the conversation; Chatwoot's
    job queue delivered both webhooks seconds late, in order. The answer's take was recorded
    at Parley's clock (as if Parley had made it then), later than the resolution made in
    Chatwoot after the answer: the resolution was ignored, the conversation stuck with an
    agent who had left it. A change asked for by a message is ordered by the message's time."""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "Hello")
        await w.idle()
        now = datetime.fromtimestamp(fake.clock(), UTC)
        answered = now - timedelta(seconds=6)  # made 6 s ago, delivered now
        await w.adapter.act(AgentAnswered(KEY, agent_name(42), 42, "open", answered))
        assert (await w.app.desk.status(KEY)).state is HandoffState.HUMAN
        resolved = answered.timestamp() + 1  # a second after the answer, delivered after it
        await w.adapter.act(StatusChange(KEY, "resolved", agent_name(42), resolved))
        assert (await w.app.desk.status(KEY)).state is HandoffState.BOT
        # The answer delivered again (a retry) is older than the resolution: the bot keeps it.
        await w.adapter.act(AgentAnswered(KEY, agent_name(42), 42, "open", answered))
        assert (await w.app.desk.status(KEY)).state is HandoffState.BOT


async def test_a_resolution_after_an_agents_reply_note_delivered_late_applies(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for an agent's `/reply` note, which takes the conversation from the queue: at
    Parley's clock, the resolution made after the note looked older. (From the bot, the note
    marks the conversation open in Chatwoot again, and Chatwoot's echo of that is newer.)"""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "Hello")
        await w.idle()
        conv.status = "open"  # no echo of the request
        with monkeypatch.context() as m:  # the request, made 10 s ago
            m.setattr(handoff_repo, "utcnow", lambda: utcnow() - timedelta(seconds=10))
            await w.app.desk.request(KEY, Reason.ASKED)
            await w.idle()
        noted = datetime.fromtimestamp(fake.clock(), UTC) - timedelta(seconds=6)
        reply = AgentReply(KEY, "Hello, Alex here", agent_name(42), f"chatwoot:{ACCOUNT}:9", noted)
        await w.adapter.act(reply)  # delivered 6 s late
        assert (await w.app.desk.status(KEY)).state is HandoffState.HUMAN
        resolved = noted.timestamp() + 1
        await w.adapter.act(StatusChange(KEY, "resolved", agent_name(42), resolved))
        assert (await w.app.desk.status(KEY)).state is HandoffState.BOT


@pytest.mark.parametrize(
    ("start", "older", "newer", "expected"),
    [
        # Waiting: the older "resolved" gives it back, the newer "open" (unassigned) found it
        # waiting, changing nothing; Chatwoot shows it open: the agents have it.
        ("waiting", ("resolved", ""), ("open", ""), HandoffState.HUMAN),
        # The bot's: the older "open" (an agent) takes it, the newer "resolved" found it the
        # bot's; Chatwoot shows it resolved: the bot has it.
        ("bot", ("open", agent_name(42)), ("resolved", ""), HandoffState.BOT),
    ],
)
async def test_of_two_updates_at_once_the_newer_that_changed_nothing_is_read_again(
    database_url: str,
    start: str,
    older: tuple[str, str],
    newer: tuple[str, str],
    expected: HandoffState,
) -> None:
    """Two status webhooks handled at once, the older applied between the newer's reading of
    the state (nothing to change then) and its record: the newer was recorded and nothing
    done, the conversation left as the older update had it while Chatwoot shows the newer."""
    async with chatwoot_worker(database_url, ScriptedBackend()) as w:
        fake = w.fake
        conv = fake.conversation(31)
        await fake.contact_says(conv, "I want to talk to a person" if start == "waiting" else "Hi")
        await w.idle()
        base = fake.clock() + 1  # after the echo of Parley's own request
        desk = w.app.desk
        first = StatusChange(KEY, older[0], older[1], base + 1)
        second = StatusChange(KEY, newer[0], newer[1], base + 2)

        class OlderBetween:
            """The app's desk, but for the older update handled within the newer's record."""

            def __getattr__(self, name: str) -> Any:
                return getattr(desk, name)

            async def newer_update(self, key: ConversationKey, updated_at: float) -> bool:
                if updated_at == second.updated_at:
                    await w.adapter.act(first)
                return await desk.newer_update(key, updated_at)

        settings = w.app.settings.section("chatwoot")
        assert isinstance(settings, ChatwootSettings)
        host = dataclasses.replace(host_for(w.app), desk=OlderBetween())  # type: ignore[arg-type]
        await ChatwootAdapter(host, settings, client=w.adapter.client).act(second)
        assert (await w.app.desk.status(KEY)).state is expected


async def _deliver(
    w: Any, conv: Conversation, status: str, updated_at: float | None
) -> HandoffState:
    """Chatwoot's status update of `conv` (stamped `updated_at`) delivered to the worker `w`;
    the conversation's state once it is handled."""
    payload = _update(w.fake, conv, status, updated_at)
    assert await w.fake.send(payload, secret=ACCOUNT_SECRET) == 200
    await w.idle()
    return (await w.app.desk.status(KEY)).state
