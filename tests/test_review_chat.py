"""Hostile review of the chat adapters and the kit: each test failed on the code it fixes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.responses import Response
from telegram import Bot
from telegram.error import RetryAfter

from adapters.telegram.formatting import to_html, to_text
from adapters.telegram.limits import FloodGate
from adapters.telegram.limits import Limits as FloodLimits
from adapters.telegram.split import split_message
from adapters.telegram.stream import ReplyStream, Target
from tests.telegram_api import TOKEN, UNLIMITED, FakeBotApi, Limits, _bad

PRIVATE = 42
GROUP = -1001
# PTB warns about RetryAfter's type each time one is built.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")


@dataclass
class DraftlessApi(FakeBotApi):
    """A Bot API server that refuses sendMessageDraft (an older local Bot API server, or a
    bot Telegram does not give drafts to)."""

    asked: asyncio.Event = field(default_factory=asyncio.Event)

    def _sendMessageDraft(self, params: dict[str, Any]) -> Response:
        self.asked.set()
        return _bad("Bad Request: method is not available")


async def after_first_draft(api: DraftlessApi, first: str, *rest: str) -> AsyncIterator[str]:
    """The model's chunks; the rest once the first one was asked for as a draft."""
    yield first
    await api.asked.wait()
    for chunk in rest:
        yield chunk


async def test_a_refused_draft_does_not_cost_the_answer() -> None:
    api = DraftlessApi(Limits((UNLIMITED, 1.0), (UNLIMITED, 1.0), (UNLIMITED, 1.0)))
    async with api.serving() as base_url, Bot(TOKEN, base_url=base_url) as bot:
        stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=True)
        await stream.play(after_first_draft(api, "The answer", " is", " here."))
    assert api.texts(PRIVATE) == ["The answer is here."]


async def test_a_chat_in_flood_wait_does_not_hold_up_other_chats() -> None:
    # One call at a time for the whole bot (30 chats in flood wait do the same to the
    # default 30 a second); chat 1 is told by Telegram to wait 5 s.
    gate = FloodGate(FloodLimits(overall=1, overall_s=1.0))
    told_to_wait = asyncio.Event()
    tries = {1: 0, 2: 0}

    def call(chat: int) -> Any:
        async def send() -> bool:
            tries[chat] += 1
            if chat == 1 and tries[chat] == 1:
                told_to_wait.set()
                raise RetryAfter(5)
            return True

        return gate.process_request(send, (), {}, "sendMessage", {"chat_id": chat}, None)

    waiting = asyncio.create_task(call(1))
    await told_to_wait.wait()
    other = asyncio.create_task(call(2))
    done, _ = await asyncio.wait({waiting, other}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert done == {other}  # chat 2's call went out while chat 1 waited out its retry_after


# Telegram turns "@username" in a message's text into a mention (MessageEntity "mention"),
# which notifies that member of the group, in plain text and in HTML alike (not in code).
# Only a word character before the at sign prevents it (tdlib's rule): "@@alice" mentions.
_MENTION = re.compile(r"(?<!\w)@[A-Za-z0-9_]")


@pytest.mark.parametrize(
    "markdown",
    [
        "Ask @alice_k and @bob_99 about it.",
        "# @alice_k",
        "> quoted @alice_k\n> ```\n> @bob_99\n> ```",
        "| who |\n| --- |\n| @alice_k |",
        "[@alice_k](https://example.com) and ![@bob_99](https://example.com/a.png)",
        "Ping @@alice_k and @@@bob_99 about it.",  # the last at sign of a run mentions
    ],
)
def test_model_output_pings_no_member_of_a_telegram_group(markdown: str) -> None:
    assert _MENTION.search(to_text(to_html(markdown))) is None


def test_code_and_email_addresses_keep_their_at_sign() -> None:
    rendered = to_text(to_html("Write `@property` or mail a@b.org:\n\n```\n@decorator\n```"))
    assert rendered == "Write @property or mail a@b.org:\n\n@decorator"


async def test_the_plain_text_fallback_pings_no_one() -> None:
    api = FakeBotApi(Limits((UNLIMITED, 1.0), (UNLIMITED, 1.0), (UNLIMITED, 1.0)))
    api.reject_html = True
    async with api.serving() as base_url, Bot(TOKEN, base_url=base_url) as bot:
        stream = ReplyStream(bot, Target(GROUP, None), interval_s=0.0, drafts=False)
        await stream.play(answer("Hey @alice_k, @bob_99: read this."))
    assert api.texts(GROUP) and _MENTION.search(api.texts(GROUP)[-1]) is None


async def answer(*chunks: str) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk


def test_a_cut_never_goes_inside_an_inline_code_span_when_it_need_not() -> None:
    item = "alpha " * 11 + "`alpha alpha alpha`"
    answer = "alpha.\n\n" * 4 + f"1. {item}\n2. {item}"
    pieces = split_message(answer, 120)
    # Each piece's code spans are whole: no backtick left over to pair across the next line.
    assert all(piece.count("`") % 2 == 0 for piece in pieces), pieces
    shown = [to_text(to_html(piece)) for piece in pieces]
    assert all("`" not in text for text in shown)
