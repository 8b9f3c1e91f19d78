"""What the conversation manager asks of the handoff during a turn (ConversationManager):

- the state (cached: no SQL on most turns),
- for a customer turn while the bot has the conversation, where a desk reaches it (the
  manager asks `reachable` first): the message's sentiment (the
  routing call's, else the offline classifier's), stored with the message, then the triggers
  in order (the customer asked for a person, an operator keyword, the sentiment rule, the
  knowledge base failing N times in a row); the first that fires hands off,
- while a person has it: each customer message for the agent, translated,
- an agent's reply: its text for the customer (translated, marked so), and its event.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bot import phrases
from bot.conversation.sink import Author
from bot.sentiment.classifier import classify
from bot.sentiment.types import Label, Sentiment, TurnSignals
from bot.settings import HandoffSettings
from bot.skills.router import CommandRouter, Intent, TurnContext
from bot.storage.base import ConversationState, Store, StoredMessage
from bot.types import ConversationKey, Role, utcnow

from .desk import CoreDesk
from .phrases import KeywordRules, match_human
from .repo import Signal
from .translation import Translated, Translator
from .types import DeskEvent, EventKind, HandoffStatus, Reason

log = logging.getLogger(__name__)

NEUTRAL = Sentiment(Label.NEUTRAL, 0.0, False, "none")
HUMAN_INTENT = "human"


@dataclass(frozen=True, slots=True)
class Trigger:
    reason: Reason
    detail: str = ""


def register_human_intent(router: CommandRouter, settings: HandoffSettings) -> None:
    """The "human" intent: its pattern is the phrase list (bot.handoff.phrases); the model
    may pick it too. Its handler only raises the turn's flag: the manager hands off."""
    if not (settings.enabled and settings.ask_for_person):
        return

    async def wants_human(ctx: TurnContext) -> str:
        if ctx.signals is not None:
            ctx.signals.wants_human = True
        return await ctx.say(phrases.HANDING_OFF)

    description = "the customer asks to talk to a person (a human agent, not the bot)"
    router.add_intent(Intent(HUMAN_INTENT, description, wants_human, match_human))


def offline_sentiment(text: str, language: str = "") -> Sentiment:
    """The offline classifier's reading (bot.sentiment.classifier); neutral if it fails."""
    try:
        found: Sentiment = classify(text, language)
    except Exception:  # a classifier bug must not fail the customer's turn
        log.exception("sentiment classifier failed")
        return NEUTRAL
    return found


# The most messages of a conversation's history read to tell the bot's streak from what a
# person had (HandoffTurns._since_given_back).
HISTORY_READ_MAX = 1000


