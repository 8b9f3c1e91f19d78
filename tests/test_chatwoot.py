"""Parley as a Chatwoot agent bot, end to end: the fake Chatwoot (tests/fake_chatwoot.py, a
real HTTP server) sends signed webhooks to Parley's real HTTP host, over real PostgreSQL, and
takes Parley's API calls; the model is a scripted backend that translates a few sentences."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backends.base import GenerationRequest
from bot.storage import migrate
from bot.types import ConversationKey, Role
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ChatwootWorker, chatwoot_worker

pytestmark = pytest.mark.postgres

TRANSLATIONS = {
    "Your parcel left our warehouse today.": "Ihr Paket hat heute unser Lager verlassen.",
    "Wo ist mein Paket? Es ist seit einer Woche unterwegs.": (
        "Where is my parcel? It has been on its way for a week."
    ),
}


def translating(request: GenerationRequest) -> str:
    """The scripted model: a known sentence comes back translated, anything else echoed."""
    last = [m for m in request.messages if m.role is Role.USER][-1].content
    return TRANSLATIONS.get(last.strip(), f"echo: {last}")


@pytest.fixture
async def worker(postgres_url: str) -> AsyncIterator[ChatwootWorker]:
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend(translating)) as w:
        yield w


def _key(conversation: int) -> ConversationKey:
    return ConversationKey("chatwoot", f"{ACCOUNT}:{conversation}")


async def _history(w: ChatwootWorker, conversation: int) -> list[tuple[Role, str]]:
    cid = await w.app.store.conversation_id(_key(conversation))
    assert cid is not None
    return [(row.role, row.content) for row in await w.app.store.history(cid, 100)]


async def test_a_pending_conversation_is_answered_once_when_the_webhook_comes_twice(
    worker: ChatwootWorker,
) -> None:
    fake = worker.fake
    conv = fake.conversation(1)
    assert await fake.contact_says(conv, "hello there", times=2) == 200
    await worker.idle()
    assert fake.public_replies(conv) == ["echo: hello there"]
    # Parley's own answer came back as a webhook and was ignored, not recorded.
    assert [event for event, _ in fake.deliveries].count("message_created") == 3
    assert await _history(worker, 1) == [
        (Role.USER, "hello there"),
        (Role.ASSISTANT, "echo: hello there"),
    ]


@pytest.mark.parametrize(
    "delivery",
    [{"secret": "not-the-secret"}, {"age_s": 400}, {"age_s": -400}],
    ids=["bad-signature", "stale", "from-the-future"],
)
async def test_a_forged_or_replayed_webhook_is_refused_and_nothing_recorded(
    worker: ChatwootWorker, delivery: dict[str, object]
) -> None:
    fake = worker.fake
    conv = fake.conversation(2)
    assert await fake.contact_says(conv, "let me in", **delivery) == 401
    await worker.idle()
    assert await worker.app.store.conversation_id(_key(2)) is None
    assert fake.public_replies(conv) == []


async def test_bad_bodies_get_a_short_4xx_and_nothing_recorded(worker: ChatwootWorker) -> None:
    import httpx

    fake = worker.fake
    conv = fake.conversation(3)
    payload = fake.message_payload(
        conv, fake.new_message(conv, "hi", "incoming", private=False, sender=conv.contact)
    )
    del payload["account"]
    assert await fake.send(payload) == 400
    async with httpx.AsyncClient() as client:
        unsigned = await client.post(fake.webhook_url, content=b"{}")
        huge = await client.post(fake.webhook_url, content=b"x" * 600_000)
        wrong_method = await client.get(fake.webhook_url)
    assert unsigned.status_code == 401 and huge.status_code == 413
    assert wrong_method.status_code == 405
    for response in (unsigned, huge):
        assert len(response.text) < 200 and "Traceback" not in response.text
    await worker.idle()
    assert await worker.app.store.conversation_id(_key(3)) is None


async def test_handoff_then_the_agent_replies_in_english_and_the_customer_reads_german(
    worker: ChatwootWorker,
) -> None:
    fake = worker.fake
    conv = fake.conversation(4)
    await fake.contact_says(conv, "Ich möchte mit einem Menschen sprechen, bitte.")
    await worker.idle()
    # Handed off: open in Chatwoot, the note for the agent as a private note.
    assert conv.status == "open"
    toggles = [call.body for call in fake.api_calls("/toggle_status")]
    assert toggles == [{"status": "open"}]
    (note,) = fake.private_notes(conv)
    assert note.startswith("Handoff: asked") and "de" in note
    replies_before = fake.public_replies(conv)

    # While a person has it, the bot does not answer; the agent gets the translation.
    await fake.contact_says(conv, "Wo ist mein Paket? Es ist seit einer Woche unterwegs.")
    await worker.idle()
    assert fake.public_replies(conv) == replies_before
    assert any("Where is my parcel?" in n for n in fake.private_notes(conv))
    history = await _history(worker, 4)
    assert (Role.USER, "Wo ist mein Paket? Es ist seit einer Woche unterwegs.") in history

    # The agent answers in English, in a private note with the prefix: the customer reads it
    # in German, marked as translated; a plain note stays private.
    await fake.agent_writes(conv, "Only for my colleagues.")
    await fake.agent_writes(conv, "/reply Your parcel left our warehouse today.")
    await worker.idle()
    new = fake.public_replies(conv)[len(replies_before) :]
    assert len(new) == 1
    assert new[0].startswith("Ihr Paket hat heute unser Lager verlassen.")
    assert len(new[0]) > len("Ihr Paket hat heute unser Lager verlassen.")  # marked translated
    assert "Only for my colleagues." not in "\n".join(fake.public_replies(conv))
    history = await _history(worker, 4)
    assert any("Your parcel left our warehouse today." in text for _, text in history)

    # Back to pending in Chatwoot: the bot answers again.
    await fake.agent_sets_status(conv, "pending")
    await worker.idle()
    await fake.contact_says(conv, "thanks, one more question")
    await worker.idle()
    assert fake.public_replies(conv)[-1] == "echo: thanks, one more question"
    assert fake.api_calls("/toggle_status")[1:] == []  # Chatwoot's own change is not echoed


async def test_an_agent_opening_a_conversation_takes_it_and_resolving_gives_it_back(
    worker: ChatwootWorker,
) -> None:
    fake = worker.fake
    conv = fake.conversation(5)
    await fake.contact_says(conv, "first question")
    await worker.idle()
    assert fake.public_replies(conv) == ["echo: first question"]
    conv.assignee = {"id": 42, "name": "Alex", "type": "user"}
    await fake.agent_sets_status(conv, "open")
    await worker.idle()
    status = await worker.app.desk.status(_key(5))
    assert (status.state.value, status.agent) == ("human", "chatwoot:42")
    await fake.contact_says(conv, "second question")
    await worker.idle()
    assert fake.public_replies(conv) == ["echo: first question"]
    await fake.agent_sets_status(conv, "resolved")
    await worker.idle()
    assert (await worker.app.desk.status(_key(5))).state.value == "bot"
    assert conv.status == "resolved"  # Parley did not reopen what the agent resolved
    await fake.contact_says(conv, "third question")
    await worker.idle()
    assert fake.public_replies(conv)[-1] == "echo: third question"


async def test_a_429_from_chatwoot_delays_the_answer_but_loses_nothing(
    worker: ChatwootWorker,
) -> None:
    fake = worker.fake
    conv = fake.conversation(6)
    fake.fail_next(429, retry_after="1")
    await fake.contact_says(conv, "are you there?")
    await worker.idle()
    assert fake.public_replies(conv) == ["echo: are you there?"]
    assert [c.status for c in fake.api_calls("/messages")][:2] == [429, 200]


async def test_without_signatures_the_secret_path_authenticates(postgres_url: str) -> None:
    """Chatwoot before 4.13 does not sign agent bot webhooks: the secret is in the URL."""
    await migrate.upgrade(postgres_url)
    secret = "a-long-random-path-secret-0123456789"
    section = {"webhook_secret": None, "account_webhook_secret": None, "path_secret": secret}
    async with chatwoot_worker(postgres_url, ScriptedBackend(), **section) as w:
        fake = w.fake
        conv = fake.conversation(7)
        base = fake.webhook_url
        fake.webhook_url = f"{base}/not-the-secret-at-all-0123456789"
        assert await fake.contact_says(conv, "guessing") == 403
        fake.webhook_url = base
        assert await fake.contact_says(conv, "no secret at all") in (403, 404, 405)
        await w.idle()
        assert await w.app.store.conversation_id(_key(7)) is None
        fake.webhook_url = f"{base}/{secret}"
        assert await fake.contact_says(conv, "hello") == 200
        await w.idle()
        assert fake.public_replies(conv) == ["echo: hello"]


async def test_without_the_status_webhook_the_customers_next_message_brings_the_bot_back(
    worker: ChatwootWorker,
) -> None:
    fake = worker.fake
    conv = fake.conversation(8)
    await fake.contact_says(conv, "hello")
    await worker.idle()
    await fake.agent_sets_status(conv, "open")
    await worker.idle()
    assert (await worker.app.desk.status(_key(8))).state.value == "human"
    conv.status = "pending"  # changed in Chatwoot; its webhook never reached Parley
    await fake.contact_says(conv, "anyone?")
    await worker.idle()
    assert fake.public_replies(conv) == ["echo: hello", "echo: anyone?"]


async def test_taking_and_giving_back_elsewhere_moves_the_chatwoot_status(
    worker: ChatwootWorker,
) -> None:
    fake = worker.fake
    conv = fake.conversation(9)
    await fake.contact_says(conv, "hello")
    await worker.idle()
    await worker.app.desk.take(_key(9), "api:alex")
    await worker.idle()
    assert conv.status == "open"
    await worker.app.desk.give_back(_key(9), "api:alex")
    await worker.idle()
    assert conv.status == "pending"
    assert [c.body["status"] for c in fake.api_calls("/toggle_status")] == ["open", "pending"]
