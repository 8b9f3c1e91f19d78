"""The agent API refused a blank agent name and the bot's own ("Parley", "PARLEY", "Ｐａｒｌｅｙ")
so that the widget's "You are talking with NAME." always names a person, yet took a name
that shows nothing (a Hangul filler, the braille blank, a variation selector: letters and
marks to Unicode, printable, not spaces) and the bot's name with one of them after it, or an
accent on a letter ("Parleý"): the visitor read "You are talking with ." or "...with
Parley." while a person wrote. The validator of every agent request (take, give back, a
message) checks the name as it shows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters.support.schemas import AgentMessageRequest, TakeRequest

VISITOR = "v_abc"


def _refusal(name: str) -> str:
    with pytest.raises(ValidationError) as refused:
        TakeRequest.model_validate({"visitor_id": VISITOR, "agent": name})
    with pytest.raises(ValidationError):
        AgentMessageRequest.model_validate({"visitor_id": VISITOR, "agent": name, "text": "Hi"})
    return str(refused.value)


@pytest.mark.parametrize(
    "name", ["\u3164", "\u115f\u1160", "\uffa0", "\u2800", "\ufe0f", "\u034f", " \u3164 "]
)
def test_a_name_that_shows_nothing_is_refused(name: str) -> None:
    assert "not blank" in _refusal(name)


@pytest.mark.parametrize(
    "name",
    ["Parley\u3164", "Par\u3164ley", "Parley\u2800", "Parle\u0301y", "Parley\u0301", "PARLÉY"],
)
def test_the_bots_name_with_an_invisible_character_or_an_accent_is_refused(name: str) -> None:
    assert "bot's name" in _refusal(name)


@pytest.mark.parametrize(
    "name", ["Dana", "José", "Zoë Brontë", "अनिल", "สมชาย", "김민준", "Ana-María"]
)
def test_peoples_names_are_taken_as_written(name: str) -> None:
    taken = TakeRequest.model_validate({"visitor_id": VISITOR, "agent": name})
    assert taken.agent == name
