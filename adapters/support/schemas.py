"""The API's request and response bodies; the OpenAPI document is generated from them
(adapters/support/openapi.py), so what is documented is what is checked."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return text


class VisitorRequest(_Body):
    """Optional: the visitor's previous token, to keep the same visitor (and history)."""

    visitor_token: str | None = Field(None, max_length=2048)


class VisitorResponse(BaseModel):
    visitor_id: str
    token: str
    expires_at: str = Field(description="ISO 8601, UTC")


class MessageRequest(_Body):
    text: str = Field(min_length=1, max_length=100_000)
    # Only with a server key (Authorization: Bearer sk_...): whose conversation this is.
    visitor_id: str | None = Field(None, min_length=3, max_length=64, pattern=r"^v_[\w-]+$")

    _clean = field_validator("text")(_no_nul)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be blank")
        return text


class MessageAccepted(BaseModel):
    message_id: str
    conversation_id: str


class Source(BaseModel):
    title: str
    url: str | None


class HistoryMessage(BaseModel):
    id: str
    role: Literal["user", "assistant"]
    text: str
    sources: list[Source]
    created_at: str


class HistoryPage(BaseModel):
    messages: list[HistoryMessage]
    next: str | None = Field(description="pass as `before` for the older page; null: no more")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# The events' `data`, documented in the OpenAPI document's description of /v1/events.
class DeltaEvent(BaseModel):
    reply_to: str | None
    text: str = Field(description="the new text only")


class AnswerEvent(BaseModel):
    reply_to: str | None
    text: str = Field(description="the whole final answer")
    sources: list[Source]


class NoticeEvent(BaseModel):
    text: str


class HandoffEvent(BaseModel):
    state: Literal["bot", "waiting", "human"]


class AgentEvent(BaseModel):
    text: str
    name: str
