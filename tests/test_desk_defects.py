"""Help desk and handoff defects found by earlier reviews: each test failed before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import bot.handoff.repo as handoff_repo
from bot.app import Parley
from bot.handoff.desk import CoreDesk
from bot.handoff.note import NoteWriter
from bot.handoff.phrases import asks_for_person
from bot.handoff.repo import HandoffRepository
from bot.handoff.types import DeskAway, DeskEvent, EventKind, HandoffState, Reason
from bot.settings import load_settings
from bot.storage import migrate
from bot.types import ConversationKey, utcnow
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ChatwootWorker, chatwoot_worker
from tests.test_desk_trial import chatwoot
from tests.test_handoff import (
    KEY,
    RecordingBridge,
    pg,
    send,
    stack,
)

__all__ = ["chatwoot", "pg"]  # the fixtures, used by name


def _key(conversation: int) -> ConversationKey:
    return ConversationKey("chatwoot", f"{ACCOUNT}:{conversation}")


@pytest.mark.postgres
async def test_a_reassigned_conversation_records_the_new_agent(chatwoot: ChatwootWorker) -> None:
    """A conversation reassigned in Chatwoot (conversation_updated, its changed_attributes
    naming assignee_id) kept the first agent in the handoff state: the desk's agent follows
    Chatwoot's assignee, with an audit row for the change; unassigning changes nothing."""
    fake = chatwoot.fake
    conv = fake.conversation(91)
    await fake.contact_says(conv, "I want to talk to a person")
    await chatwoot.idle()
    await fake.agent_assigns(conv, {"id": 42, "name": "Alex", "type": "user"})
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(91))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:42")
    await fake.agent_assigns(conv, {"id": 43, "name": "Sam", "type": "user"})
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(91))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:43")
    assert conv.status == "open"
    await fake.agent_assigns(conv, None)
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(91))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:43")
    cid = await chatwoot.app.store.conversation_id(_key(91))
    assert cid is not None
    moves = [(f, t) for f, t, _, _ in await chatwoot.app.desk.repo.events(cid)]
    assert moves == [("bot", "waiting"), ("waiting", "human"), ("human", "human")]


async def _until(done: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s}s: {what}")


@pytest.mark.postgres
async def test_a_handoff_request_retried_after_the_agent_resolved_it_does_not_reopen_it(
    postgres_url: str,
) -> None:
    """Chatwoot failing (502) while the customer asks for a person: the desk tries the
    request again until Chatwoot answers. An agent who resolved the conversation in the
    meantime saw it reopened by the next try (status open, the handoff note posted) and the
    customer's next message went unanswered. Resolution wins: the retry finds the request
    superseded and stops; the bot answers the customer again."""
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend(), retries=1) as w:
        fake = w.fake
        conv = fake.conversation(92)
        for _ in range(10):
            fake.fail_next(502, retry_after="")
        assert await fake.contact_says(conv, "I want to talk to a human") == 200

        def status_refused() -> bool:
            return any(c.path.endswith("/toggle_status") and c.status == 502 for c in fake.calls)

        await _until(status_refused, "the handoff request was refused once")
        assert (await w.app.desk.status(_key(92))).state is HandoffState.WAITING
        await fake.agent_sets_status(conv, "resolved")
        assert (await w.app.desk.status(_key(92))).state is HandoffState.BOT
        await w.idle()
        assert conv.status == "resolved"
        assert fake.private_notes(conv) == []
        assert (await w.app.desk.status(_key(92))).state is HandoffState.BOT


NEGATED = [
    "I don't want to talk to a person", "I don’t want to talk to a person",
    "no need for a human", "no need to speak to someone", "I do not need an agent",
    "kein Mitarbeiter nötig", "I would rather not speak to a human",
    "Ich möchte nicht mit einem Menschen sprechen", "Je ne veux pas parler à un conseiller",
    "No quiero hablar con una persona", "Non voglio parlare con un operatore",
    "Não quero falar com um atendente", "Ik wil niet met een mens spreken",
    "Nie chcę rozmawiać z konsultantem", "Не хочу говорить с оператором",
]  # fmt: skip
REQUESTS = [
    "I want a human", "can I talk to a person please", "not the bot, a human",
    "Not a bot but a real person please", "Why can't I talk to a person?",
    "I don't know, I want to talk to a person", "Is there no way to talk to a human?",
    "I don't want the bot I want to talk to a person",
    "Warum kann ich nicht mit einem Menschen sprechen?", "No, quiero hablar con una persona",
]  # fmt: skip


