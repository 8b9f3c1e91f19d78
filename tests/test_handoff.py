"""Human handoff through the real Telegram adapter (PTB parses real update payloads), the real
app on PostgreSQL, a scripted model at the backend seam, and a recording desk bridge.

The scripted model translates by rule: "into German" of a sentence it knows gives its German
text, anything else comes back tagged with the target language, so each test sees exactly
which direction a text was translated in.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.kit.runner import host_for
from adapters.support.webhooks import WebhookBridge, WebhookTarget
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.settings import TelegramSettings
from backends.base import GenerationRequest
from bot.app import Parley
from bot.budget import current_ledger
from bot.conversation.sink import Author, current_author
from bot.errors import BackendTimeout
from bot.handoff.note import cited, transcript
from bot.handoff.phrases import asks_for_person
from bot.handoff.types import DeskEvent, EventKind, HandoffError, HandoffState, Reason
from bot.phrases import HANDING_OFF, NO_PERSON, TIMEOUT, TRANSLATED, say
from bot.settings import load_settings
from bot.storage import migrate
from bot.storage.base import MessageKind, StoredMessage
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import ScriptedBackend, echo_last_user
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import feed, text_update
from tests.test_support_desk_webhooks import SECRET, receiver

CHAT = 42
KEY = ConversationKey("telegram", str(CHAT))
GERMAN = {"Your refund is on its way.": "Deine Erstattung ist unterwegs."}
_INTO = re.compile(r"into (\w+)\.")


def scripted(request: GenerationRequest) -> str:
    system = request.messages[0].content if request.messages[0].role is Role.SYSTEM else ""
    if "Translate the user message" in system:
        found = _INTO.search(system)
        target = found.group(1) if found else "?"
        text = request.messages[-1].content
        return (
            GERMAN.get(text, f"[{target}] {text}") if target == "German" else f"[{target}] {text}"
        )
    return echo_last_user(request)


class RecordingBridge:
    """A desk bridge as a help desk would be: it keeps what it was handed; `fail` makes its
    first tries raise, as an unreachable help desk does."""

    platforms: frozenset[str] | None = None

    def __init__(self, fail: int = 0) -> None:
        self.events: list[DeskEvent] = []
        self.tries = 0
        self._fail = fail

    async def publish(self, event: DeskEvent) -> None:
        self.tries += 1
        if self.tries <= self._fail:
            raise ConnectionError("help desk unreachable")
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.events]


@pytest.fixture
async def pg(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


@asynccontextmanager
async def stack(
    url: str,
    backend: object | None,
    handoff: dict[str, Any] | None = None,
    bridge: Any = None,
    **sections: Any,
) -> AsyncIterator[tuple[Parley, TelegramAdapter, FakeBotApi]]:
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None, database={"url": url}, handoff=handoff or {},
            telegram={"token": TOKEN, "base_url": base_url, "stream_interval_s": 0.05},
            **sections,
        )  # fmt: skip
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("telegram")
            assert isinstance(section, TelegramSettings)
            adapter = TelegramAdapter(host_for(app), section)
            app.intake.register("telegram", adapter, section.access)
            # A help desk reaches Telegram conversations (without one nothing is handed off:
            # see test_without_a_desk_for_the_platform_nothing_is_handed_off); False: none.
            if bridge is not False:
                app.desk.attach(bridge if bridge is not None else RecordingBridge())
            async with adapter:
                yield app, adapter, api
                await settle(app, adapter)


async def settle(app: Parley, adapter: TelegramAdapter) -> None:
    await adapter.idle()
    await app.manager.wait_idle()
    await adapter.idle()
    await app.desk.idle()


async def send(app: Parley, adapter: TelegramAdapter, n: int, text: str, **more: Any) -> None:
    await feed(adapter, text_update(n, CHAT, text, **more))
    await settle(app, adapter)


async def test_german_request_hands_off_agent_reply_arrives_in_german_and_bot_returns(
    pg: str,
) -> None:
    bridge = RecordingBridge()
    async with stack(pg, ScriptedBackend(scripted), bridge=bridge) as (app, adapter, api):
        await send(app, adapter, 1, "Hallo, wo ist meine Bestellung?", language="de")
        await send(app, adapter, 2, "Ich möchte mit einem Menschen sprechen", language="de")
        assert api.texts(CHAT)[-1] == say(HANDING_OFF, "de")
        assert (await app.desk.status(KEY)).state is HandoffState.WAITING
        (requested,) = bridge.events
        assert requested.kind is EventKind.REQUESTED and requested.reason is Reason.ASKED
        assert requested.note is not None and requested.note.language == "de"

        # Waiting: recorded, not answered; the agent gets it translated into English.
        await send(app, adapter, 3, "Bitte beeilen Sie sich", language="de")
        assert len(api.texts(CHAT)) == 2  # the first answer, the handoff sentence, nothing more
        forwarded = bridge.events[-1]
        assert forwarded.kind is EventKind.CUSTOMER_MESSAGE
        assert forwarded.text == "Bitte beeilen Sie sich"
        assert forwarded.translation == "[English] Bitte beeilen Sie sich"

        await app.desk.take(KEY, "sam")
        first = await app.desk.agent_message(
            KEY, "Your refund is on its way.", agent="sam", idempotency_key="cw-1"
        )
        await settle(app, adapter)
        again = await app.desk.agent_message(
            KEY, "Your refund is on its way.", agent="sam", idempotency_key="cw-1"
        )
        await settle(app, adapter)
        assert again == first
        delivered = [t for t in api.texts(CHAT) if "Erstattung" in t]
        assert delivered == [f"Deine Erstattung ist unterwegs.\n\n{say(TRANSLATED, 'de')}"]
        agent_events = [e for e in bridge.events if e.kind is EventKind.AGENT_MESSAGE]
        assert [(e.text, e.translation, e.agent) for e in agent_events] == [
            ("Your refund is on its way.", "Deine Erstattung ist unterwegs.", "sam")
        ]
        history = await app.store.history(await cid(app), 50)
        originals = [m for m in history if m.kind is MessageKind.AGENT]
        assert [m.content for m in originals] == ["Your refund is on its way."]

        await app.desk.give_back(KEY, "sam")
        await send(app, adapter, 4, "Danke, noch eine Frage", language="de")
        assert api.texts(CHAT)[-1] == "echo: Danke, noch eine Frage"
        assert bridge.kinds()[-2:] == [EventKind.AGENT_MESSAGE, EventKind.RETURNED]
        trail = await app.desk.repo.events(await cid(app))
        assert [(f, t, r) for f, t, r, _ in trail] == [
            ("bot", "waiting", "asked"), ("waiting", "human", "agent"), ("human", "bot", "resolved")
        ]  # fmt: skip
        labels = {"platform": "telegram", "reason": "asked"}
        assert app.metrics.registry.get_sample_value("parley_handoffs_total", labels) == 1


async def cid(app: Parley) -> int:
    found = await app.store.conversation_id(KEY)
    assert found is not None
    return found


async def test_angry_telegram_user_escalates(pg: str) -> None:
    bridge = RecordingBridge()
    async with stack(pg, ScriptedBackend(), bridge=bridge) as (app, adapter, api):
        await send(app, adapter, 1, "Hi, my parcel did not arrive")
        await send(app, adapter, 2, "This is terrible, I am furious!!!")
        assert api.texts(CHAT) == ["echo: Hi, my parcel did not arrive", say(HANDING_OFF, "en")]
        status = await app.desk.status(KEY)
        assert (status.state, status.reason, status.detail) == (
            HandoffState.WAITING, Reason.SENTIMENT, "angry"
        )  # fmt: skip
        note = bridge.events[0].note
        assert note is not None and note.sentiment_trend[-1] == "negative"


async def test_negative_messages_in_a_row_escalate(pg: str) -> None:
    rules = {"angry": False, "negative_in_a_row": 2}
    async with stack(pg, ScriptedBackend(), rules) as (app, adapter, api):
        await send(app, adapter, 1, "The app is slow and the update was bad")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        await send(app, adapter, 2, "Still broken, the service is poor")
        status = await app.desk.status(KEY)
        assert (status.reason, status.detail) == (Reason.SENTIMENT, "2 negative in a row")
        assert api.texts(CHAT)[-1] == say(HANDING_OFF, "en")


async def test_without_a_desk_for_the_platform_nothing_is_handed_off(pg: str) -> None:
    """No help desk reaches Telegram (no Chatwoot, no webhook): an angry customer is not
    handed to nobody; the bot keeps answering."""
    async with stack(pg, ScriptedBackend(), bridge=False) as (app, adapter, api):
        await send(app, adapter, 1, "THIS IS RIDICULOUS, third time I ask, refund me NOW!!!")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        assert say(HANDING_OFF, "en") not in api.texts(CHAT)
        assert api.texts(CHAT)[-1].startswith("echo:")
        await send(app, adapter, 2, "Ich möchte mit einem Menschen sprechen", language="de")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        assert api.texts(CHAT)[-1] == say(NO_PERSON, "de")  # no promise of a person


async def test_unanswered_questions_escalate_and_the_note_names_them(pg: str) -> None:
    bridge = RecordingBridge()
    rules = {"unanswered_in_a_row": 2}
    async with stack(pg, None, rules, bridge) as (app, adapter, api):
        await send(app, adapter, 1, "/ask what is the warranty period?")
        assert (await app.desk.status(KEY)).state is HandoffState.BOT
        await send(app, adapter, 2, "/ask can I return a used kettle?")
        status = await app.desk.status(KEY)
        assert (status.reason, status.detail) == (Reason.UNANSWERED, "2 unanswered in a row")
        last = api.texts(CHAT)[-1]
        assert last.startswith("I don't know") and last.endswith(say(HANDING_OFF, "en"))
        note = bridge.events[0].note
        assert note is not None
        assert note.unanswered == ["what is the warranty period?", "can I return a used kettle?"]
        assert "- what is the warranty period?" in note.render()
        assert note.summary  # extractive without a model


async def test_keyword_rule_hands_off_with_the_keyword(pg: str) -> None:
    async with stack(pg, ScriptedBackend(), {"keywords": ["chargeback"]}) as (app, adapter, _):
        await send(app, adapter, 1, "I will file a Chargeback today")
        status = await app.desk.status(KEY)
        assert (status.state, status.reason, status.detail) == (
            HandoffState.WAITING, Reason.KEYWORD, "chargeback"
        )  # fmt: skip


async def test_commands_still_work_while_a_person_has_it(pg: str) -> None:
    async with stack(pg, ScriptedBackend()) as (app, adapter, api):
        await send(app, adapter, 1, "hello")
        await app.desk.take(KEY, "sam")
        await send(app, adapter, 2, "are you there?")
        await send(app, adapter, 3, "/help")
        texts = api.texts(CHAT)
        assert texts[0] == "echo: hello" and "/reset" in texts[-1] and len(texts) == 2


async def test_agent_reply_without_a_model_goes_as_written_and_says_so(pg: str) -> None:
    bridge = RecordingBridge()
    async with stack(pg, None, bridge=bridge) as (app, adapter, api):
        await send(app, adapter, 1, "Ich möchte mit einem Menschen sprechen", language="de")
        await app.desk.agent_message(KEY, "Hello, I am here.", agent="sam", idempotency_key="a")
        await settle(app, adapter)
        assert api.texts(CHAT)[-1] == "Hello, I am here."
        (reply,) = [e for e in bridge.events if e.kind is EventKind.AGENT_MESSAGE]
        assert reply.translation == "" and reply.extras["translation"] == "no-model"
        assert bridge.kinds()[:2] == [EventKind.REQUESTED, EventKind.TAKEN]  # replying took it


async def test_agent_reply_to_a_bot_conversation_is_refused(pg: str) -> None:
    async with stack(pg, ScriptedBackend()) as (app, adapter, _):
        await send(app, adapter, 1, "hello")
        with pytest.raises(HandoffError):
            await app.desk.agent_message(KEY, "hi", agent="sam", idempotency_key="x")
        with pytest.raises(HandoffError):
            await app.desk.take(ConversationKey("telegram", "999"), "sam")


async def test_failing_bridge_is_retried_and_logs_no_text(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = RecordingBridge(fail=2)
    async with stack(pg, ScriptedBackend(), bridge=bridge) as (app, adapter, _):
        await send(app, adapter, 1, "I want to talk to a person about my secret order")
        assert bridge.tries == 3 and bridge.kinds() == [EventKind.REQUESTED]
    assert "secret order" not in caplog.text and "ConnectionError" in caplog.text


async def test_a_plain_turn_costs_one_handoff_statement(pg: str) -> None:
    async with stack(pg, ScriptedBackend()) as (app, adapter, _):
        await send(app, adapter, 1, "hello")
        statements: list[str] = []

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        # The signal goes through the relaxed engine (advisory, no wait for the disk).
        engines = {app.store.engine.sync_engine, app.store.relaxed_engine.sync_engine}
        for engine in engines:
            event.listen(engine, "before_cursor_execute", seen)
        try:
            await send(app, adapter, 2, "how are you?")
        finally:
            for engine in engines:
                event.remove(engine, "before_cursor_execute", seen)
        # The state itself comes with the turn lease's statement (its ChatFacts), which
        # takes the lease (lease_owner): no statement of its own.
        ours = [
            s for s in statements
            if ("handoff" in s or "message_signals" in s) and "lease_owner" not in s
        ]  # fmt: skip
        assert len(ours) == 1 and ours[0].lstrip().upper().startswith("INSERT")


async def test_the_model_works_while_the_signal_is_kept_and_nothing_shows_before_it(
    pg: str,
) -> None:
    """The message's handoff signal is written while the answer is prepared (the model is
    asked meanwhile), not before it; nothing of the answer is shown, nor its delivery begun,
    until the signal is in (a write that fails fails the turn unseen, as when it came first).
    The signals table is locked from another connection to hold the write."""
    asked = asyncio.Event()

    def answer(request: GenerationRequest) -> str:
        asked.set()
        return echo_last_user(request)

    async with stack(pg, ScriptedBackend(answer)) as (app, adapter, api):
        await send(app, adapter, 1, "hello")
        asked.clear()
        shown = list(api.texts(CHAT))
        engine = create_async_engine(pg)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("LOCK TABLE message_signals IN EXCLUSIVE MODE"))
                await feed(adapter, text_update(2, CHAT, "how are you?"))
                async with asyncio.timeout(10):
                    await asyncio.shield(asked.wait())
                    while not await _signal_write_waits(engine):  # a round trip a look
                        pass
                begun = await conn.scalar(sa.text("SELECT count(*) FROM conversations "
                                                  "WHERE delivery_owner IS NOT NULL"))  # fmt: skip
                assert begun == 0 and api.texts(CHAT) == shown
                await conn.commit()  # the lock goes: the signal, then the answer
            await settle(app, adapter)
        finally:
            await engine.dispose()
        assert api.texts(CHAT) == [*shown, "echo: how are you?"]
        async with app.store.engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM message_signals")) == 2


async def _signal_write_waits(engine: Any) -> bool:
    """Whether a statement inserting a signal waits for a lock (pg_stat_activity)."""
    async with engine.connect() as conn:
        waiting = await conn.scalar(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO message_signals%'"
        ))  # fmt: skip
    return bool(waiting)


@pytest.mark.parametrize(
    "text",
    [
        "Ich möchte mit einem Menschen sprechen", "I want to talk to a person",
        "Je voudrais parler à un conseiller", "Quiero hablar con una persona",
        "Vorrei parlare con un operatore", "Quero falar com um atendente",
        "Ik wil met een mens spreken", "Chcę porozmawiać z konsultantem",
        "Можно поговорить с оператором?", "Хочу поговорити з людиною",
        "Bir insanla konuşmak istiyorum", "أريد التحدث مع موظف",
        "请帮我转人工", "人間と話したいです",
    ],
)  # fmt: skip
def test_asking_for_a_person_is_recognised_in_every_locale(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize(
    "text", ["are you a human?", "Je veux parler à la banque", "mit einem Klick", "人工智能"]
)
def test_mentions_of_people_are_not_requests(text: str) -> None:
    assert not asks_for_person(text)


async def test_agent_taking_over_unasked_replies_in_the_customers_language(pg: str) -> None:
    async with stack(pg, ScriptedBackend(scripted)) as (app, adapter, api):
        await send(app, adapter, 1, "Guten Tag, ich habe eine Frage zur Rechnung", language="de")
        await app.desk.take(KEY, "sam")
        await app.desk.agent_message(
            KEY, "Your refund is on its way.", agent="sam", idempotency_key="t1"
        )
        await settle(app, adapter)
        assert api.texts(CHAT)[-1].startswith("Deine Erstattung ist unterwegs.")


class AuthorSink:
    """A platform's sink that keeps who spoke each reply (as the support channel's does)."""

    def __init__(self) -> None:
        self.replies: list[tuple[Author | None, str]] = []

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        text = "".join([chunk async for chunk in chunks])
        self.replies.append((current_author(), text))


async def test_sinks_are_told_who_speaks(pg: str) -> None:
    sink = AuthorSink()
    web = ConversationKey("web", "v1")
    async with stack(pg, ScriptedBackend(scripted)) as (app, _, _):
        app.manager.attach("web", sink)
        user = User("web", "v1", "Visitor", language="de")
        await app.manager.handle(Incoming(web, user, "Guten Tag, eine Frage zur Rechnung", "w1"))
        await app.desk.take(web, "sam")
        await app.desk.agent_message(web, "Your refund is on its way.", agent="sam",
                                     idempotency_key="w-a1")  # fmt: skip
        await app.manager.wait_idle()
    (bot, first), (agent, second) = sink.replies
    assert bot is None and first.startswith("echo:")
    assert agent is not None and (agent.name, agent.text) == ("sam", "Your refund is on its way.")
    assert second.startswith("Deine Erstattung ist unterwegs.")


def test_the_note_lists_what_the_bot_cited() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)

    def row(n: int, role: Role, text: str) -> StoredMessage:
        return StoredMessage(n, 1, role, MessageKind.COMMAND, text, 0, at)

    history = [
        row(1, Role.USER, "/ask how long is the warranty?"),
        row(2, Role.ASSISTANT, "Two years [1].\n\nSources:\n[1] Warranty - terms.md#scope"),
        row(3, Role.USER, "/ask and returns?"),
        row(4, Role.ASSISTANT, "30 days [1].\n\nSources:\n[1] Returns - faq.md#returns"),
    ]
    assert cited(history) == ["Warranty - terms.md#scope", "Returns - faq.md#returns"]
    assert transcript(history).splitlines()[0] == 'Customer: "how long is the warranty?"'


async def test_a_change_on_one_worker_reaches_the_other_through_redis(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    settings = load_settings(
        None, database={"url": pg}, redis={"url": redis_url, "key_prefix": key_prefix}
    )
    web, user = ConversationKey("web", "v2"), User("web", "v2", "Visitor")
    sink = AuthorSink()
    backend: Any = ScriptedBackend()
    async with Parley(settings, backend=backend) as one, Parley(settings, backend=backend) as two:
        one.manager.attach("web", sink)
        await one.manager.handle(Incoming(web, user, "hello", "r1"))  # BOT, now cached
        await two.desk.take(web, "sam")
        await one.manager.handle(Incoming(web, user, "are you there?", "r2"))
        assert [text for _, text in sink.replies] == ["echo: hello"]
        await two.desk.give_back(web, "sam")
        await one.manager.handle(Incoming(web, user, "back again?", "r3"))
        assert sink.replies[-1][1] == "echo: back again?"


async def test_repeated_take_is_one_change_and_triggers_can_be_turned_off(pg: str) -> None:
    bridge = RecordingBridge()
    off = {"enabled": False}
    async with stack(pg, ScriptedBackend(), off, bridge) as (app, adapter, api):
        await send(app, adapter, 1, "Ich möchte mit einem Menschen sprechen", language="de")
        assert api.texts(CHAT) == ["echo: Ich möchte mit einem Menschen sprechen"]
        await app.desk.take(KEY, "sam")
        await app.desk.take(KEY, "sam")
        await app.desk.take(KEY, "kim")  # another agent takes it over: recorded
        await app.desk.idle()
        assert [(e.kind, e.agent) for e in bridge.events] == [
            (EventKind.TAKEN, "sam"), (EventKind.TAKEN, "kim")
        ]  # fmt: skip


async def _waiting_unannounced(
    app: Parley, adapter: TelegramAdapter, update_id: int, chat: int, reason: Reason
) -> None:
    """A chat that said hello, then was handed off in SQL only: the crash between the state's
    change and its handing on, which left no event in memory."""
    await feed(adapter, text_update(update_id, chat, "hello"))
    await settle(app, adapter)
    found = await app.store.conversation_id(ConversationKey("telegram", str(chat)))
    assert found is not None
    waiting, bot = HandoffState.WAITING, HandoffState.BOT
    await app.desk.repo.change(found, waiting, reason, allowed_from=(bot,))


async def test_a_request_lost_before_delivery_goes_out_at_the_next_start_once(pg: str) -> None:
    """H7 H2: the events lived only in memory, so a stop or crash between the SQL change and
    the delivery left the customer waiting for a desk that never heard of them. A start hands
    on the requests no help desk was known to take (handoff_states.request_delivered), once:
    one every desk took is not sent again (Chatwoot showed its note again at every start)."""
    first = RecordingBridge()
    other = ConversationKey("telegram", "43")
    async with stack(pg, ScriptedBackend(), bridge=first) as (app, adapter, _):
        await send(app, adapter, 1, "I want to talk to a person")  # delivered
        await _waiting_unannounced(app, adapter, 2, 43, Reason.SENTIMENT)
    (sent,) = first.events
    assert sent.key == KEY
    settings = load_settings(None, database={"url": pg})
    backend: Any = ScriptedBackend()
    async with receiver() as desk:
        target = WebhookTarget(url=desk.url, secret=SECRET)  # type: ignore[arg-type]
        for start in (1, 2):
            bridge, hooks = RecordingBridge(), WebhookBridge({}, target)
            async with Parley(settings, backend=backend) as restarted:
                restarted.desk.attach(bridge)  # as adapters attach theirs, after the start
                restarted.desk.attach(hooks)
                await restarted.desk.idle()  # the webhooks' own queues included
                assert len(desk.seen) == 1  # the lost request, at the first start only
                await hooks.aclose()
            if start == 1:
                assert [(e.kind, e.key, e.reason) for e in bridge.events] == [
                    (EventKind.REQUESTED, other, Reason.SENTIMENT)
                ]
                assert bridge.events[0].note is not None  # the note the crash kept from the agent
            else:
                assert bridge.events == []
    ((_, body),) = desk.seen
    assert b'"sentiment"' in body


async def test_a_request_the_webhook_receiver_never_took_goes_out_again_at_the_next_start(
    pg: str,
) -> None:
    """The webhook bridge queues its events and delivers them later: the desk took "queued" for
    "taken" and marked the request delivered, so a receiver that answered 503 to every try (or
    a stop before it answered) left the customer waiting for a person no help desk heard of,
    for good. Marked only once the receiver answered 2xx (its receipt)."""
    key = ConversationKey("telegram", "44")
    async with stack(pg, ScriptedBackend(), bridge=RecordingBridge()) as (app, adapter, _):
        await _waiting_unannounced(app, adapter, 3, 44, Reason.ASKED)
    settings = load_settings(None, database={"url": pg})
    backend: Any = ScriptedBackend()
    async with receiver(503, 503) as desk:  # down through the first start's two tries
        target = WebhookTarget(url=desk.url, secret=SECRET)  # type: ignore[arg-type]
        for start in (1, 2, 3):
            hooks = WebhookBridge({}, target, attempts=2, backoff_max_s=0.05)
            async with Parley(settings, backend=backend) as restarted:
                restarted.desk.attach(hooks)
                await restarted.desk.idle()  # the receipts included
                waiting = [row[1] for row in await restarted.desk.repo.waiting()]
                await hooks.aclose()
            tries = [(d.status, d.attempts) for d in hooks.deliveries]
            assert tries == {1: [(503, 2)], 2: [(200, 1)], 3: []}[start], start
            assert waiting == ([key] if start == 1 else []), start


async def test_the_handoff_note_is_written_outside_the_customers_turn_budget(pg: str) -> None:
    """The note's task inherited the turn's budget ledger: its model call reserved tokens
    after the turn had settled, and nothing settled that reservation, held against the
    customer's daily budget until it expired (a soak review). It runs outside the turn."""
    ledgers: list[tuple[str, bool]] = []

    def recording(request: GenerationRequest) -> str:
        system = request.messages[0].content if request.messages[0].role is Role.SYSTEM else ""
        ledgers.append((system[:40], current_ledger() is not None))
        return scripted(request)

    async with stack(pg, ScriptedBackend(recording)) as (app, adapter, _api):
        await send(app, adapter, 1, "Where is my order?")
        answered = len(ledgers)
        await send(app, adapter, 2, "I want to talk to a human")
    assert answered >= 1 and all(in_turn for _, in_turn in ledgers[:answered])
    note_calls = ledgers[answered:]
    assert note_calls and not any(in_turn for _, in_turn in note_calls), note_calls


