"""What skills are built with (backend, knowledge base, preferences, prompts, settings), and
the model calls they share: stream a reply's text, or collect it whole.

Built once by the app and handed to each skill's `register`; a skill keeps no state of its own
between turns.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.base import FINISH_LENGTH, Backend, GenerationRequest
from bot.phrases import TRUNCATED, base_language
from bot.settings import BackendSettings, SkillsSettings
from bot.storage.prefs import PrefsRepository, TurnPrefs
from bot.text import detect_language
from bot.text.quoting import fenced
from bot.types import ChatMessage, Role

from .prompts import Prompts
from .router import TurnContext

if TYPE_CHECKING:
    from bot.knowledge import KnowledgeBase

# Tokens a chat template adds around a system and a user message; budgets keep this free.
TEMPLATE_MARGIN_TOKENS = 48


@dataclass(frozen=True, slots=True)
class SkillServices:
    backend: Backend | None
    kb: KnowledgeBase | None
    prefs: PrefsRepository
    prompts: Prompts
    settings: SkillsSettings
    generation: BackendSettings
    count_tokens: Callable[[str], Awaitable[int]]

    async def turn(self, ctx: TurnContext) -> TurnPrefs:
        return await self.prefs.for_message(ctx.message_id)

    def language(self, prefs: TurnPrefs, text: str = "") -> str:
        """The language to answer in: the user's /lang, else the text's, else the one the
        platform reports for the user, else the default."""
        if prefs.language:
            return prefs.language
        detected = detect_language(text) if text else None
        if detected is not None:
            return detected.code
        return base_language(prefs.platform_language) or self.settings.default_language

    def max_model_len(self) -> int:
        return self.backend.capabilities.max_model_len if self.backend is not None else 0

    async def count_many(self, texts: Sequence[str]) -> list[int]:
        if self.backend is None:
            return [await self.count_tokens(t) for t in texts]
        return await self.backend.count_tokens(texts)

    def request(
        self,
        system: str,
        material: str,
        *,
        max_tokens: int,
        session_id: str | None = None,
        question: str = "",
        fence: bool = True,
    ) -> GenerationRequest:
        """A system message (from `prompts`) and one user message: `material` (a document,
        passages, partial summaries) fenced as quoted data, then the user's own `question`.
        Only a skill whose whole user message is the material (translation) turns `fence` off;
        its template says that the message is data."""
        user = fenced(material) if fence else material
        if question:
            user = f"{user}\n\n{question}"
        return GenerationRequest(
            messages=[ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, user)],
            max_tokens=max_tokens,
            temperature=self.generation.temperature,
            session_id=session_id,
        )


async def stream_text(
    backend: Backend, request: GenerationRequest, *, mark_cut: bool = False
) -> AsyncGenerator[str, None]:
    """The text deltas of one reply. Closing this closes the backend stream (aborting it).
    `mark_cut`: a reply shown to the user that ran into its token limit ends with an ellipsis
    (most often it stopped mid-word), as a chat answer does (bot.conversation.relay)."""
    shown = False
    async with aclosing(backend.stream(request)) as chunks:
        async for chunk in chunks:
            if chunk.text:
                shown = True
                yield chunk.text
            if mark_cut and shown and chunk.finish_reason == FINISH_LENGTH:
                yield TRUNCATED


async def complete(backend: Backend, request: GenerationRequest) -> str:
    """One reply, whole (partial summaries, classification)."""
    return "".join([delta async for delta in stream_text(backend, request)]).strip()
