"""Real Telegram update payloads, parsed by PTB, driven through the adapter and the real
Parley app (SQLite, scripted backend) to the replies the stand-in Bot API recorded."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.kit.away import MAX_TRIES
from adapters.kit.runner import run_adapters
from backends.base import Chunk, GenerationRequest
from bot.app import Parley
from bot.phrases import NOT_ALLOWED
from bot.settings import load_settings
from tests.doubles import ScriptedBackend
from tests.ports import free_port
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import (
    bot_message,
    feed,
    mention_update,
    message,
    telegram_stack,
    text_update,
    update,
)

FAST: dict[str, Any] = {"stream_interval_s": 0.05}
GROUP = -100123


async def test_private_text_is_answered(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        await feed(adapter, text_update(1, 42, "hello there"))
        await adapter.idle()
        assert api.texts(42) == ["echo: hello there"]
        rows = await app.store.history(1, 10)
        assert [r.content for r in rows] == ["hello there", "echo: hello there"]
        assert [c.method for c in api.calls[:2]] == ["getMe", "setMyCommands"]


async def test_an_update_id_used_before_still_brings_a_new_message(tmp_path: Path) -> None:
    """The Bot API picks the next update_id at random after a week without updates, so a new
    message may come with an update_id an earlier one had. It was taken for that message
    delivered again: recorded as a duplicate and never answered."""
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        await feed(adapter, text_update(5, 42, "before the quiet week"))
        await adapter.idle()
        await feed(adapter, text_update(5, 42, "after it"))  # a new message, the same id
        await feed(adapter, text_update(5, 43, "another chat"))
        await adapter.idle()
        assert api.texts(42) == ["echo: before the quiet week", "echo: after it"]
        assert api.texts(43) == ["echo: another chat"]
        rows = await app.store.history(1, 10)
        assert [r.content for r in rows] == [
            "before the quiet week",
            "echo: before the quiet week",
            "after it",
            "echo: after it",
        ]


async def shown_in_time(api: FakeBotApi, chat: int, count: int) -> list[str]:
    async with asyncio.timeout(60):
        return await api.wait_for_messages(chat, count)


async def test_an_answer_the_bot_api_failed_to_take_is_sent_once_it_is_back(
    tmp_path: Path,
) -> None:
    """The Bot API failing as the answer ended (502s past the flood gate's retries) lost the
    answer: the draft went, no message came, and the turn was recorded as answered."""
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        api.failing["sendMessage"] = 4  # the flood gate's first try and its 3 retries
        await feed(adapter, text_update(1, 42, "hello there"))
        assert await shown_in_time(api, 42, 1) == ["echo: hello there"]
        await adapter.idle()
        assert api.texts(42) == ["echo: hello there"]
        assert [c.status for c in api.calls if c.method == "sendMessage"] == [502] * 4 + [200]
        rows = await app.store.history(1, 10)
        assert [r.content for r in rows] == ["hello there", "echo: hello there"]


async def test_a_chat_the_bot_api_keeps_failing_is_given_up_not_asked_again_and_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """getMe answered while every send to this chat failed: each look let the turn run the
    model again, without end, each answer counted against the user's budget (the review)."""
    monkeypatch.setattr("adapters.telegram.adapter.LOOK_S", 0.2)
    monkeypatch.setattr("adapters.telegram.limits.NETWORK_RETRIES", 0)
    backend = ScriptedBackend()
    async with telegram_stack(tmp_path, backend, **FAST) as (app, adapter, api):
        api.failing.update(sendMessage=10**6, sendMessageDraft=10**6)
        await feed(adapter, text_update(1, 42, "hello there"))
        for _ in range(600):
            if not await app.store.conversations_with_pending():
                break
            await asyncio.sleep(0.1)
        assert await app.store.conversations_with_pending() == []  # given up, settled
        assert len(backend.requests) == MAX_TRIES
        await asyncio.sleep(3 * 0.2 + 2.5)  # more looks and a sweep: nothing runs again
        assert len(backend.requests) == MAX_TRIES


async def test_a_group_answer_cut_by_the_bot_api_is_finished_in_its_message(
    tmp_path: Path,
) -> None:
    """Edits failing mid-answer left the group's message frozen half-written for good."""
    backend = ScriptedBackend(lambda r: "one two three four five six", delay=lambda: 0.3)
    async with telegram_stack(tmp_path, backend, **FAST) as (app, adapter, api):
        api.failing["editMessageText"] = 4
        await feed(adapter, mention_update(1, GROUP, "@parley_bot count", user_id=7))
        async with asyncio.timeout(60):
            await api.until(lambda: bool(api.sent("editMessageText", GROUP)))
        await adapter.idle()
        assert api.texts(GROUP) == ["one two three four five six"]  # the same message
        assert len(api.sent("sendMessage", GROUP)) == 1
        assert len(backend.requests) == 2  # made again once the Bot API answered
        rows = await app.store.history(1, 10)
        assert [r.content for r in rows][-1] == "one two three four five six"


async def test_command_with_our_name_is_stripped_and_another_bots_is_ignored(
    tmp_path: Path,
) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        await feed(adapter, text_update(1, GROUP, "/help@parley_bot", user_id=7))
        await feed(adapter, text_update(2, GROUP, "/help@other_bot", user_id=7))
        await adapter.idle()
        (answer,) = api.texts(GROUP)
        assert "/reset" in answer
        rows = await app.store.history(1, 10)
        assert rows[0].content == "/help"


async def test_group_answers_mentions_and_replies_and_ignores_chatter(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        await feed(adapter, text_update(1, GROUP, "lunch anyone?", user_id=7))
        await feed(adapter, mention_update(2, GROUP, "@parley_bot what is Parley?", user_id=7))
        await adapter.idle()
        reply = text_update(
            3, GROUP, "and why?", user_id=8, reply_to_message=bot_message(GROUP, "earlier")
        )
        await feed(adapter, reply)
        await adapter.idle()
        # The model gets each member's turn after their name (the echo shows it).
        assert api.texts(GROUP) == ["echo: Ada: what is Parley?", "echo: Ada: and why?"]
        stored = [r.content for r in await app.store.history(1, 10)]
        assert "lunch anyone?" not in stored  # a group's chatter is never stored


async def test_a_bare_mention_gets_no_sentence_about_photos(tmp_path: Path) -> None:
    """A bare "@parley_bot" was told the bot cannot read photos, voice messages or stickers."""
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, api):
        await feed(adapter, mention_update(1, GROUP, "@parley_bot", user_id=7))
        await feed(adapter, mention_update(2, GROUP, "@parley_bot hello", user_id=7))
        await adapter.idle()
        assert api.texts(GROUP) == ["echo: Ada: hello"]  # a group's turn after its sender's name


async def test_edits_channel_posts_and_callbacks_get_no_turn(tmp_path: Path) -> None:
    edited = message(42, "hello (edited)", edit_date=1_760_000_100)
    channel = {"message_id": 5, "date": 1, "chat": {"id": -1009, "type": "channel", "title": "N"}}
    callback = {
        "id": "cb-1",
        "from": {"id": 42, "is_bot": False, "first_name": "Ada"},
        "chat_instance": "c",
        "data": "x",
    }
    # A linked channel's post, forwarded by Telegram (777000) into its discussion group.
    forward = message(GROUP, "@parley_bot news", user_id=777000, is_automatic_forward=True,
                      sender_chat={"id": -1009, "type": "channel", "title": "N"},
                      entities=[{"type": "mention", "offset": 0, "length": 11}])  # fmt: skip
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        await feed(adapter, update(1, "edited_message", **edited))
        await feed(adapter, update(2, "channel_post", **channel, text="news"))
        await feed(adapter, update(3, "callback_query", **callback))
        await feed(adapter, update(4, "message", **forward))
        await adapter.idle()
        assert api.sent("sendMessage") == []
        assert [c.params["callback_query_id"] for c in api.sent("answerCallbackQuery")] == ["cb-1"]
        assert await app.store.conversations_with_pending() == []


async def test_photo_gets_one_sentence_on_what_the_bot_reads(tmp_path: Path) -> None:
    photo = [{"file_id": "p1", "file_unique_id": "pu1", "width": 90, "height": 90}]
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, api):
        await feed(adapter, update(1, **message(42, photo=photo)))
        await adapter.idle()
        (notice,) = api.texts(42)
        assert "documents" in notice and "photos" in notice