@pytest.mark.parametrize("text", NEGATED)
def test_a_negated_request_for_a_person_is_not_one(text: str) -> None:
    assert not asks_for_person(text)


@pytest.mark.parametrize("text", REQUESTS)
def test_a_request_for_a_person_with_a_negation_elsewhere_still_is_one(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.postgres
async def test_without_a_model_a_customer_who_wants_no_person_stays_with_the_bot(pg: str) -> None:
    """ "I don't want to talk to a person" handed the customer off (the phrase "talk to a
    person" matched, its negation unread); "not the bot, a human" did not."""
    async with stack(pg, None) as (app, adapter, _):
        await send(app, adapter, 1, "I don't want to talk to a person")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        await send(app, adapter, 2, "not the bot, a human")
        status = await app.desk.status(KEY)
        assert (status.state, status.reason) == (HandoffState.WAITING, Reason.ASKED)


@pytest.mark.postgres
async def test_workers_starting_at_once_hand_an_undelivered_request_on_once(pg: str) -> None:
    """Each worker's start handed on every request no help desk was known to take, so two
    workers starting together posted the handoff note twice (agents saw duplicate private
    notes in Chatwoot). A worker now claims each request in SQL first: one hands it on, the
    other leaves it (a worker with no help desk for it claims none); delivered, no later
    start sends it again."""
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _):
        await send(app, adapter, 5, "hello")
        found = await app.store.conversation_id(KEY)
        assert found is not None  # handed off in SQL only: a crash before its handing on
        bot, waiting = HandoffState.BOT, HandoffState.WAITING
        await app.desk.repo.change(found, waiting, Reason.SENTIMENT, allowed_from=(bot,))
    settings = load_settings(None, database={"url": pg})
    backend: Any = ScriptedBackend()
    bridges = [RecordingBridge(), RecordingBridge()]
    async with (
        Parley(settings, backend=backend) as bare,  # no help desk: it claims nothing
        Parley(settings, backend=backend) as one,
        Parley(settings, backend=backend) as two,
    ):
        await bare.desk.idle()
        for app, bridge in zip((one, two), bridges, strict=True):
            app.desk.attach(bridge)
        for app in (one, two):
            await app.desk.idle()
        sent = [(e.kind, e.key) for bridge in bridges for e in bridge.events]
        assert sent == [(EventKind.REQUESTED, KEY)]
        assert await one.desk.repo.waiting() == []
    again = RecordingBridge()
    async with Parley(settings, backend=backend) as restarted:
        restarted.desk.attach(again)
        await restarted.desk.idle()
    assert again.events == []


@pytest.mark.postgres
async def test_a_request_claimed_by_a_worker_that_died_is_handed_on_once_its_claim_lapses(
    pg: str,
) -> None:
    """The other side of the claim: a request whose claimer died before handing it on (its
    claim no longer renewed) is taken over by a worker that found it claimed at its start."""
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _):
        cid, since = await _waiting_request(app, adapter, 6)
        # A claim that holds however long this worker takes to start, until its last renewal.
        assert await app.desk.repo.claim_request(cid, since, "dead-worker", 600.0) is True
        desk = _worker(app)
        await desk.start()
        bridge = RecordingBridge()
        desk.attach(bridge)
        await desk.idle()
        assert bridge.events == []  # the claim holds: its worker may still hand it on
        assert await app.desk.repo.renew_claims("dead-worker", 0.0) == 1  # then it died
        await _until(lambda: bool(bridge.events), "the lapsed claim taken over")
        await desk.idle()
        assert [(e.kind, e.key) for e in bridge.events] == [(EventKind.REQUESTED, KEY)]
        await desk.aclose()
        assert await app.desk.repo.waiting() == []