_FAIL_ONCE = [
    "CREATE SEQUENCE signal_write_tries",
    """CREATE FUNCTION fail_first_signal_write() RETURNS trigger AS $$
    BEGIN
        IF nextval('signal_write_tries') = 1 THEN
            RAISE EXCEPTION 'signal write refused once';
        END IF;
        RETURN NEW;
    END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER fail_first_signal_write BEFORE INSERT ON message_signals "
    "FOR EACH ROW EXECUTE FUNCTION fail_first_signal_write()",
]


async def _refuse_first_signal_write(pg: str) -> None:
    """The database refuses the first signal INSERT (a trigger), as a failing write would."""
    engine = create_async_engine(pg)
    try:
        async with engine.begin() as conn:
            for statement in _FAIL_ONCE:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


async def test_a_failed_signal_write_fails_the_turn_when_the_model_fails_too(pg: str) -> None:
    """The signal write fails while the model fails before its first word (a timeout): the
    delivery that waited for the write took its failure, and the error sentence's own
    delivery went ahead without it, shown and recorded as the answer with no signal kept.
    The turn fails unseen instead, and its next run writes the signal, then says the error
    sentence (the model still fails), as when the write came first."""

    def answer(request: GenerationRequest) -> str:
        raise BackendTimeout("the model took too long")

    await _refuse_first_signal_write(pg)
    async with stack(pg, ScriptedBackend(answer)) as (app, adapter, api):
        await send(app, adapter, 1, "hello")
        async with asyncio.timeout(10):
            while not api.texts(CHAT):
                await asyncio.sleep(0.05)
                await settle(app, adapter)
        assert api.texts(CHAT) == [say(TIMEOUT, "en")]
        async with app.store.engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM message_signals")) == 1


_REFUSE_FOLDS = [
    """CREATE FUNCTION refuse_summary() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'summary refused';
    END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER refuse_summary BEFORE UPDATE ON conversations FOR EACH ROW "
    "WHEN (NEW.summary IS DISTINCT FROM OLD.summary) EXECUTE FUNCTION refuse_summary()",
]


