"""Telegram's streamer against the stand-in Bot API, which refuses text the way Telegram
does: the answers that used to reach the user as nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from telegram import Bot
from telegram.error import BadRequest

from adapters.telegram.formatting import to_html, to_text
from adapters.telegram.split import split_message
from adapters.telegram.stream import ReplyStream, Target, TelegramSurface
from tests.telegram_api import FakeBotApi, unlimited_bot

PRIVATE = 42
MODEL_PACE_S = 0.02  # between the model's chunks, as a model would write them


async def model(*chunks: str) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(MODEL_PACE_S)


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[FakeBotApi, Bot]]:
    async with unlimited_bot() as pair:
        yield pair


def refused(api: FakeBotApi) -> list[str]:
    """Calls the stand-in answered with 400 (an edit to the same text included: none is made)."""
    return [f"{c.method}: {c.error}" for c in api.calls if c.status == 400]


async def test_an_answer_that_starts_with_a_bare_fence_reaches_the_user(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    api, bot = stand_in
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
    await stream.play(model("```", "python\nprint('hi')\n", "```\n", "Run it."))
    assert api.texts(PRIVATE) == ["print('hi')\nRun it."]
    assert refused(api) == []  # the empty rendering of "```" was never sent


async def test_an_answer_that_starts_with_a_quote_marker_reaches_the_user(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    api, bot = stand_in
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=True)
    await stream.play(model("> ", "Quoted", " words.\n\nMine."))
    assert api.texts(PRIVATE) == ["Quoted words.\n\nMine."]
    assert all(draft.strip() for draft in api.drafts[PRIVATE])
    assert refused(api) == []


async def test_a_piece_that_renders_empty_mid_answer_goes_as_plain_text(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    api, bot = stand_in
    filler = " ".join(["word"] * 818) + "abcd"  # 4093 characters: a piece ends before ">"
    answer = f"{filler}\n\n>\n\n" + "x" * 5000
    pieces = split_message(answer)
    assert pieces[1] == ">" and to_text(to_html(">")) == ""
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
    await stream.play(model(answer))
    assert api.texts(PRIVATE) == [filler, ">", "x" * 4096, "x" * 904]
    assert refused(api) == []


async def test_html_that_telegram_refuses_is_resent_as_plain_text(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    api, bot = stand_in
    api.reject_html = True
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
    await stream.play(model("**bold**", " claim"))
    assert api.texts(PRIVATE) == ["**bold** claim"]


async def test_the_stand_in_takes_more_entities_than_telegram_formats(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    """As Telegram: past 100 formatting entities a message is taken, the rest's formatting
    dropped (TelegramBots #854). ENTITIES_TOO_LONG is Telegram's answer to entities too big in
    all (many long links: telegram-bot-api #165), which `max_entities` stands for."""
    api, bot = stand_in
    await bot.send_message(PRIVATE, "<b>x</b> " * 150, parse_mode="HTML")
    api.max_entities = 100
    with pytest.raises(BadRequest, match="Entities_too_long"):
        await bot.send_message(PRIVATE, "<b>x</b> " * 100 + "<i>y</i>", parse_mode="HTML")
    assert refused(api) == ["sendMessage: Bad Request: ENTITIES_TOO_LONG"]


async def test_an_answer_with_more_than_100_entities_keeps_its_formatting(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    """An answer that bolds each of its 150 items renders as 150 entities. Telegram takes it
    (formatting the first 100); b6c6d10 sent every piece over 100 as bare text, its bold,
    code and code blocks lost, for a refusal Telegram does not make."""
    api, bot = stand_in
    items = [f"- **item {n}**: `fine` @alice\n" for n in range(150)]
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
    await stream.play(model(*items))
    answer = "".join(items).rstrip()
    assert api.texts(PRIVATE) == [to_text(to_html(p)) for p in split_message(answer)]
    modes = {c.params.get("parse_mode") for c in api.sent("sendMessage", PRIVATE)}
    modes |= {c.params.get("parse_mode") for c in api.sent("editMessageText", PRIVATE)}
    assert modes == {"HTML"}
    assert refused(api) == []


async def test_entities_telegram_refuses_as_too_long_go_as_typed_with_their_links(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    """Telegram refuses entities too big in all (many long links) with ENTITIES_TOO_LONG: the
    piece goes again as plain text, as typed. As the text its HTML renders to (b6c6d10) it
    lost every link's URL, which is the answer's content."""
    api, bot = stand_in
    api.max_entities = 3
    answer = "".join(f"[source {n}](https://example.org/{n}) " for n in range(4)).rstrip()
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
    await stream.play(model(answer))
    assert api.texts(PRIVATE) == [answer]
    assert refused(api) == ["sendMessage: Bad Request: ENTITIES_TOO_LONG"]


@pytest.mark.parametrize("drafts", [False, True])
async def test_a_piece_refused_as_entities_too_long_stays_plain_as_it_grows(
    stand_in: tuple[FakeBotApi, Bot], drafts: bool
) -> None:
    """The piece goes plain after ENTITIES_TOO_LONG, and the same piece growing only adds
    entities: each later edit (or draft) of it tried HTML first again, two Bot API calls
    per update, one of them refused. Now it is refused once and goes plain from then on."""
    api, bot = stand_in
    api.max_entities = 3
    links = "".join(f"[source {n}](https://example.org/{n}) " for n in range(4))
    more = ["and ", "then ", "some ", "more."]
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=drafts)
    await stream.play(model(links, *more))
    assert api.texts(PRIVATE) == [links + "".join(more)]
    method = "sendMessageDraft" if drafts else "sendMessage"
    assert refused(api) == [f"{method}: Bad Request: ENTITIES_TOO_LONG"]
    updates = api.sent("editMessageText", PRIVATE) + api.sent("sendMessageDraft", PRIVATE)
    assert updates  # the piece was shown growing, not only once
    assert {c.params.get("parse_mode") for c in updates} == {None}


async def test_a_plain_piece_goes_on_plain_in_its_new_message(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    """A piece refused as ENTITIES_TOO_LONG that goes on in a new message stays plain there:
    a group's message edited as it grew went on in the supergroup the group became, and a
    draft's piece grew as a message once drafts were refused. The new message was not
    remembered as plain (it went plain without a refusal of its own), and its next edit was
    tried as HTML and refused again."""
    api, bot = stand_in
    api.max_entities = 3
    links = "".join(f"[source {n}](https://example.org/{n}) " for n in range(4))
    old, new = -4567, -1004567
    group = TelegramSurface(bot, Target(old, None))
    ref = await group.send(links, plain=False)
    api.migrated[old] = new
    await group.edit(ref, links + "and ", plain=False)  # goes on in the supergroup
    await group.edit(ref, links + "and more.", plain=False)
    private = TelegramSurface(bot, Target(PRIVATE, None))
    await private.draft(links)
    ref = await private.send(links + "and ", plain=False)  # drafts refused: a message now
    await private.edit(ref, links + "and more.", plain=False)
    assert api.texts(new) == api.texts(PRIVATE) == [links + "and more."]
    assert [c.params["chat_id"] for c in api.calls if "ENTITIES_TOO_LONG" in c.error] == [
        old,
        PRIVATE,
    ]


async def test_a_blocked_chat_ends_the_showing_not_the_reading(
    stand_in: tuple[FakeBotApi, Bot],
) -> None:
    api, bot = stand_in
    read: list[str] = []

    async def answer() -> AsyncIterator[str]:
        for chunk in ["one", " two", " three"]:
            read.append(chunk)
            yield chunk

    api.blocked.add(PRIVATE)
    stream = ReplyStream(bot, Target(PRIVATE, None), interval_s=0.0, drafts=False)
    await stream.play(answer())
    assert read == ["one", " two", " three"]
    assert [c.status for c in api.calls if c.method == "sendMessage"] == [403]
