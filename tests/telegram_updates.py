"""Telegram update payloads as the Bot API sends them, and a running Parley + adapter +
stand-in Bot API for tests and the benchmark."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from telegram import Update

from adapters.kit.runner import host_for
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.limits import Limits
from adapters.telegram.settings import TelegramSettings
from bot.app import Parley
from bot.settings import Settings, load_settings
from tests.telegram_api import BOT, TOKEN, FakeBotApi

DATE = 1_760_000_000
_message_ids = itertools.count(1000)


def person(user_id: int, name: str = "Ada", language: str = "en") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": name, "language_code": language}


def chat(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Ada"}
    return {"id": chat_id, "type": "supergroup", "title": "Team"}


def message(
    chat_id: int, text: str | None = None, *, user_id: int = 0, language: str = "en", **more: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": next(_message_ids),
        "date": DATE,
        "chat": chat(chat_id),
        "from": person(user_id or abs(chat_id), language=language),
        **more,
    }
    if text is not None:
        body["text"] = text
        if text.startswith("/"):
            body["entities"] = [
                {"type": "bot_command", "offset": 0, "length": len(text.split()[0])}
            ]
    return body


def update(update_id: int, kind: str = "message", **body: Any) -> dict[str, Any]:
    return {"update_id": update_id, kind: body}


def text_update(update_id: int, chat_id: int, text: str, **more: Any) -> dict[str, Any]:
    return {"update_id": update_id, "message": message(chat_id, text, **more)}


def mention_update(update_id: int, chat_id: int, text: str, user_id: int) -> dict[str, Any]:
    at = text.index("@parley_bot")
    entities = [{"type": "mention", "offset": at, "length": len("@parley_bot")}]
    return {
        "update_id": update_id,
        "message": message(chat_id, text, user_id=user_id, entities=entities),
    }


def bot_message(chat_id: int, text: str) -> dict[str, Any]:
    return {
        "message_id": next(_message_ids),
        "date": DATE,
        "chat": chat(chat_id),
        "from": BOT,
        "text": text,
    }


def settings_for(
    tmp_path: Path, base_url: str, core: dict[str, Any] | None = None, **telegram: Any
) -> Settings:
    """Settings for a test bot; `core` adds core sections (redis, conversation, ...)."""
    return load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
        telegram={"token": TOKEN, "base_url": base_url, **telegram},
        **(core or {}),
    )


@asynccontextmanager
async def telegram_stack(
    tmp_path: Path,
    backend: object | None = None,
    *,
    api: FakeBotApi | None = None,
    limits: Limits | None = None,
    core: dict[str, Any] | None = None,
    **telegram: Any,
) -> AsyncIterator[tuple[Parley, TelegramAdapter, FakeBotApi]]:
    api = api or FakeBotApi()
    async with api.serving() as base_url:
        settings = settings_for(tmp_path, base_url, core, **telegram)
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("telegram")
            assert isinstance(section, TelegramSettings)
            adapter = TelegramAdapter(host_for(app), section, limits=limits)
            app.intake.register("telegram", adapter, section.access)
            async with adapter:
                yield app, adapter, api
                await adapter.idle()


async def feed(adapter: TelegramAdapter, payload: dict[str, Any]) -> None:
    await adapter.handle_update(Update.de_json(payload, adapter.bot))
