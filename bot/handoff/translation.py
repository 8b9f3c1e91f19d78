"""Translation between the customer and the agent, through the translate skill's model path
(placeholders keep code, URLs and glossary terms intact). Without a model there is none: the
caller then hands on the original and says so."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.errors import BackendError
from bot.phrases import base_language
from bot.skills.router import say_in_english
from bot.skills.services import SkillServices
from bot.skills.translate import TranslateSkill
from bot.text import detect_language

log = logging.getLogger(__name__)

# Why a text reached the other side without a translation (DeskEvent.extras["translation"]).
DONE, NOT_NEEDED, NO_MODEL, FAILED = "done", "not-needed", "no-model", "failed"


@dataclass(frozen=True, slots=True)
class Translated:
    text: str  # "" when there is none (see status)
    source: str  # the original's language: detected, else the writer's ("" : unknown)
    status: str


class Translator:
    def __init__(self, services: SkillServices | None) -> None:
        self._services = services
        self._skill = TranslateSkill(services) if services is not None else None

    async def into(
        self, text: str, target: str, session: str, *, written_in: str = ""
    ) -> Translated:
        """`text` for a reader of `target`. `written_in` is the writer's known language (an
        agent writes in agent_language, a customer in theirs): where it is the reader's, there
        is nothing to translate whatever the text, and it is the source where the detector is
        unsure (a short "OK, done."). Unsure with no known language: left as written, since
        nothing says the languages differ."""
        known, target = base_language(written_in), base_language(target)
        detected = detect_language(text)
        source = detected.code if detected is not None else known
        if not target or not text.strip() or known == target or source in ("", target):
            return Translated("", source, NOT_NEEDED)
        if self._skill is None or self._services is None or self._services.backend is None:
            return Translated("", source, NO_MODEL)
        try:
            result = await self._skill.into(text, target, session, say_in_english)
            if isinstance(result, str):  # "already in that language" after all
                return Translated("", source, NOT_NEEDED)
            parts = [delta async for delta in result]
        except BackendError as exc:
            log.warning("handoff translation failed: %s", exc)
            return Translated("", source, FAILED)
        return Translated("".join(parts).strip(), source, DONE)

    async def sender_language(self, message_id: int) -> str:
        """The language a recorded message's sender reads and writes, as far as it is known:
        their /lang, else the one their platform reports ("" : neither)."""
        if self._services is None:
            return ""
        prefs = await self._services.prefs.for_message(message_id)
        return base_language(prefs.language or prefs.platform_language)
