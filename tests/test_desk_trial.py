"""Trial of the handoff flow end to end (a hostile customer, a new operator): each test
failed before its fix."""

from __future__ import annotations

import pytest

from bot.handoff.phrases import asks_for_person
from bot.handoff.types import HandoffState, Reason
from bot.phrases import HANDING_OFF, say
from tests.test_handoff import CHAT, KEY, RecordingBridge, pg, send, stack

__all__ = ["pg"]  # the fixture, used by name

# What customers of support chats type most to reach a person: a word alone, or "I want"
# / "I need" / "can I get" one (the phrase list knew only "talk to a ...").
SHORT_REQUESTS = [
    "human", "Human please", "HUMAN!!!", "agent", "an agent pls", "operator", "representative",
    "a real person", "I want a human", "I need a person", "can I get a human?",
    "I'd like to speak to someone", "Mensch bitte", "Mitarbeiter", "un humain", "humano",
    "agente", "operatore", "atendente", "medewerker", "оператор", "человек", "людина",
    "konsultant", "temsilci", "人工",
]  # fmt: skip


@pytest.mark.parametrize("text", SHORT_REQUESTS)
def test_a_one_word_request_for_a_person_is_recognised(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize(
    "text",
    [
        "are you a human?", "Is this a human or a bot?", "human resources told me to write",
        "my travel agent booked it", "I need a person's address",
        "the operator of the site", "humanity",
    ],
)  # fmt: skip
def test_a_word_about_people_is_still_no_request(text: str) -> None:
    assert not asks_for_person(text)


@pytest.mark.postgres
async def test_a_customer_who_types_human_is_handed_off_without_a_model(pg: str) -> None:
    bridge = RecordingBridge()
    async with stack(pg, None, bridge=bridge) as (app, adapter, api):
        await send(app, adapter, 1, "human")
        status = await app.desk.status(KEY)
        assert (status.state, status.reason) == (HandoffState.WAITING, Reason.ASKED)
        assert api.texts(CHAT)[-1] == say(HANDING_OFF, "en")