async def test_document_is_read_and_answered(tmp_path: Path) -> None:
    doc = {
        "file_id": "doc-1",
        "file_unique_id": "u1",
        "file_name": "notes.md",
        "mime_type": "text/markdown",
        "file_size": 30,
    }
    big = {**doc, "file_id": "doc-2", "file_size": 10**9}
    backend = ScriptedBackend()
    async with telegram_stack(tmp_path, backend, **FAST) as (_, adapter, api):
        api.files["doc-1"] = b"# Notes\nThe meeting is on Monday."
        await feed(adapter, update(1, **message(42, document=doc, caption="What day?")))
        await adapter.idle()
        await feed(adapter, update(2, **message(42, document=big)))
        await adapter.idle()
        answer, refusal = api.texts(42)
        # The caption is the user's words; the document follows it fenced, as quoted data
        # (echoed back, the fenced block is a code block: its heading shown as typed).
        asked = "What day?\n\n```document\n# Notes\nThe meeting is on Monday.\n```"
        assert backend.requests[0].messages[-1].content == asked
        assert answer == "echo: What day?\n\n# Notes\nThe meeting is on Monday."
        assert "too large" in refusal


async def test_user_not_allowed_gets_one_polite_sentence(tmp_path: Path) -> None:
    async with telegram_stack(
        tmp_path, ScriptedBackend(), access={"allowed_users": [1], "admins": [5]}, **FAST
    ) as (_app, adapter, api):
        await feed(adapter, text_update(1, 42, "let me in"))
        await feed(adapter, text_update(2, 5, "admin here"))
        await adapter.idle()
        assert api.texts(42) == [NOT_ALLOWED]
        assert api.texts(5) == ["echo: admin here"]


