"""The API's request and response bodies; the OpenAPI document is generated from them
(adapters/support/openapi.py), so what is documented is what is checked."""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


# As the API issues them (adapters/support/tokens.py): "v_" and URL-safe characters.
VISITOR_ID_PATTERN = r"^v_[A-Za-z0-9_-]+$"


class VisitorRequest(_Body):
    """Optional: the visitor's previous token, to keep the same visitor (and history)."""

    visitor_token: str | None = Field(None, max_length=2048)


class VisitorResponse(BaseModel):
    visitor_id: str
    token: str
    expires_at: str = Field(description="ISO 8601, UTC")
    max_message_chars: int = Field(
        description="the longest `text` POST /v1/messages takes, in characters; longer: 413"
    )


class MessageRequest(_Body):
    text: str = Field(min_length=1)  # bounded by max_body_bytes; over max_message_chars: 413
    # Only with a server key (Authorization: Bearer sk_...): whose conversation this is.
    visitor_id: str | None = Field(None, min_length=3, max_length=64, pattern=VISITOR_ID_PATTERN)

    _clean = field_validator("text")(_no_nul)
    _filled = field_validator("text")(_not_blank)


class MessageAccepted(BaseModel):
    message_id: str
    conversation_id: str


class Source(BaseModel):
    title: str
    url: str | None


class HistoryMessage(BaseModel):
    id: str
    role: Literal["user", "assistant", "agent", "notice", "handoff"] = Field(
        description="agent: a person at the help desk, as its `agent` event showed it; "
        "notice: the service's sentence in place of an answer, as its `notice` event was; "
        "handoff: the conversation changed hands, as its `handoff` event said (`id` as the "
        "event's `id`, `state`, and `name`: the agent; `text` is empty: the client words it)"
    )
    text: str = Field(description="as the visitor got it (agent: in the visitor's language)")
    sources: list[Source]
    created_at: str
    name: str = Field("", description="agent: the agent's name")
    translated: bool = Field(False, description="agent: `text` translates `original`")
    original: str = Field("", description="agent: what the agent wrote, when translated")
    reply_to: str = Field(
        "",
        description="assistant, notice: the id of the newest visitor message it answers, as "
        "its `delta`, `answer` or `notice` event named it; agent: the id of the agent's "
        "message, as its `agent` event named it",
    )
    state: str = Field("", description="handoff: bot, waiting or human")
    notice_id: str = Field("", description="notice: its id, as its `notice` event's `id`")


class HistoryPage(BaseModel):
    messages: list[HistoryMessage]
    next: str | None = Field(description="pass as `before` for the older page; null: no more")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# The events' `data`, documented in the OpenAPI document's description of /v1/events.
class MessageEvent(BaseModel):
    id: str = Field(description="the message's id, as POST /v1/messages answered it")
    text: str = Field(description="the message as recorded")
    key: str = Field(description="its Idempotency-Key ('' without one, or from a server key)")


class DeltaEvent(BaseModel):
    reply_to: str | None
    text: str = Field(description="the new text only")
    first: bool = Field(
        description="the first delta of an attempt at this answer: drop the text shown so far"
    )


class AnswerEvent(BaseModel):
    reply_to: str | None
    text: str = Field(description="the whole final answer")
    sources: list[Source]


class NoticeEvent(BaseModel):
    id: str = Field(
        "",
        description="the notice's id, as the history's `notice` row names it (`notice_id`): "
        "two notices of the same text are told apart by it ('' : an earlier release's)",
    )
    reply_to: str | None = Field(description="the message it answers, as the history names it")
    text: str
    recorded: bool = Field(
        True,
        description="false: said outside any answer (a message refused: the visitor is not "
        "allowed), so no history shows it, even when `reply_to` names a message kept earlier "
        "(its retry was refused); absent (an earlier release): true",
    )


HandoffState = Literal["bot", "waiting", "human"]


class HandoffEvent(BaseModel):
    id: str = Field(
        "", description="the change's id, as the history's `handoff` row names it ('' : none)"
    )
    state: HandoffState
    reason: str | None = Field(None, description="asked, sentiment, unanswered, keyword, ...")
    agent: str = Field("", description="the agent who has the conversation, when one has")


class AgentEvent(BaseModel):
    text: str = Field(description="the agent's message, in the visitor's language")
    name: str = Field(description="the agent's name")
    translated: bool = Field(description="true: `text` is a machine translation of `original`")
    original: str = Field(description="what the agent wrote ('' when not translated)")
    language: str = Field(description="the language the agent wrote in ('' when unknown)")
    reply_to: str = Field(
        "", description="the id of the agent's message, as the history's `agent` row names it"
    )


# The agent API (adapters/support/agent_api.py): a help desk's back end, with a server key.
# The bot's own name: an agent called so would pass for the bot ("You are talking with
# Parley."). Compared without case, width or punctuation ("PARLEY", "Parley.", "P-a-r-l-e-y").
BOT_NAMES = ("Parley",)


# Characters that show nothing, though Unicode calls them letters, symbols or marks (so that
# a name of them is printable and no space to Python): the Hangul fillers (the usual "blank"
# display name), the braille blank, and the combining marks without a glyph of their own (the
# grapheme joiner, variation selectors, Mongolian and Khmer ones).
_SHOWS_NOTHING = re.compile(
    "[\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5\u180b-\u180f\ufe00-\ufe0f"
    "\U000e0100-\U000e01ef]"
)


def name_key(name: str) -> str:
    """A name as compared with the bot's: NFKC, case-folded, without what shows nothing and
    without accents ("Parleý" reads as the bot), letters and digits only."""
    folded = unicodedata.normalize("NFKC", _SHOWS_NOTHING.sub("", name)).casefold()
    # Decomposed, an accent is a combining mark, which is no letter: dropped with the rest.
    return "".join(ch for ch in unicodedata.normalize("NFKD", folded) if ch.isalnum())


def _agent_name(name: str) -> str:
    if not _SHOWS_NOTHING.sub("", name).strip() or not name.isprintable():
        raise ValueError("a printable name, not blank")
    if name_key(name) in {name_key(bot) for bot in BOT_NAMES}:
        raise ValueError("the bot's name is not an agent's")
    return name.strip()


class AgentRequest(_Body):
    """Take a conversation over, or give it back to the bot."""

    visitor_id: str = Field(min_length=3, max_length=64, pattern=VISITOR_ID_PATTERN)
    agent: str = Field(min_length=1, max_length=64, description="the agent's name")

    _name = field_validator("agent")(_agent_name)


class TakeRequest(AgentRequest):
    force: bool = Field(False, description="take it from the agent who has it (else 409 `taken`)")


class AgentMessageRequest(AgentRequest):
    text: str = Field(min_length=1)  # bounded by max_body_bytes; over max_message_chars: 413

    _clean = field_validator("text")(_no_nul)
    _filled = field_validator("text")(_not_blank)


class AgentMessageAccepted(BaseModel):
    message_id: str = Field(description="a string here; webhooks' message.id is an integer")
    conversation_id: str


class HandoffStatusBody(BaseModel):
    conversation_id: str
    state: HandoffState
    reason: str | None
    detail: str
    since: str | None = Field(description="ISO 8601, UTC: when the state began")
    agent: str
