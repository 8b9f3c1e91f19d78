"""The handoff note (types.HandoffNote): what the agent reads first, so that the customer
never repeats themselves. Written from the conversation's recent history: a summary (the
summarize skill's model path, else the extractive summary), the sentiment trend, the questions
the knowledge base had nothing for, and the sources the bot cited."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from bot.errors import BackendError
from bot.skills.mapreduce import MapReduce, SummaryStyle
from bot.skills.router import parse_command
from bot.skills.services import SkillServices
from bot.storage.base import MessageKind, Store, StoredMessage
from bot.text import language_name, summarize_extractive
from bot.types import Role

from .repo import HandoffRepository
from .types import HandoffNote, Reason

log = logging.getLogger(__name__)

# A citation line as /ask writes it under its sources heading (bot.skills.qa.sources).
_CITATION = re.compile(r"^\[\d+\] (.+)$", re.M)
TREND_MESSAGES = 8
UNANSWERED_SHOWN = 5
SOURCES_SHOWN = 10
NOTE_SUMMARY_TOKENS = 160


class NoteWriter:
    def __init__(
        self,
        store: Store,
        repo: HandoffRepository,
        services: SkillServices | None,
        *,
        agent_language: str,
        history_messages: int,
        extractive_sentences: int = 5,
    ) -> None:
        self._store = store
        self._repo = repo
        self._services = services
        self._agent_language = agent_language
        self._history = history_messages
        self._sentences = extractive_sentences

    async def write(
        self, conversation_id: int, reason: Reason, detail: str, language: str
    ) -> HandoffNote:
        history = await self._store.history(conversation_id, self._history)
        signals = await self._repo.recent_signals(conversation_id, TREND_MESSAGES)
        unanswered = await self._repo.unanswered_questions(conversation_id, UNANSWERED_SHOWN)
        return HandoffNote(
            reason=reason,
            detail=detail,
            summary=await self._summary(transcript(history), str(conversation_id)),
            language=language,
            sentiment_trend=[s.sentiment.label.value for s in reversed(signals)],
            unanswered=[question_of(q) for q in unanswered],
            sources=cited(history),
        )

    async def _summary(self, text: str, session: str) -> str:
        if not text.strip():
            return ""
        services = self._services
        if services is not None and services.backend is not None:
            tokens = min(NOTE_SUMMARY_TOKENS, max(16, services.max_model_len() // 4))
            style = SummaryStyle("short", "bullets", tokens, language_name(self._agent_language))
            try:
                return "".join([d async for d in MapReduce(services, style, session).run(text)])
            except BackendError as exc:  # the extractive one still tells the agent something
                log.warning("handoff note: model summary failed: %s", exc)
        return await asyncio.to_thread(
            summarize_extractive, text, max_sentences=self._sentences, form="bullets"
        )


def transcript(history: Sequence[StoredMessage]) -> str:
    """Who said what, for the summary: the customer's messages and the bot's answers (agent
    replies, stubs and empty settlements left out)."""
    lines = []
    for m in history:
        if m.kind not in (MessageKind.CHAT, MessageKind.COMMAND) or not m.content.strip():
            continue
        if m.content.startswith("[message: "):
            continue
        who = "Customer" if m.role is Role.USER else "Parley"
        lines.append(f"{who}: {question_of(m.content) if m.role is Role.USER else m.content}")
    return "\n".join(lines)


def question_of(content: str) -> str:
    """The question itself: "/ask how do I ..." -> "how do I ..."."""
    parsed = parse_command(content)
    return parsed[1] if parsed is not None and parsed[1] else content


def cited(history: Sequence[StoredMessage]) -> list[str]:
    found: dict[str, None] = {}
    for m in history:
        if m.role is Role.ASSISTANT:
            for citation in _CITATION.findall(m.content):
                found[citation.strip()] = None
    return list(found)[-SOURCES_SHOWN:]
