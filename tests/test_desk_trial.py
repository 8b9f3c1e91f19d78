"""Trial of the handoff flow end to end (a hostile customer, a new operator): each test
failed before its fix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.support.webhooks import WebhookBridge, WebhookTarget
from bot.handoff.phrases import asks_for_person
from bot.handoff.types import HandoffState, Reason
from bot.phrases import HANDING_OFF, NO_PERSON, say
from bot.storage import migrate
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, USER_TOKEN, ChatwootWorker, chatwoot_worker
from tests.test_handoff import CHAT, KEY, RecordingBridge, pg, send, stack
from tests.test_support_desk_webhooks import SECRET, receiver

__all__ = ["pg"]  # the fixture, used by name

# What customers of support chats type most to reach a person: a word alone, or "I want"
# / "I need" / "can I get" one (the phrase list knew only "talk to a ...").
SHORT_REQUESTS = [
    "human", "Human please", "HUMAN!!!", "agent", "an agent pls", "operator", "representative",
    "a real person", "I want a human", "I need a person", "can I get a human?",
    "I'd like to speak to someone", "Mensch bitte", "Mitarbeiter", "un humain", "humano",
    "agente", "operatore", "atendente", "medewerker", "оператор", "человек", "людина",
    "konsultant", "temsilci", "人工",
]  # fmt: skip


@pytest.mark.parametrize("text", SHORT_REQUESTS)
def test_a_one_word_request_for_a_person_is_recognised(text: str) -> None:
    assert asks_for_person(text)


# French "personne" alone is "nobody" ("Qui d'autre a accès au compte ?" "Personne."); with
# an article, or "vraie", it is a person.
@pytest.mark.parametrize("text", ["Personne.", "personne", "Personne !", "Non, personne"])
def test_a_french_nobody_is_no_request_for_a_person(text: str) -> None:
    assert not asks_for_person(text)


@pytest.mark.parametrize("text", ["une personne", "Une vraie personne svp", "vraie personne"])
def test_a_french_request_for_a_person_is_still_recognised(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize(
    "text",
    [
        "are you a human?", "Is this a human or a bot?", "human resources told me to write",
        "my travel agent booked it", "I need a person's address",
        "the operator of the site", "humanity",
    ],
)  # fmt: skip
def test_a_word_about_people_is_still_no_request(text: str) -> None:
    assert not asks_for_person(text)


# "I want / need / can I get a ..." followed by a hyphen or another noun names something
# else: ordinary questions a support bot gets, each handed off to the agents' queue.
@pytest.mark.parametrize(
    "text",
    [
        "Can I get a human-readable copy of my invoice?", "I need an agent license for Bo",
        "I would like a representative sample of the data", "can I have an operator account?",
        "I need a person-to-person transfer",
    ],
)  # fmt: skip
def test_a_thing_named_after_people_is_no_request(text: str) -> None:
    assert not asks_for_person(text)


@pytest.mark.parametrize(
    "text",
    [
        "I want a human to talk to", "I need a person now", "can I get an agent, please",
        "I need a real person because this is not working", "I want a human!!", "get me an agent",
        "I need an operator (urgent)", "could I have a representative please",
    ],
)  # fmt: skip
def test_a_request_for_a_person_in_a_sentence_is_still_recognised(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.postgres
async def test_a_customer_who_types_human_is_handed_off_without_a_model(pg: str) -> None:
    bridge = RecordingBridge()
    async with stack(pg, None, bridge=bridge) as (app, adapter, api):
        await send(app, adapter, 1, "human")
        status = await app.desk.status(KEY)
        assert (status.state, status.reason) == (HandoffState.WAITING, Reason.ASKED)
        assert api.texts(CHAT)[-1] == say(HANDING_OFF, "en")


@pytest.mark.postgres
async def test_a_telegram_customer_is_never_handed_to_a_webhook_nobody_can_answer_through(
    pg: str,
) -> None:
    """The default webhook (support.webhook) gets every platform's events, and counted as a
    help desk reaching Telegram conversations: a Telegram customer who asked for a person was
    told one was coming, and then waited for good, unanswered, since the agent API names web
    chat visitors only: no receiver could take, answer or give back a Telegram conversation.
    Where only a webhook gets its events, the customer is told nobody can be reached there,
    and the bot keeps answering."""
    async with receiver() as desk:
        target = WebhookTarget(url=desk.url, secret=SECRET)  # type: ignore[arg-type]
        hooks = WebhookBridge({}, target)
        async with stack(pg, None, bridge=hooks) as (app, adapter, api):
            await send(app, adapter, 1, "I want to talk to a person")
            assert (await app.desk.status(KEY)).state is HandoffState.BOT
            assert api.texts(CHAT)[-1] == say(NO_PERSON, "en")
            await send(app, adapter, 2, "/help")
            assert len(api.texts(CHAT)) == 2
            await send(app, adapter, 3, "where is my parcel?")
            assert len(api.texts(CHAT)) == 3  # answered
        await hooks.aclose()


@pytest.fixture
async def chatwoot(postgres_url: str) -> AsyncIterator[ChatwootWorker]:
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend()) as w:
        yield w


@pytest.mark.postgres
async def test_an_agents_public_reply_takes_the_conversation_from_the_bot(
    chatwoot: ChatwootWorker,
) -> None:
    """An agent who joins a conversation of the bot by answering the customer in Chatwoot
    (a public reply, the natural way) was talked over: the bot answered the customer's answer
    to the agent, and every message after it. Answering is taking it, as a /reply note is."""
    fake = chatwoot.fake
    conv = fake.conversation(81)  # pending: the bot has it
    await fake.contact_says(conv, "where is my parcel?")
    await chatwoot.idle()
    await fake.agent_writes(conv, "Hi, I am Alex from the team, let me check.", private=False)
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(81))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:42")
    assert conv.status == "open"  # marked in Chatwoot too: its next message says so
    await fake.contact_says(conv, "thanks Alex, the order is 12345")
    await chatwoot.idle()
    assert fake.public_replies(conv) == ["echo: where is my parcel?"]  # nothing more

    await fake.agent_sets_status(conv, "resolved")
    await chatwoot.idle()
    await fake.agent_writes(conv, "Glad I could help!", private=False)  # a word after it
    await chatwoot.idle()
    assert (await chatwoot.app.desk.status(_key(81))).state is HandoffState.BOT
    assert conv.status == "resolved"
    await fake.contact_says(conv, "one more question")
    await chatwoot.idle()
    assert fake.public_replies(conv)[-1] == "echo: one more question"


@pytest.mark.postgres
async def test_with_a_users_token_the_bots_own_answers_take_nothing(postgres_url: str) -> None:
    """With a person's token (it works; answers appear as that person) Parley's answers come
    back as that user's public messages: they are not an agent's."""
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(
        postgres_url, ScriptedBackend(), api_access_token=USER_TOKEN
    ) as worker:
        conv = worker.fake.conversation(82)
        await worker.fake.contact_says(conv, "first question")
        await worker.idle()
        await worker.fake.contact_says(conv, "second question")
        await worker.idle()
        assert worker.fake.public_replies(conv) == ["echo: first question", "echo: second question"]
        assert (await worker.app.desk.status(_key(82))).state is HandoffState.BOT


def _key(conversation: int) -> ConversationKey:
    return ConversationKey("chatwoot", f"{ACCOUNT}:{conversation}")


@pytest.mark.postgres
async def test_an_agent_assigning_a_waiting_conversation_takes_it_through_conversation_updated(
    chatwoot: ChatwootWorker,
) -> None:
    """Chatwoot tells the account webhook of an assignment with conversation_updated only
    (the stand-in sends it now, and with every status change, as Chatwoot does): an agent
    who assigns themself a conversation waiting for a person takes it; the status change's
    three webhooks (opened, status_changed, updated) move the desk once."""
    fake = chatwoot.fake
    conv = fake.conversation(83)
    await fake.contact_says(conv, "I want to talk to a person")
    await chatwoot.idle()
    assert (await chatwoot.app.desk.status(_key(83))).state is HandoffState.WAITING
    assert conv.status == "open"
    await fake.agent_assigns(conv, {"id": 42, "name": "Alex", "type": "user"})
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(83))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:42")
    await fake.agent_sets_status(conv, "resolved")
    await chatwoot.idle()
    cid = await chatwoot.app.store.conversation_id(_key(83))
    assert cid is not None
    moves = [(f, t) for f, t, _, _ in await chatwoot.app.desk.repo.events(cid)]
    assert moves == [("bot", "waiting"), ("waiting", "human"), ("human", "bot")]


@pytest.mark.postgres
async def test_what_the_customer_said_to_the_agent_starts_no_streak_after_it_is_given_back(
    pg: str,
) -> None:
    """negative_in_a_row counted the messages a person had: a customer unhappy while the
    agent helped ("this is bad") was handed off again by their first unhappy word after the
    agent gave the conversation back ("2 negative in a row"), back to the agents' queue."""
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, api):
        await send(app, adapter, 1, "I want to talk to a person")
        await app.desk.take(KEY, "sam")
        await send(app, adapter, 2, "this is bad")  # to the agent
        await app.desk.give_back(KEY, "sam")
        await send(app, adapter, 3, "Thanks, but the app is still slow.")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        assert api.texts(CHAT)[-1] == "echo: Thanks, but the app is still slow."
        await send(app, adapter, 4, "It is still slow, not great.")  # the bot's own streak
        status = await app.desk.status(KEY)
        assert (status.state, status.detail) == (HandoffState.WAITING, "2 negative in a row")


@pytest.mark.postgres
async def test_commands_between_the_bots_own_unhappy_answers_still_make_a_streak(
    pg: str,
) -> None:
    """After a conversation was given back once, the streak read only the newest few
    messages of its history to tell the bot's answers from the agent's: two commands
    between two unhappy messages (/help, /history) pushed the first out of that window, and
    the bot's own "2 negative in a row" handed nothing off."""
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _api):
        await send(app, adapter, 1, "I want to talk to a person")
        await app.desk.take(KEY, "sam")
        await app.desk.give_back(KEY, "sam")
        await send(app, adapter, 2, "Thanks, but the app is still slow.")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        await send(app, adapter, 3, "/help")
        await send(app, adapter, 4, "/history")
        await send(app, adapter, 5, "It is still slow, not great.")
        status = await app.desk.status(KEY)
        assert (status.state, status.detail) == (HandoffState.WAITING, "2 negative in a row")