# A negation of something else, ending its own clause without a punctuation mark, just before
# a real request: since 1bb4606 (a negation anywhere among the five words before) these were
# read as negated requests, and the customer stayed with the bot.
NEGATION_OF_SOMETHING_ELSE = [
    "I don't know I want a human", "the app doesn't work I need to talk to a person",
    "doesn't work real person please", "das geht nicht ich will mit einem Menschen sprechen",
    "Je ne veux pas le bot je veux un conseiller", "Nao funciona quero falar com um atendente",
    "it won't load I want to speak to a human",
]  # fmt: skip


@pytest.mark.parametrize("text", NEGATION_OF_SOMETHING_ELSE)
def test_a_negation_of_something_else_before_a_request_leaves_it_a_request(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.postgres
async def test_a_worker_whose_clock_is_ahead_does_not_take_a_live_claim(
    pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _clock_ahead(pg, monkeypatch)


async def test_a_worker_whose_clock_is_ahead_does_not_take_a_live_claim_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}"
    await migrate.upgrade(url)
    await _clock_ahead(url, monkeypatch)


async def _clock_ahead(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims were stamped and judged by each worker's own clock: a worker whose clock ran a
    minute ahead found a claim another worker had just taken (and renews) already lapsed,
    took it, and both handed the request on (the handoff note twice). The database's clock
    stamps and judges them now, one clock for every worker."""
    async with stack(url, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _):
        cid, since = await _waiting_request(app, adapter, 7)
        assert await app.desk.repo.claim_request(cid, since, "worker-a", 30.0) is True
        monkeypatch.setattr(handoff_repo, "utcnow", lambda: utcnow() + timedelta(seconds=60))
        assert await app.desk.repo.claim_request(cid, since, "worker-b", 30.0) is False
        assert await app.desk.repo.renew_claims("worker-a", 30.0) == 1
        assert await app.desk.repo.claim_request(cid, since, "worker-b", 30.0) is False


async def _waiting_request(app: Parley, adapter: Any, message: int) -> tuple[int, datetime]:
    """A conversation handed off in SQL only (a crash before its request went out): its id
    and its request's time."""
    await send(app, adapter, message, "hello")
    cid = await app.store.conversation_id(KEY)
    assert cid is not None
    bot, waiting = HandoffState.BOT, HandoffState.WAITING
    change = await app.desk.repo.change(cid, waiting, Reason.ASKED, allowed_from=(bot,))
    assert change.after.since is not None
    return cid, change.after.since


def _worker(app: Parley) -> CoreDesk:
    """Another worker's desk on `app`'s database, with claims of 0.3 s."""
    notes = NoteWriter(app.store, app.desk.repo, None, agent_language="en", history_messages=10)
    return CoreDesk(app.store, app.desk.repo, notes, lambda c, k: None, claim_ttl_s=0.3,
                    publish_wait_s=0.05)  # fmt: skip


class AwayBridge:
    """A help desk out of reach (DeskAway) until `away` is False."""

    platforms: frozenset[str] | None = None

    def __init__(self) -> None:
        self.events: list[DeskEvent] = []
        self.tries = 0
        self.away = True

    async def publish(self, event: DeskEvent) -> None:
        self.tries += 1
        if self.away:
            raise DeskAway("help desk out of reach")
        self.events.append(event)


@pytest.mark.postgres
async def test_a_worker_whose_help_desk_is_away_lets_another_hand_its_request_on(pg: str) -> None:
    """A worker that claimed a request found at its start while its help desk was out of
    reach (its Chatwoot down, or a network split) renewed the claim for as long as it kept
    trying, so a worker whose help desk answered only watched it: the request never went
    out. A worker now stops renewing a claim its help desk cannot take, and gives the request
    up once another worker claimed it (that worker hands it on; it is not sent twice)."""
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _):
        await _waiting_request(app, adapter, 8)
        stuck, works = _worker(app), _worker(app)
        await stuck.start()
        await works.start()
        away, bridge = AwayBridge(), RecordingBridge()
        stuck.attach(away)
        await _until(lambda: away.tries > 0, "the stuck worker tried it")
        works.attach(bridge)
        await _until(lambda: bool(bridge.events), "the other worker handed it on", 10.0)
        await works.idle()
        away.away = False
        await stuck.idle()
        assert [(e.kind, e.key) for e in bridge.events] == [(EventKind.REQUESTED, KEY)]
        assert away.events == []
        await stuck.aclose()
        await works.aclose()
        assert await app.desk.repo.waiting() == []


class _RenewFailsOnce(HandoffRepository):
    """The SQL store, but its first renewal of claims fails with an error no StorageError."""

    def __init__(self, app: Parley) -> None:
        super().__init__(app.store.engine, app.cache, relaxed=app.store.relaxed_engine)
        self.renewals = 0

    async def renew_claims(self, owner: str, ttl_s: float, leave: Sequence[int] = ()) -> int:
        self.renewals += 1
        if self.renewals == 1:
            raise RuntimeError("unexpected")
        return await super().renew_claims(owner, ttl_s, leave)


@pytest.mark.postgres
async def test_the_claims_loop_survives_an_unexpected_error(pg: str) -> None:
    """The loop renewing this worker's claims and watching the others' caught only
    StorageError: any other error ended it without a line (until the stop), so its claims
    lapsed while it still handed them on (another worker sent them too) and the requests it
    watched were never taken over. It now logs the error and goes on at the next beat."""
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _):
        cid, since = await _waiting_request(app, adapter, 9)
        # A claim that holds however long this worker takes to start, until its last renewal.
        assert await app.desk.repo.claim_request(cid, since, "dead-worker", 600.0) is True
        repo = _RenewFailsOnce(app)
        notes = NoteWriter(app.store, repo, None, agent_language="en", history_messages=10)
        desk = CoreDesk(app.store, repo, notes, lambda c, k: None, claim_ttl_s=0.3)
        await desk.start()
        bridge = RecordingBridge()
        desk.attach(bridge)
        await desk.idle()
        assert bridge.events == []  # found claimed: only the claims loop can take it over
        assert await app.desk.repo.renew_claims("dead-worker", 0.0) == 1  # then it died
        await _until(lambda: bool(bridge.events), "the lapsed claim taken over")
        await desk.idle()
        assert repo.renewals > 1
        assert [(e.kind, e.key) for e in bridge.events] == [(EventKind.REQUESTED, KEY)]
        await desk.aclose()