class HandoffTurns:
    def __init__(
        self, desk: CoreDesk, translator: Translator, settings: HandoffSettings, store: Store
    ) -> None:
        self.desk = desk
        self._store = store
        self._translator = translator
        self._settings = settings
        self._keywords = KeywordRules(settings.keywords)

    async def status(
        self, conversation_id: int, known: ConversationState | None = None, *, fresh: bool = False
    ) -> tuple[HandoffStatus, str]:
        return await self.desk.repo.status_and_language(conversation_id, known, fresh=fresh)

    def asks_for_person(self, signals: TurnSignals) -> bool:
        """Whether the turn's customer asked for a person, and that hands off here."""
        s = self._settings
        return s.enabled and s.ask_for_person and signals.wants_human

    async def assess(
        self,
        conversation_id: int,
        batch: Sequence[StoredMessage],
        text: str,
        signals: TurnSignals,
        *,
        unanswered: bool,
        before_showing: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> Trigger | None:
        """Store the batch's sentiment, then the first trigger that fires (None: none).
        `before_showing`: where no trigger fires, the signals' write is handed to it instead
        of awaited, so that it runs while the answer is prepared (the turn's delivery waits
        for it before anything is shown: its failure still fails the turn unseen)."""
        sentiment = signals.sentiment or offline_sentiment(text)
        ids = [m.id for m in batch]
        rows = [Signal(i, sentiment, unanswered) for i in ids]
        write = asyncio.ensure_future(self.desk.repo.record_signals(conversation_id, rows))
        try:
            trigger = await self._trigger(conversation_id, ids, text, sentiment, signals,
                                          unanswered=unanswered)  # fmt: skip
        except BaseException:
            write.cancel()
            raise
        if trigger is not None or before_showing is None:
            await write  # a hand-off's note reads the signals
        else:
            before_showing(write)
        return trigger

    async def _trigger(
        self,
        conversation_id: int,
        ids: list[int],
        text: str,
        sentiment: Sentiment,
        signals: TurnSignals,
        *,
        unanswered: bool,
    ) -> Trigger | None:
        s = self._settings
        if not s.enabled:
            return None
        if self.asks_for_person(signals):
            return Trigger(Reason.ASKED)
        if (keyword := self._keywords.match(text)) is not None:
            return Trigger(Reason.KEYWORD, keyword)
        if s.angry and sentiment.angry:
            return Trigger(Reason.SENTIMENT, "angry")
        negative = s.negative_in_a_row if sentiment.label is Label.NEGATIVE else 0
        failing = s.unanswered_in_a_row if unanswered else 0
        look = max(negative, failing) - len(ids)
        earlier: list[Signal] = []
        if look > 0:  # only on a negative or unanswered turn: most turns read nothing
            earlier = await self.desk.repo.recent_signals(conversation_id, look, before_id=ids[0])
            earlier = await self._since_given_back(conversation_id, earlier, len(ids))
        if negative and _streak(earlier, _is_negative) + len(ids) >= negative:
            return Trigger(Reason.SENTIMENT, f"{negative} negative in a row")
        if failing and _streak(earlier, _is_unanswered) + len(ids) >= failing:
            return Trigger(Reason.UNANSWERED, f"{failing} unanswered in a row")
        return None

    async def _since_given_back(
        self, conversation_id: int, earlier: list[Signal], batch_size: int
    ) -> list[Signal]:
        """`earlier` (newest first) down to the first message the bot did not answer since
        it last got the conversation back: what a person had is no streak of the bot's (a
        customer unhappy while the agent helped was handed off again by their first unhappy
        word after the agent gave the conversation back). Told apart by when each message's
        answer was recorded (Parley's clock; a platform's send time may be any)."""
        status, _ = await self.status(conversation_id)
        if not earlier or status.since is None:  # never handed off: every signal counts
            return earlier
        since = status.since
        # Enough to reach the oldest signal's message: commands and their answers between
        # (/help, /history) pushed it out of a window of two messages a signal, and the bot's
        # own streak went uncounted. Past HISTORY_READ_MAX, what is left counts as none.
        limit, oldest = 2 * len(earlier) + batch_size + 2, earlier[-1].message_id
        window = await self._store.history(conversation_id, limit)
        while len(window) == limit and window[0].id > oldest and limit < HISTORY_READ_MAX:
            limit = min(4 * limit, HISTORY_READ_MAX)
            window = await self._store.history(conversation_id, limit)
        recorded = {m.id: _utc(m.created_at) for m in window if m.role is Role.ASSISTANT}
        bots = {
            m.id for m in window
            if m.answered_by in recorded and recorded[m.answered_by] > since
        }  # fmt: skip
        return list(itertools.takewhile(lambda s: s.message_id in bots, earlier))

    async def handed_off_by(
        self, conversation_id: int, batch: Sequence[StoredMessage]
    ) -> StoredMessage | None:
        """The message of `batch` whose turn handed the conversation off, if one did: this is
        a run of that turn again, its sentence to the customer not out yet."""
        trigger = await self.desk.repo.trigger_message(conversation_id)
        return next((m for m in batch if m.id == trigger), None)

    def reachable(self, key: ConversationKey) -> bool:
        """Whether an agent can get the conversation (CoreDesk.reachable)."""
        return self.desk.reachable(key)

    async def hand_off(
        self,
        conversation_id: int,
        key: ConversationKey,
        trigger: Trigger,
        language: str,
        *,
        message_id: int | None = None,
    ) -> HandoffStatus:
        return await self.desk.escalate(
            conversation_id, key, trigger.reason, trigger.detail, language=language,
            trigger_message_id=message_id,
        )  # fmt: skip

    async def forward(
        self,
        conversation_id: int,
        key: ConversationKey,
        status: HandoffStatus,
        batch: Sequence[StoredMessage],
    ) -> None:
        """While a person has it: store each message's sentiment, and hand it to the agent
        with its translation into the agent's language."""
        rows = []
        _, language = await self.status(conversation_id)  # cached: the manager just read it
        for message in batch:
            sentiment = offline_sentiment(message.content)
            rows.append(Signal(message.id, sentiment))
            written_in = language or await self._translator.sender_language(message.id)
            translated = await self._translator.into(
                message.content, self._settings.agent_language, str(key), written_in=written_in
            )
            self.desk.publish(
                DeskEvent(
                    EventKind.CUSTOMER_MESSAGE, key, conversation_id, status.state, utcnow(),
                    reason=status.reason, message_id=message.id, text=message.content,
                    translation=translated.text, language=translated.source,
                    agent=status.agent, extras=_extras(translated, sentiment),
                )
            )  # fmt: skip
        await self.desk.repo.record_signals(conversation_id, rows)

    async def agent_reply(
        self, key: ConversationKey, message: StoredMessage, customer_language: str
    ) -> tuple[str, Translated, Author]:
        """The text the customer gets for an agent's message: the translation, marked as
        such, or the message itself where none was needed or possible."""
        translated = await self._translator.into(
            message.content, customer_language, str(key),
            written_in=self._settings.agent_language,
        )  # fmt: skip
        author = Author(
            message.user_display_name or "agent", message.content, translated.source, message.id
        )
        if not translated.text:
            return message.content, translated, author
        mark = phrases.say(phrases.TRANSLATED, customer_language)
        return f"{translated.text}\n\n{mark}", translated, author

    def delivered(
        self,
        conversation_id: int,
        key: ConversationKey,
        status: HandoffStatus,
        message: StoredMessage,
        translated: Translated,
    ) -> None:
        """An agent's reply reached the customer: tell the bridges (AGENT_MESSAGE)."""
        self.desk.publish(
            DeskEvent(
                EventKind.AGENT_MESSAGE, key, conversation_id, status.state, utcnow(),
                reason=status.reason, message_id=message.id, text=message.content,
                translation=translated.text, language=translated.source,
                agent=message.user_display_name, extras={"translation": translated.status},
            )
        )  # fmt: skip


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _is_negative(signal: Signal) -> bool:
    return signal.sentiment.label is Label.NEGATIVE


def _is_unanswered(signal: Signal) -> bool:
    return signal.unanswered


def _streak(newest_first: Sequence[Signal], holds: object) -> int:
    count = 0
    for signal in newest_first:
        if not holds(signal):  # type: ignore[operator]
            break
        count += 1
    return count


def _extras(translated: Translated, sentiment: Sentiment) -> dict[str, str]:
    extras = {"translation": translated.status, "sentiment": sentiment.label.value}
    if sentiment.angry:
        extras["angry"] = "true"
    return extras
