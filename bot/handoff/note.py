"""The handoff note (types.HandoffNote): what the agent reads first, so that the customer
never repeats themselves. Written from the conversation's recent history: a summary (the
summarize skill's model path, else the extractive summary), the sentiment trend, the questions
the knowledge base had nothing for, and the sources the bot cited."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence

from bot.errors import BackendError
from bot.phrases import LANGUAGES, catalogue
from bot.skills.mapreduce import MapReduce, SummaryStyle
from bot.skills.router import parse_command
from bot.skills.services import SkillServices
from bot.storage.base import MessageKind, Store, StoredMessage
from bot.text import central, language_name, split_sentences
from bot.text.quoting import Said, quoted
from bot.types import Role

from .repo import HandoffRepository
from .types import HandoffNote, Reason, clean_line

log = logging.getLogger(__name__)

# A citation line as /ask writes it under its sources heading (bot.skills.qa.sources).
_CITATION = re.compile(r"^\[\d+\] (.+)$", re.M)
_TERMINATORS = frozenset(".!?)]\u3002\uff01\uff1f\uff09\u2026")
_FIELD = re.compile(r"\\\{\w+\\\}")  # a "{field}" as re.escape writes it
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
        unanswered = await self._store.unanswered_questions(conversation_id, UNANSWERED_SHOWN)
        return HandoffNote(
            reason=reason,
            detail=detail,
            summary=await self._summary(
                await asyncio.to_thread(said_in, history), str(conversation_id)
            ),
            language=language,
            sentiment_trend=[s.sentiment.label.value for s in reversed(signals)],
            unanswered=[clean_line(question_of(q)) for q in unanswered],
            sources=cited(history),
        )

    async def _summary(self, said: Sequence[Said], session: str) -> str:
        if not said:
            return ""
        services = self._services
        if services is not None and services.backend is not None:
            tokens = min(NOTE_SUMMARY_TOKENS, max(16, services.max_model_len() // 4))
            style = SummaryStyle("short", "bullets", tokens, language_name(self._agent_language))
            text = "\n".join(map(quoted, said))
            try:
                return "".join([d async for d in MapReduce(services, style, session).run(text)])
            except BackendError as exc:  # the extractive one still tells the agent something
                log.warning("handoff note: model summary failed: %s", exc)
        return await asyncio.to_thread(extractive, said, self._sentences)


def transcript(history: Sequence[StoredMessage]) -> str:
    """The conversation as the summarising model reads it: one quoted line per message."""
    return "\n".join(map(quoted, said_in(history)))


_SAID = (MessageKind.CHAT, MessageKind.COMMAND, MessageKind.DIGEST)


def said_in(history: Sequence[StoredMessage]) -> list[Said]:
    """Who said what, for the summary: the customer's messages and the bot's answers (agent
    replies, stubs, empty settlements and Parley's canned sentences left out)."""
    said = []
    for m in history:
        if m.kind not in _SAID or not m.content.strip():
            continue
        if m.content.startswith("[message: "):
            continue
        if m.role is Role.USER:
            said.append(Said("Customer", clean_line(question_of(m.content))))
        else:
            said.append(Said("Parley", clean_line(without_canned(m.content))))
    return [s for s in said if s.text]


def extractive(said: Sequence[Said], sentences: int) -> str:
    """The most central sentences (TextRank, in groups on a long transcript), one line per
    message they come from, in order: `- Customer: "..."`."""
    pieces: list[tuple[int, str]] = []
    seen: set[str] = set()
    for n, message in enumerate(said):
        for sentence in split_sentences(message.text):
            if sentence.casefold() not in seen:
                seen.add(sentence.casefold())
                pieces.append((n, sentence))
    if len(pieces) > sentences:
        pieces = [pieces[i] for i in central([s for _, s in pieces], sentences)]
    lines: dict[int, list[str]] = {}
    for n, sentence in pieces:
        lines.setdefault(n, []).append(sentence)
    return "\n".join(f"- {quoted(Said(said[n].who, ' '.join(s)))}" for n, s in lines.items())


def without_canned(content: str) -> str:
    """A bot message without the sentences Parley says by itself (bot.phrases, in every
    language: "I can only run commands here for now...", the handoff notice): they tell the agent
    nothing about the customer's problem. Sentence by sentence, each looked up in a set (or,
    with fields, matched whole against one pattern): fast on long answers."""
    plain, with_fields = _canned()
    kept = []
    for sentence in split_sentences(content):
        key = _normal(sentence)
        if key not in plain and not with_fields.fullmatch(key):
            kept.append(sentence)
    return " ".join(kept)


def _normal(sentence: str) -> str:
    return " ".join(sentence.split()).casefold()


@functools.cache
def _canned() -> tuple[frozenset[str], re.Pattern[str]]:
    sentences: set[str] = set()
    for language in LANGUAGES:
        for english, translated in catalogue(language).items():
            for entry in (english, translated):
                if _sentence(entry):
                    sentences.update(map(_normal, split_sentences(entry)))
    plain = frozenset(s for s in sentences if not _FIELD.search(re.escape(s)))
    # "{length}" and other fields are filled in after the lookup: any short text there.
    patterns = [_FIELD.sub(".{1,80}?", re.escape(s)) for s in sentences - plain]
    return plain, re.compile("|".join(sorted(patterns, key=len, reverse=True)) or "(?!)")


def _sentence(entry: str) -> bool:
    """Whether a catalogue entry is something Parley says, not a word it builds texts from
    ("You", "Sources:"), which customers' words must not lose."""
    entry = entry.strip()
    return len(entry) >= 20 or (len(entry) >= 4 and entry[-1] in _TERMINATORS)


def question_of(content: str) -> str:
    """The question itself: "/ask how do I ..." -> "how do I ..."."""
    parsed = parse_command(content)
    return parsed[1] if parsed is not None and parsed[1] else content


def cited(history: Sequence[StoredMessage]) -> list[str]:
    found: dict[str, None] = {}
    for m in history:
        if m.role is Role.ASSISTANT:
            for citation in _CITATION.findall(m.content):
                found[clean_line(citation)] = None
    return list(found)[-SOURCES_SHOWN:]
