"""Routing of plain (non-command) messages: auto-translate, then intents, then chat.

1. A chat with auto-translate on answers a message in another language with its translation.
2. The cheap pattern check of each registered intent ("translate to German: ...",
   "summarize: ...", "what did I miss?").
3. Where the backend supports structured output (and `skills.model_intents` is on), and the
   message hints at a task (TASK_HINT) without matching a pattern, the model classifies it
   against the registered intents, constrained to a JSON schema. Only then: a model call
   before every chat answer would double the time to the first token of ordinary chat.
4. Anything else goes to chat (None: the manager runs the chat turn).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, Literal

import pydantic

from bot.errors import BackendError
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
    r"|docs?\b|documentation|manual|handbook|knowledge base|according to|dokumentation",
    re.IGNORECASE,
)


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
        target, _ = await self._s.prefs.chat(ctx.conversation_id)
        if target is not None:
            translated = await auto_translate(
                self._translator, text, target, str(ctx.key), say=ctx.say
            )
            if translated is not None:
                return translated
        found = self._router.match_intent(text)
        if found is None and self._structured and TASK_HINT.search(text):
            found = await self._classify(text, str(ctx.key))
        if found is None:
            return None
        intent, args = found
        log.info("conversation %s: routed to %s", ctx.key, intent.name)
        return await resolve(intent.handler(replace(ctx, args=args)))

    async def _classify(self, text: str, session: str) -> tuple[Intent, str] | None:
        from backends.structured import StructuredOutputUnsupported, generate_json

        assert self._s.backend is not None
        intents = self._router.intents
        system = self._s.prompts.render("intent", intents=intents)
        messages = [ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, text)]
        try:
            choice = await generate_json(self._s.backend, messages, choice_model(intents),
                                         max_tokens=128, session_id=session)  # fmt: skip
        except StructuredOutputUnsupported as exc:
            log.warning("intent detection by the model turned off: %s", exc)
            self._structured = False
            return None
        except BackendError as exc:  # the chat turn will meet the same error and report it
            log.info("intent detection failed, answering as chat: %s", exc)
            return None
        return self._pick(choice, text)

    def _pick(self, choice: Any, text: str) -> tuple[Intent, str] | None:
        intent = self._router.intent(choice.intent)
        if intent is None:
            return None
        args = (choice.text or "").strip()
        if not args or len(args) >= INTENT_TEXT_MAX_CHARS:  # cut at the cap: take the message
            args = text
        if intent.name == "translate" and choice.language:
            args = f"to {choice.language} {args}"
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


def choice_model(intents: list[Intent]) -> type[pydantic.BaseModel]:
    """The schema the model's answer must match: one of the registered intents, or chat."""
    names = (*(i.name for i in intents), CHAT)
    return pydantic.create_model(
        "IntentChoice",
        intent=(Literal[names], ...),  # type: ignore[valid-type,arg-type]
        # Bounded, so that a small model cannot write `text` until max_tokens and leave JSON
        # that never closes (guided decoding keeps to maxLength).
        text=(str, pydantic.Field("", max_length=INTENT_TEXT_MAX_CHARS)),
        language=(str, pydantic.Field("", max_length=16)),
    )
