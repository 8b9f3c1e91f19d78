"""Folding older turns into the summary block when the window rolls over."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from backends.base import Backend, GenerationRequest, estimate_tokens
from bot.errors import BackendError
from bot.types import ChatMessage, Role

from .window import Turn

log = logging.getLogger(__name__)

SUMMARY_INSTRUCTION = (
    "Summarise the conversation below for your own memory in at most {words} words. Keep "
    "names, facts, decisions, open questions and the user's preferences; drop pleasantries."
)
EXCERPT_CHARS = 160
# Tokens kept free for the chat template's framing of the summary request.
SUMMARY_MARGIN_TOKENS = 64


class Summarizer:
    """Writes the new summary from the old one and the turns being folded.

    With a model, the model writes it; without one (or when the model fails) an extractive
    digest keeps the opening of each folded message, newest last, within the token budget.
    """

    def __init__(
        self,
        backend: Backend | None,
        *,
        max_tokens: int,
        count_tokens: Callable[[str], Awaitable[int]],
    ) -> None:
        self._backend = backend
        self._max_tokens = max_tokens
        self._count = count_tokens

    async def count(self, text: str) -> int:
        return await self._count(text)

    async def fold(self, summary: str, turns: Sequence[Turn]) -> tuple[str, int]:
        """Return (new summary, its token count)."""
        text = None
        if self._backend is not None:
            try:
                text = await self._with_model(self._backend, summary, turns)
            except BackendError as exc:
                log.warning("summary by the model failed, using an extractive one: %s", exc)
        if not text:
            text = self._extractive(summary, turns)
        return text, await self._count(text)

    async def _with_model(self, backend: Backend, summary: str, turns: Sequence[Turn]) -> str:
        words = max(16, self._max_tokens * 3 // 4)
        instruction = SUMMARY_INSTRUCTION.format(words=words)
        # The transcript gets what the model's context leaves beside the instruction and the
        # summary being written; the oldest turns go first when they do not all fit.
        room = (
            backend.capabilities.max_model_len
            - self._max_tokens
            - await self._count(instruction)
            - SUMMARY_MARGIN_TOKENS
        )
        kept: list[str] = []
        for turn in reversed(turns):
            line, tokens = _transcribed(turn.user, turn.assistant), turn.tokens
            if tokens > room:
                # Too long whole: its opening, as the extract keeps it, rather than nothing.
                line = _transcribed(_excerpt(turn.user), _excerpt(turn.assistant))
                tokens = await self._count(line)
                if tokens > room:
                    break
            room -= tokens
            kept.append(line)
        if not kept:
            return ""  # nothing fits beside the instruction: the caller writes the extract
        transcript = "\n".join(reversed(kept))
        if summary and await self._count(summary) <= room:
            transcript = f"Earlier summary: {summary}\n{transcript}"
        request = GenerationRequest(
            messages=[
                ChatMessage(Role.SYSTEM, instruction),
                ChatMessage(Role.USER, transcript),
            ],
            max_tokens=self._max_tokens,
            temperature=0.2,
        )
        parts = [chunk.text async for chunk in backend.stream(request)]
        return "".join(parts).strip()

    def _extractive(self, summary: str, turns: Sequence[Turn]) -> str:
        lines = [summary] if summary else []
        for turn in turns:
            lines.append(f"User: {_excerpt(turn.user)}")
            lines.append(f"Assistant: {_excerpt(turn.assistant)}")
        # Keep the newest lines that fit: the recent past matters most.
        budget_chars = self._max_tokens * 4
        kept: list[str] = []
        for line in reversed(lines):
            if sum(len(k) + 1 for k in kept) + len(line) > budget_chars:
                break
            kept.append(line)
        return "\n".join(reversed(kept))


def _transcribed(user: str, assistant: str) -> str:
    return f"{_said('User', user)}\n{_said('Assistant', assistant)}"


def _said(who: str, text: str) -> str:
    """A transcript line: `who`, then `text` with every line after its first indented, so
    that no message can begin a line of its own ("Assistant: I promise a refund") that the
    summarising model would take for another speaker's. Every line break a model may read
    as one counts (str.splitlines: CR, NEL, U+2028, ...)."""
    return f"{who}: " + "\n  ".join(text.splitlines())


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


async def estimated_count(text: str) -> int:
    return estimate_tokens(text)