# "I want a person" in the languages whose phrase lists had only "to talk with a person":
# read as no request, so the customer stayed with the bot.
WANT_A_PERSON = [
    "nein, ich will einen Menschen", "Ich möchte einen Mitarbeiter bitte",
    "ich brauche einen echten Menschen!", "quiero una persona", "Necesito un agente, por favor",
    "voglio un operatore", "Vorrei una persona subito", "quero um atendente",
    "preciso de um humano agora",
]  # fmt: skip
NO_PERSON_WANTED = [
    "Ich will keinen Menschen", "No quiero una persona", "Non voglio un operatore",
    "Não quero um atendente", "ich brauche einen Berater für meine Steuererklärung",
]  # fmt: skip


@pytest.mark.parametrize("text", WANT_A_PERSON)
def test_wanting_a_person_is_a_request_in_every_language(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize("text", NO_PERSON_WANTED)
def test_not_wanting_a_person_is_no_request_in_every_language(text: str) -> None:
    assert not asks_for_person(text)


@pytest.mark.postgres
async def test_a_request_queued_behind_an_away_help_desk_does_not_reopen_a_resolution(
    pg: str,
) -> None:
    """7ea8117 checked a request for a later change only before trying it again: a request
    queued behind another event while the help desk was away got its first try once it was
    back, after the agent had resolved the conversation meanwhile, and reopened it (the
    customer then went unanswered). A request or a taking that waited is checked before its
    first try as well."""
    away = AwayBridge()
    async with stack(pg, ScriptedBackend(), bridge=away) as (app, adapter, _):
        await send(app, adapter, 10, "hello")
        other = ConversationKey("telegram", "43")
        head = DeskEvent(EventKind.CUSTOMER_MESSAGE, other, 0, HandoffState.HUMAN, utcnow())
        app.desk.publish(head)
        await _until(lambda: away.tries > 0, "the help desk tried and away")
        await app.desk.request(KEY, Reason.ASKED)
        await app.desk.give_back(KEY, "chatwoot:42")
        away.away = False
        async with asyncio.timeout(20):
            await app.desk.idle()
        assert [e.kind for e in away.events if e.key == KEY] == [EventKind.RETURNED]