@asynccontextmanager
async def _turn_failed_with_its_signal_write_held(
    pg: str,
) -> AsyncIterator[tuple[Parley, Any, Any]]:
    """Three turns answered, then a fourth that fails after its signal write was started and
    before its delivery began (a trigger refuses the summary its window needs), the write held
    by a lock on the signals table: (the app, an engine on the database, the connection that
    holds the lock, uncommitted). Three answers shown in the end."""
    words = " ".join(f"word{i}" for i in range(40))
    backend = ScriptedBackend(echo_last_user)
    async with stack(pg, backend, conversation={"context_tokens": 300}) as (app, adapter, api):
        for n in range(1, 4):
            await send(app, adapter, n, f"{n} {words}")
        engine = create_async_engine(pg)
        try:
            async with engine.begin() as conn:
                for statement in _REFUSE_FOLDS:
                    await conn.execute(sa.text(statement))
            async with engine.connect() as conn:
                await conn.execute(sa.text("LOCK TABLE message_signals IN EXCLUSIVE MODE"))
                await feed(adapter, text_update(9, CHAT, f"9 {words}"))
                async with asyncio.timeout(10):
                    while not await _signal_write_waits(engine):
                        pass
                    while not await conn.scalar(sa.text("SELECT max(attempts) FROM messages")):
                        pass  # the turn failed (its attempt is counted)
                yield app, engine, conn
            async with engine.begin() as conn:
                await conn.execute(sa.text("DROP TRIGGER refuse_summary ON conversations"))
        finally:
            await engine.dispose()
        assert len(api.texts(CHAT)) == 3  # the fourth turn failed unseen