async def test_markdown_becomes_html(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: "**bold** and `a<b`")
    async with telegram_stack(tmp_path, backend, **FAST) as (_, adapter, api):
        await feed(adapter, text_update(1, 42, "one"))
        await adapter.idle()
        assert (
            api.sent("sendMessage", 42)[-1].params["text"] == "<b>bold</b> and <code>a&lt;b</code>"
        )
        assert api.texts(42) == ["bold and a<b"]


async def test_rejected_html_is_resent_as_plain_text(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: "**bold** claim")
    async with telegram_stack(tmp_path, backend, api=FakeBotApi(reject_html=True), **FAST) as (
        _,
        adapter,
        api,
    ):
        await feed(adapter, text_update(1, 42, "one"))
        await adapter.idle()
        assert api.texts(42) == ["**bold** claim"]


async def test_token_never_reaches_the_log(tmp_path: Path, caplog: object) -> None:
    import logging

    caplog.set_level(logging.DEBUG)  # type: ignore[attr-defined]
    # Libraries imported earlier in a run (vLLM's stack) raise these loggers' levels. A handler
    # of the test's own on the loggers that see request URLs keeps every one of their records,
    # whatever an earlier test in the same process did to the root logger's handlers.
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    watched = [logging.getLogger(n) for n in ("httpx", "httpcore", "telegram", "adapters", "bot")]
    for name in ("httpx", "telegram"):
        caplog.set_level(logging.DEBUG, logger=name)  # type: ignore[attr-defined]
    for logger in watched:
        logger.addHandler(handler)
    try:
        async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, _api):
            await feed(adapter, text_update(1, 42, "hi"))
            await adapter.idle()
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    assert "httpx HTTP Request" in own.getvalue()  # the Bot API calls were logged ...
    assert TOKEN not in own.getvalue()  # ... without the token
    assert TOKEN not in caplog.text  # type: ignore[attr-defined]


