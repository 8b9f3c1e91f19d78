"""Without a model a plain message gets a sentence for whoever sent it: users on a platform
are told what they can do, never the operator's settings or docs paths; the operator at their
own console (an OperatorFacing sink) is told how to set a model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from adapters.console import ConsoleAdapter, ConsoleSettings
from bot import phrases
from bot.app import Parley
from bot.conversation.sink import OperatorFacing
from bot.settings import Settings
from tests.support_helpers import bearer, data, new_visitor, open_stream, support_worker
from tests.telegram_updates import feed, telegram_stack, text_update

FAST: dict[str, Any] = {"stream_interval_s": 0.05}


def _no_settings(reply: str) -> None:
    assert "PARLEY_" not in reply and "docs/" not in reply


@pytest.mark.parametrize("language", ["en", *phrases.LANGUAGES])
def test_the_users_sentence_names_no_setting_in_any_language(language: str) -> None:
    _no_settings(phrases.say(phrases.NO_MODEL, language))


async def test_telegram_users_get_the_users_sentence_in_their_language(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, None, **FAST) as (_, adapter, api):
        await feed(adapter, text_update(1, 42, "hello there"))
        await feed(adapter, text_update(2, 43, "Hallo, wie geht es dir heute?", language="de"))
        await adapter.idle()
        (english,), (german,) = api.texts(42), api.texts(43)
    assert english == phrases.NO_MODEL
    assert german == "Hier kann ich vorerst nur Befehle ausführen (siehe /help)."
    for reply in (english, german):
        _no_settings(reply)


async def test_a_web_chat_visitor_gets_the_users_sentence_as_a_notice(tmp_path: Path) -> None:
    async with support_worker(f"sqlite+aiosqlite:///{tmp_path}/s.db", redis_url=None) as w:
        site = await w.add_site("shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            async with open_stream(client, visitor["token"]) as stream:
                posted = await client.post(
                    "/v1/messages", headers=bearer(visitor["token"]), json={"text": "hello"}
                )
                assert posted.status_code == 202, posted.text
                events = await stream.until_answers(1)
    shown = [(e.event, data(e)) for e in events if e.event != "message"]
    reply_to = posted.json()["message_id"]  # the history's notice row names it too
    said = {
        "id": f"notice-{reply_to}", "reply_to": reply_to, "text": phrases.NO_MODEL,
        "recorded": True,
    }  # fmt: skip
    assert shown == [("notice", said)]
    _no_settings(phrases.NO_MODEL)


async def test_the_operators_console_is_told_how_to_set_a_model(tmp_path: Path) -> None:
    settings = Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/chat.db"})  # type: ignore[arg-type]
    out = io.StringIO()
    async with Parley(settings) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(), stdin=io.StringIO("hello\n"), stdout=out,
            interactive=False,
        )  # fmt: skip
        facing: OperatorFacing = console  # mypy checks the declaration too
        assert isinstance(facing, OperatorFacing)
        app.intake.register(console.platform, console, ConsoleSettings().access)
        await console.run()
    assert out.getvalue() == phrases.NO_MODEL_SETUP + "\n"
