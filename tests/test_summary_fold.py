"""Folding turns into the summary with a model when the turns do not fit its context: the
turns that do not fit whole are sent by their opening, and where not even that fits, the
extract is written without asking the model (a hostile review, 2026-12-05)."""

from __future__ import annotations

from backends.base import estimate_tokens
from bot.conversation.summary import EXCERPT_CHARS, Summarizer, estimated_count
from bot.conversation.window import Turn
from tests.doubles import ScriptedBackend
from tests.skills_helpers import user_of


def turn(user: str, assistant: str, reply_id: int) -> Turn:
    return Turn(user, assistant, estimate_tokens(user) + estimate_tokens(assistant), reply_id)


async def test_a_turn_too_long_for_the_summary_request_is_sent_by_its_opening() -> None:
    """The newest turn was bigger than the room left: the model was sent an empty
    conversation, and what it made of nothing was saved as the conversation's memory."""
    backend = ScriptedBackend(lambda r: "They talked about the harbour.", max_model_len=1024)
    summarizer = Summarizer(backend, max_tokens=128, count_tokens=estimated_count)
    long_answer = "The crane moved crates of tea all day. " * 400  # about 4,000 tokens
    turns = [
        turn("What did the crane move?", "Crates of tea.", 2),
        turn("Tell me everything about the harbour", long_answer, 4),
    ]
    text, _ = await summarizer.fold("", turns)
    assert text == "They talked about the harbour."
    (request,) = backend.requests
    sent = user_of(request)
    assert "User: What did the crane move?\nAssistant: Crates of tea." in sent
    assert "User: Tell me everything about the harbour\nAssistant: The crane moved" in sent
    assert len(sent) < 200 + 2 * EXCERPT_CHARS
    assert await backend.count_chat_tokens(request.messages) + 128 <= 1024


async def test_when_not_even_a_turns_opening_fits_the_extract_is_written() -> None:
    backend = ScriptedBackend(lambda r: "made up", max_model_len=260)
    summarizer = Summarizer(backend, max_tokens=128, count_tokens=estimated_count)
    text, _ = await summarizer.fold("", [turn("tea " * 500, "crates " * 500, 2)])
    assert not backend.requests
    assert text.startswith("User: tea tea")
