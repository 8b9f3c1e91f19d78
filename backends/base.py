"""The Backend protocol: what the core needs from a language model, and nothing more.

A backend streams a reply as `Chunk`s: text deltas, then one final chunk with usage and the
finish reason. Cancelling the consumer (closing the async iterator, or cancelling the task that
iterates it) aborts the request on the model server. The protocol raises only
`bot.errors.BackendError` subclasses.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bot.types import ChatMessage


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None


# The finish reason of a reply that ran into its max_tokens (OpenAI's API and vLLM's engine).
FINISH_LENGTH = "length"


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    # A note for the user that is not model text (e.g. "answered by the fallback model"):
    # shown after the reply, never stored in the conversation's context.
    notice: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: Sequence[ChatMessage]
    max_tokens: int = 512
    temperature: float = 0.7
    # Stable per conversation, so routers keep a conversation on the replica holding its prefix.
    session_id: str | None = None
    request_id: str = field(default_factory=lambda: f"parley-{uuid.uuid4().hex}")
    stop: tuple[str, ...] = ()
    # A JSON schema the reply must match (structured outputs); None for free text.
    json_schema: Mapping[str, Any] | None = None
    # The event loop's time by which the whole reply must be in (the retry layer sets it, so
    # that a retry never extends the first try's limit). A backend whose stream ends with
    # BackendTimeout there (backends.deadlines.Deadlines does) says so with a class attribute
    # `honours_deadline = True`; for any other, the retry layer times each wait itself.
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    name: str
    model: str
    max_model_len: int
    exact_token_counts: bool
    # True when the backend can count tokens for a chat message list exactly, with template.


@runtime_checkable
class Backend(Protocol):
    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None:
        """Connect / load, and probe capabilities. Idempotent."""

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        """Deltas, then one chunk with usage. Close it (aclosing) to abort the request."""
        ...

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with the model's own tokenizer (no chat template)."""
        ...

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of a whole prompt as the chat template renders it."""
        ...

    async def aclose(self) -> None: ...


# UTF-8 bytes that do not start a 3- or 4-byte character (one from U+0800 on).
_NOT_WIDE_LEAD = bytes(range(0xE0))


def estimate_tokens(text: str) -> int:
    """The documented fallback where a backend offers no tokenizer: ~4 UTF-8 bytes a token,
    and one more quarter for each character from U+0800 on. So English (and any ASCII) is ~4
    characters a token; Latin letters with accents, Cyrillic, Greek, Arabic and Hebrew (2
    bytes) ~2 a token; CJK, kana, Hangul, Devanagari, Thai (3 bytes: real tokenizers give
    them 0.7 to 2 tokens each) and emoji (4 bytes) at least one token each. Counting by
    characters alone put those at a quarter of a token, so budgets and windows reserved from
    it were overrun 2-4 times. Two C-level passes, no Python loop over characters."""
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate counts as 3 bytes
    wide = len(data.translate(None, _NOT_WIDE_LEAD))
    return max(1, (len(data) + wide + 3) // 4)


def estimate_chat_tokens(messages: Sequence[ChatMessage]) -> int:
    """`estimate_tokens` of a chat, each message with its role, where no backend can count."""
    return sum(estimate_tokens(f"{m.role.value}: {m.content}\n") for m in messages)
