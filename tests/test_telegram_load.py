"""Many chats streaming long answers at once through the stand-in Bot API, which enforces
Telegram's flood limits: every answer arrives complete, split correctly, and no call is
refused twice for the same limit."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from adapters.telegram.formatting import to_html, to_text
from adapters.telegram.limits import Limits
from adapters.telegram.split import MAX_MESSAGE, split_message, utf16_len
from backends.base import GenerationRequest
from tests.doubles import ScriptedBackend, random_delay
from tests.telegram_api import FakeBotApi
from tests.telegram_updates import feed, mention_update, telegram_stack, text_update

# PTB itself warns about RetryAfter's type each time it builds one.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

PRIVATE = list(range(1, 41))
GROUPS = list(range(-1001, -1011, -1))
VOCABULARY = ["alpha", "beta", "**gamma**", "delta", "epsilon", "`zeta`", "eta", "theta"]


def long_answer(request: GenerationRequest, tokens: int = 3000) -> str:
    seed = int(re.sub(r"\D", "", request.messages[-1].content) or 0)
    rng = random.Random(seed)
    words = []
    for i in range(tokens):
        words.append(rng.choice(VOCABULARY))
        if i % 11 == 10:
            words[-1] += "."
        if i % 77 == 76:
            words[-1] += "\n\n"
    return " ".join(words)


def ask(update_id: int, chat_id: int, text: str) -> dict[str, object]:
    if chat_id > 0:
        return text_update(update_id, chat_id, text)
    return mention_update(update_id, chat_id, f"@parley_bot {text}", user_id=7)


def asked(request: GenerationRequest) -> str:
    """The question of a request, without the name a group's turn opens with."""
    return request.messages[-1].content.removeprefix("Ada: ")


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def assert_delivered_exactly(api: FakeBotApi, chat_id: int, answer: str) -> None:
    shown = api.texts(chat_id)
    pieces = split_message(answer)
    assert shown == [to_text(to_html(p)) for p in pieces]
    assert all(utf16_len(text) <= MAX_MESSAGE for text in shown)
    assert squash(" ".join(shown)) == squash(to_text(to_html(answer)))


def assert_never_refused_twice(api: FakeBotApi) -> None:
    refusals = Counter((call.fingerprint, call.limit) for call in api.rejected)
    assert all(n == 1 for n in refusals.values()), refusals.most_common(3)


async def test_fifty_chats_stream_long_answers_without_flood_errors(tmp_path: Path) -> None:
    backend = ScriptedBackend(long_answer, delay=random_delay(0.002))
    async with telegram_stack(tmp_path, backend) as (_, adapter, api):
        async with asyncio.timeout(300):  # a hang guard; the pace is bench.telegram_bench's
            for n, chat_id in enumerate(PRIVATE + GROUPS):
                await feed(adapter, ask(n + 1, chat_id, f"tell me a story {n}"))
            await adapter.idle()
    # A group's turn reaches the model after its sender's name ("Ada: ..."): keyed without it.
    answers = {asked(r): long_answer(r) for r in backend.requests}
    for n, chat_id in enumerate(PRIVATE + GROUPS):
        assert_delivered_exactly(api, chat_id, answers[f"tell me a story {n}"])
    assert len(split_message(answers["tell me a story 0"])) >= 4
    assert api.drafts[PRIVATE[0]], "private chats stream as drafts"
    assert api.sent("editMessageText", GROUPS[0]), "groups stream by editing"
    assert api.rejected == []  # the FloodGate kept every limit


async def test_retry_after_is_honoured_when_the_server_is_stricter(tmp_path: Path) -> None:
    """The gate allows 4 calls a second per chat, the server 1: every 429 is waited out and
    the same call re-sent, never dropped, never refused twice."""
    backend = ScriptedBackend(lambda r: long_answer(r, 1200), delay=random_delay(0.002))
    loose = Limits(per_chat=4)
    async with telegram_stack(tmp_path, backend, limits=loose, stream_interval_s=0.25) as (
        _,
        adapter,
        api,
    ):
        for n, chat_id in enumerate(PRIVATE[:6] + GROUPS[:2]):
            await feed(adapter, ask(n + 1, chat_id, f"story {n}"))
        await adapter.idle()
        assert adapter.gate.retries_after_429 == len(api.rejected) > 0
    answers = {asked(r): long_answer(r, 1200) for r in backend.requests}
    for n, chat_id in enumerate(PRIVATE[:6] + GROUPS[:2]):
        assert_delivered_exactly(api, chat_id, answers[f"story {n}"])
    assert_never_refused_twice(api)