class GatedBackend(ScriptedBackend):
    """Its first answer waits for `gate`, so the next messages arrive while a turn runs."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        async for chunk in super().stream(request):
            yield chunk


async def test_quick_messages_from_one_chat_are_one_merged_turn(tmp_path: Path) -> None:
    backend = GatedBackend()
    async with telegram_stack(tmp_path, backend, **FAST) as (_, adapter, api):
        await feed(adapter, text_update(1, 42, "one"))
        await backend.entered.wait()
        await feed(adapter, text_update(2, 42, "two"))
        await feed(adapter, text_update(3, 42, "three"))
        backend.gate.set()
        await adapter.idle()
        assert api.texts(42) == ["echo: one", "echo: two\n\nthree"]
        assert len(backend.requests) == 2


async def test_polling_mode_receives_and_answers(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, api):
        api.push_update(text_update(501, 42, "polled"))
        running = asyncio.create_task(adapter._poll())
        try:
            assert await api.wait_for_messages(42, 1) == ["echo: polled"]
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        assert api.sent("deleteWebhook")  # polling and a webhook exclude each other


async def test_polling_skips_an_update_it_cannot_parse_and_goes_on(tmp_path: Path) -> None:
    # An older self-hosted Bot API server sends polls without the fields PTB now requires.
    old_poll = {"id": "p1", "question": "q", "options": [{"text": "a", "voter_count": 0}]}
    unreadable = update(500, **message(42, poll=old_poll))
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, api):
        api.push_update(unreadable)
        api.push_update(text_update(501, 42, "still here"))
        running = asyncio.create_task(adapter.run())
        try:
            assert await api.wait_for_messages(42, 1) == ["echo: still here"]
            assert not running.done()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def test_webhook_mode_serves_on_the_http_host(tmp_path: Path) -> None:
    port = free_port()
    hook = {
        "mode": "webhook",
        "webhook_public_url": "https://bot.example.com/telegram",
        "webhook_secret_token": "hook-secret",
    }
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
            http={"port": port},
            adapters=["telegram"],
            telegram={"token": TOKEN, "base_url": base_url, **FAST, **hook},
        )
        stop = asyncio.Event()
        async with Parley(settings, backend=ScriptedBackend()) as app:
            running = asyncio.create_task(run_adapters(app, ["telegram"], stop=stop))
            try:
                async with httpx.AsyncClient() as client:
                    answer = await _post_when_up(client, f"http://127.0.0.1:{port}/telegram")
                    assert answer.status_code == 200
                    assert await api.wait_for_messages(42, 1) == ["echo: hooked"]
                    health = await client.get(f"http://127.0.0.1:{port}/healthz")
                    assert health.status_code == 200
            finally:
                stop.set()
                await running
        (registered,) = api.sent("setWebhook")
        assert registered.params["url"] == "https://bot.example.com/telegram"


async def _post_when_up(client: httpx.AsyncClient, url: str) -> httpx.Response:
    headers = {"X-Telegram-Bot-Api-Secret-Token": "hook-secret"}
    for _ in range(200):
        try:
            return await client.post(url, json=text_update(9, 42, "hooked"), headers=headers)
        except httpx.ConnectError:
            await asyncio.sleep(0.02)  # the server is still binding its port
    raise AssertionError("webhook server never came up")


@pytest.mark.redis
async def test_workers_of_one_bot_keep_telegrams_limits_together_through_redis(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    api = FakeBotApi()  # one Bot API for both workers, with Telegram's per-chat limit
    core = {"redis": {"url": redis_url, "key_prefix": key_prefix}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        telegram_stack(tmp_path / "a", None, api=api, core=core) as (_, first, _),
        telegram_stack(tmp_path / "b", None, api=api, core=core) as (_, second, _),
    ):
        sends = [w.bot.send_message(42, f"{n}") for n in range(3) for w in (first, second)]
        await asyncio.gather(*sends)
    assert len(api.texts(42)) == 6
    assert api.rejected == []  # each worker alone would have met 429s
