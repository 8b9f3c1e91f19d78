"""Arabic dialects and a Turkish request (bot/handoff/phrases.py): Levantine and Egyptian
negations ("ما بدي", "مش عايز") were not read, their words for someone and for talking not
known, and "temsilci istiyorum" (I want a representative) was no request. Failed before their
fix. How long messages of negated requests grow is checked in bench/handoff_phrases.py (tests
assert no time)."""

from __future__ import annotations

import pytest

from bot.handoff.phrases import asks_for_person

NOT_WANTED = [
    "ما بدي احكي مع حدا", "مش عايز اكلم حد", "مش عاوز موظف", "ما بدي احكي مع موظف",
    "مش عايز اكلم موظف", "مابدي احكي مع حدا", "temsilci istemiyorum",
]  # fmt: skip
WANTED = [
    "بدي احكي مع حدا", "عايز اكلم حد", "عاوز موظف", "temsilci istiyorum",
    "bir temsilci istiyorum", "Lütfen, yetkili istiyorum",
    "مش شغال التطبيق، بدي احكي مع حدا",
]  # fmt: skip
# "لا" before the dialects' wanting is "no", answering the bot, not "don't" (their "don't
# want" is "ما بدي", "مش عايز"): "No, I want to talk to someone", without the comma.
NO_THEN_WANTED = ["لا بدي احكي مع حدا", "لا عايز اكلم حد", "لا عاوز موظف", "لا بدنا نحكي مع موظف"]


@pytest.mark.parametrize("text", NOT_WANTED)
def test_a_dialect_negation_asks_for_no_person(text: str) -> None:
    assert not asks_for_person(text)


@pytest.mark.parametrize("text", WANTED)
def test_a_dialect_or_turkish_request_is_read(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize("text", NO_THEN_WANTED)
def test_no_before_a_dialect_request_is_no_negation(text: str) -> None:
    assert asks_for_person(text)
    assert not asks_for_person(text.replace("لا", "ما", 1).replace("ما عا", "مش عا"))


@pytest.mark.parametrize(
    "unit", ["I don't want to talk to a person, ", "لا أريد التحدث مع موظف ", "ما بدي احكي مع حدا "]
)
def test_a_long_message_of_negated_requests_asks_for_none(unit: str) -> None:
    """Every request in it read, each from the text near it, none a request; one real
    request at its end still is."""
    text = unit * 2_000
    assert not asks_for_person(text)
    assert asks_for_person(text + ". I want to talk to a person")