async def test_a_turn_that_fails_before_showing_ends_with_its_signal_write(pg: str) -> None:
    """A turn that failed after its signal write was started and before its delivery began
    (the summary of older turns its window needed was refused by the database) ended at
    once, its write left running on its own: the conversation was idle while the write
    still waited, outliving its turn (a shutdown too, and meeting the turn's next run).
    The turn now ends once its write has. The signals table is locked to hold the write;
    a trigger refuses summaries."""
    async with _turn_failed_with_its_signal_write_held(pg) as (app, engine, conn):
        idle = asyncio.create_task(app.manager.wait_idle())
        for _ in range(20):  # round trips, while the write still waits
            assert await _signal_write_waits(engine)
            if idle.done():
                break
        assert not idle.done()
        await conn.commit()
        await idle


async def test_a_stop_cancels_the_signal_write_of_a_turn_it_cancels(pg: str) -> None:
    """A stop cancels a turn that failed before showing and waits for its signal write: the
    write is cancelled with it, and does not go on waiting (for a lock, a database that does
    not answer) after the stop, on its own. The signals table is locked to hold the write."""
    async with _turn_failed_with_its_signal_write_held(pg) as (app, engine, conn):
        await app.manager.drain(0)
        async with asyncio.timeout(10):
            while await _signal_write_waits(engine):
                pass
        await conn.commit()
