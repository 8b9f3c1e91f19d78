"""Routing of plain (non-command) messages: auto-translate, then intents, then chat.

1. A chat with auto-translate on answers a message in another language with its translation.
2. The cheap pattern check of each registered intent ("translate to German: ...",
   "summarize: ...", "what did I miss?").
3. Where the backend supports structured output (and `skills.model_intents` is on), and the
   message hints at a task (TASK_HINT) without matching a pattern, the model classifies it
   against the registered intents, constrained to a JSON schema. Only then: a model call
   before every chat answer would double the time to the first token of ordinary chat.
4. Anything else goes to chat (None: the manager runs the chat turn).

The classification call also reads how the customer feels (sentiment, score, angry) and
whether they ask for a person (the "human" intent, registered by bot.handoff): both land in
the turn's `signals`, so escalation costs no extra request. Where the call does not run, the
manager falls back to the offline classifier (bot.sentiment.classifier).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Annotated, Any, Literal

import pydantic

from bot.errors import BackendError
from bot.sentiment.types import Label, Sentiment, TurnSignals
from bot.text.quoting import split_fenced
from bot.types import ChatMessage, Incoming, Role

from .router import Answer, CommandRouter, Intent, TurnContext, resolve
from .services import SkillServices
from .translate import TranslateSkill, auto_translate

log = logging.getLogger(__name__)

# Backends known to turn GenerationRequest.json_schema into constrained decoding.
STRUCTURED_BACKENDS = frozenset({"vllm", "openai"})
CHAT = "chat"
# Words that suggest a message asks for a skill rather than conversation, in the languages
# the language detector knows best. Recall matters more than precision: a false hint costs
# one short classification call, a missed one leaves the message to chat.
TASK_HINT = re.compile(
    r"translat|übersetz|tradu[cisz]|tłumacz|перев[оеё]д|翻译|翻訳|ترجم"
    r"|summar|summari[sz]|zusammenfass|résum|resum|kurzfass|подыт|кратк|总结|摘要|要約|لخص|ملخص"
    r"|missed|verpasst|manqué|perdí|пропустил"
    r"|docs?\b|documentation|manual|handbook|knowledge base|according to|dokumentation"
    # Asking for a person (the "human" intent): the phrase list catches the usual wordings,
    # the model the rest ("is there anybody real there?").
    r"|human|person|people|someone|somebody|anybody|agent|operator|representative|staff"
    r"|mensch|mitarbeiter|jemand|berater|humain|personne|quelqu|conseill|opérat"
    r"|humano|alguien|asesor|operador|atendente|pessoa|alguém|umano|qualcuno|operatore"
    r"|medewerker|iemand|człowiek|konsultant|kogoś|операт|человек|живо[йм]|сотрудник"
    r"|консультант|людин|оператор|співробітник|insan|temsilci|yetkili|موظف|شخص|إنسان"
    r"|人工|客服|真人|担当者|オペレーター|人間",
    re.IGNORECASE,
)
# The intent a customer's request for a person routes to (bot.handoff registers it).
HUMAN = "human"
# The skills whose material a document's message gives them: its text (bot.conversation.intake).
_DOCUMENT_SKILLS = frozenset({"summarize", "translate"})


class SkillRouting:
    """The manager's seam for plain messages (see ConversationManager._turn)."""

    def __init__(self, router: CommandRouter, services: SkillServices) -> None:
        self._router = router
        self._s = services
        self._translator = TranslateSkill(services)
        # Turned off for this process after a server refused a schema once.
        self._structured = self._supports_structured()

    async def remember(self, message_id: int, incoming: Incoming) -> None:
        """Keep what a later turn needs and the history lacks: the replied-to text."""
        if incoming.reply_to_text:
            await self._s.prefs.remember_reply_to(message_id, incoming.reply_to_text)

    async def keeps_messages(self, conversation_id: int) -> bool:
        _, keep = await self._s.prefs.chat(conversation_id)  # cached: read for every message
        return keep

    async def language_of(self, message_id: int, text: str) -> str:
        """The sender's /lang, else the platform's language for them, else the text's."""
        prefs = await self._s.prefs.for_message(message_id)
        if not prefs.language and prefs.platform_language:
            return prefs.platform_language
        return self._s.language(prefs, text)

    async def route(self, ctx: TurnContext, text: str) -> Answer | None:
        if ctx.facts is not None:  # read with the turn's lease: no round trip
            target = ctx.facts.auto_translate
        else:
            target, _ = await self._s.prefs.chat(ctx.conversation_id)
        if target is not None:
            translated = await auto_translate(
                self._translator, text, target, str(ctx.key), say=ctx.say
            )
            if translated is not None:
                return translated
        found = self._router.match_intent(text)
        if found is None and self._structured and TASK_HINT.search(text):
            choice = await self._classify(text, str(ctx.key))
            if choice is not None:
                read_signals(choice, ctx.signals)
                found = self._pick(choice, text)
        if found is None:
            return None
        intent, args = found
        log.info("conversation %s: routed to %s", ctx.key, intent.name)
        return await resolve(intent.handler(replace(ctx, args=args)))

    async def _classify(self, text: str, session: str) -> Any | None:
        """The model's IntentChoice for `text`, or None when the call failed."""
        from backends.structured import StructuredOutputUnsupported

        assert self._s.backend is not None
        try:
            return await read_message(self._s.backend, self._s.prompts.render,
                                      self._router.intents, text, session)  # fmt: skip
        except StructuredOutputUnsupported as exc:
            log.warning("intent detection by the model turned off: %s", exc)
            self._structured = False
            return None
        except BackendError as exc:  # the chat turn will meet the same error and report it
            log.info("intent detection failed, answering as chat: %s", exc)
            return None

    def _pick(self, choice: Any, text: str) -> tuple[Intent, str] | None:
        intent = self._router.intent(choice.intent)
        if intent is None:
            return None
        args = (choice.text or "").strip()
        document = split_fenced(text)
        if document is not None and intent.name in _DOCUMENT_SKILLS:
            # A document's message (bot.conversation.intake): the skill's material is its
            # fenced block (the skill takes the text out of the fence), not a line the model
            # copied from it nor the caption.
            args = document[1]
        elif not args or len(args) >= INTENT_TEXT_MAX_CHARS:  # cut at the cap: the message
            args = text
        if intent.name == "translate" and choice.language:
            # A document's fence on a line of its own: not part of the language's name.
            between = "\n\n" if document is not None else " "
            args = f"to {choice.language}{between}{args}"
        if intent.name == "summarize" and args == text:
            args = ""  # "summarise our chat": the conversation, not the request itself
        return intent, args

    def _supports_structured(self) -> bool:
        backend = self._s.backend
        if backend is None or not self._s.settings.model_intents:
            return False
        try:
            import backends.structured  # noqa: F401  (optional: another module's feature)
        except ImportError:
            return False
        return backend.capabilities.name in STRUCTURED_BACKENDS


