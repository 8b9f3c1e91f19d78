"""A review of the negations around a request for a person (bot/handoff/phrases.py, after
tests/test_handoff_negation.py): each case here was misread by it, and a hostile message took
its patterns seconds to minutes."""

from __future__ import annotations

import pytest

from bot.handoff.phrases import asks_for_person

# Read as no request: the Japanese "不要" taken for the negation of the Chinese request before
# it ("real person, not the robot"); "anyone" / "no one" not found at all.
MISSED = [
    "我要真人不要机器人", "转人工不要机器人", "人工客服不要机器人", "找客服不要等了",
    "Isn't there anyone I can talk to?", "Is there no one I can talk to?",
    "Can't I talk to anyone?",
]  # fmt: skip
# Read as requests, an agent pulled in: "may I not talk to someone?" (the negation right after
# the word of possibility is of the talking, no request before the negated question was read as
# one), and negations whose words were missing (不想要, أن, في, a Turkish verb after the word).
FALSE = [
    "Можно не разговаривать с оператором?", "Можна не розмовляти з оператором?",
    "Можно мне не говорить с оператором?", "Czy mogę nie rozmawiać z konsultantem?",
    "Można nie rozmawiać z konsultantem?", "Posso non parlare con un operatore?",
    "Posso não falar com um atendente?", "Puis-je ne pas parler à un conseiller ?",
    "Je peux ne pas parler à un conseiller ?", "Est-il possible de ne pas parler à un conseiller ?",
    "我不想要人工客服", "我不想要转人工", "我不想去找客服",
    "لا أريد أن أتحدث مع موظف", "لا أرغب في التحدث مع موظف",
    "müşteri temsilcisiyle konuşmak istemiyorum", "gerçek bir insanla konuşmak istemiyorum",
    "人間と話す必要はない",
]  # fmt: skip
# Still requests: the ability negated, with full-width and Arabic question marks too.
STILL_ASKED = [
    "Kann ich nicht mit einem Menschen sprechen？", "Kan ik niet met een mens spreken？",
    "Je ne peux pas parler à quelqu'un ?", "Ne puis-je pas parler à un conseiller ?",
    "Non posso parlare con un operatore?", "Czy nie mogę porozmawiać z konsultantem?",
    "ألا يمكنني التحدث مع موظف؟", "不能转人工吗?", "我要人工客服，不要机器人",
    "müşteri temsilcisi lazım bot istemiyorum", "人間と話したいです。ボットは不要です",
]  # fmt: skip


@pytest.mark.parametrize("text", MISSED + STILL_ASKED)
def test_a_request_is_read(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize("text", FALSE)
def test_a_negated_request_is_none(text: str) -> None:
    assert not asks_for_person(text)


# Pieces of the patterns repeated: "話し" could be read two ways at each step (2^n tries: 48
# characters took a second, 10,000 never end), and each Chinese request searched all the text
# before it and matched all the text after it (quadratic: 1 s for 10,000 characters, minutes
# for these 300,000). Each finishes in a few seconds at most now: a hang before, not a timing.
HOSTILE = {
    "ja-hanashi": "人間と" + "話し" * 5_000 + "x",
    "ja-pieces": "人間と" + "お話し相談し電話し" * 1_100 + "x",
    "zh-requests": "别转人工" * 75_000,
    "zh-linked": "不要我转人工x" * 43_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_long_hostile_message_is_read(text: str) -> None:
    asks_for_person(text)