# What the classifier may copy into `text` (the skill's argument, e.g. a target language or a
# short question); longer text is taken from the message itself.
INTENT_TEXT_MAX_CHARS = 300


# The sentiment fields of the choice: required in the schema (constrained decoding writes
# them), defaulted in validation (a reply without them still routes; its sentiment is then
# left to the offline classifier).
SENTIMENT_FIELDS = ("sentiment", "score", "angry")
SentimentName = Literal["negative", "neutral", "positive"]
# The schema offers a few scores: guided decoding of a free number could write digits until
# max_tokens. Each is exact in binary (xgrammar spells 0.7 as 0.69999999999999996, 8 tokens).
# Validation takes any number in 0..1 (a server that ignored the schema).
Score = Annotated[
    float,
    pydantic.Field(ge=0.0, le=1.0),
    pydantic.WithJsonSchema(
        {"type": "number", "enum": [0.25, 0.5, 0.75, 1.0], "description": "confidence"}
    ),
]


def choice_model(intents: list[Intent]) -> type[pydantic.BaseModel]:
    """The schema the model's answer must match: one of the registered intents, or chat, and
    the message's sentiment."""
    names = (*(i.name for i in intents), CHAT)
    return pydantic.create_model(
        "IntentChoice",
        __config__=pydantic.ConfigDict(json_schema_extra=_require_sentiment),
        intent=(Literal[names], ...),  # type: ignore[valid-type,arg-type]
        # Before `text`: a reply cut by max_tokens inside `text` loses no sentiment field.
        sentiment=(
            SentimentName,
            pydantic.Field("neutral", description="how the customer feels in this message"),
        ),
        score=(Score, 0.5),
        angry=(bool, pydantic.Field(False, description="angry or frustrated")),
        # Bounded, so that a small model cannot write `text` until max_tokens and leave JSON
        # that never closes (guided decoding keeps to maxLength).
        text=(str, pydantic.Field("", max_length=INTENT_TEXT_MAX_CHARS)),
        language=(str, pydantic.Field("", max_length=16)),
    )


def _require_sentiment(schema: dict[str, Any]) -> None:
    required = schema.setdefault("required", [])
    required.extend(name for name in SENTIMENT_FIELDS if name not in required)


async def read_message(
    backend: Any, render: Any, intents: list[Intent], text: str, session: str
) -> Any:
    """One structured-output call: the intent of `text` and its sentiment (an IntentChoice).
    Shared by the router and bench/sentiment.py's model path. Raises BackendError."""
    from backends.structured import generate_json

    system = render("intent", intents=intents)
    messages = [ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, text)]
    return await generate_json(backend, messages, choice_model(intents),
                               max_tokens=160, session_id=session)  # fmt: skip


def model_sentiment(choice: Any) -> Sentiment | None:
    """The sentiment the model stated, or None where its reply left the fields out."""
    if "sentiment" not in choice.model_fields_set:
        return None
    return Sentiment(Label(choice.sentiment), float(choice.score), bool(choice.angry), "model")


def read_signals(choice: Any, signals: TurnSignals | None) -> None:
    """What the classification call learned, into the turn's signals (when it has them)."""
    if signals is None:
        return
    found = model_sentiment(choice)
    if found is not None:
        signals.sentiment = found
    if choice.intent == HUMAN:
        signals.wants_human = True
