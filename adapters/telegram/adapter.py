"""The Telegram adapter: holds a PTB `Application`, translates updates into `Incoming`
messages for the manager and streams replies back (`deliver`).

Polling (default): PTB's updater fetches updates and hands them over one by one. Webhook:
Parley's HTTP server receives them (see `webhook`). Both end in `handle_update`, whose
return means "recorded in SQL". Every Bot API call goes through the `FloodGate`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from telegram import BotCommand, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes, TypeHandler

from bot.conversation.manager import ConversationManager
from bot.errors import ConfigError, StorageError
from bot.settings import TelegramSettings
from bot.types import ConversationKey

from .build import TelegramApp, build_application, redacting
from .documents import Unreadable, read_document, request_text
from .limits import FloodGate, Limits
from .stream import ReplyStream, Target
from .translate import (
    PLATFORM,
    AnswerCallback,
    BotIdentity,
    Fetch,
    Ignore,
    Notice,
    Submit,
    translate,
)
from .webhook import server_for, webhook_app

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("ask", "ask a question"),
    BotCommand("summarize", "summarize a message (reply to it) or the chat"),
    BotCommand("translate", "translate a message (reply to it): /translate de"),
    BotCommand("lang", "set my reply language: /lang fr"),
    BotCommand("reset", "start a fresh conversation"),
    BotCommand("help", "what I can do"),
]
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
STORAGE_RETRY_MAX_S = 30.0


class TelegramAdapter:
    platform = PLATFORM

    def __init__(
        self,
        manager: ConversationManager,
        settings: TelegramSettings,
        *,
        limits: Limits | None = None,
    ) -> None:
        if settings.token is None:
            raise ConfigError("PARLEY_TELEGRAM__TOKEN: required when the telegram adapter runs")
        self._manager = manager
        self._settings = settings
        self._token = settings.token.get_secret_value()
        self._redaction = redacting(self._token)
        self._redaction.__enter__()  # building the bot already logs its URL at DEBUG
        self.gate = FloodGate(limits)
        self.application: TelegramApp = build_application(settings, self.gate)
        self._me: BotIdentity | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def bot(self) -> Any:
        return self.application.bot

    @property
    def me(self) -> BotIdentity:
        if self._me is None:
            raise RuntimeError("TelegramAdapter used before start()")
        return self._me

    async def __aenter__(self) -> TelegramAdapter:
        await self.application.initialize()  # getMe: checks the token
        user = self.application.bot.bot
        self._me = BotIdentity(user.id, user.username or "")
        await self.application.bot.set_my_commands(COMMANDS)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.idle()  # a clean stop lets the answers being written reach their chats
            await self.application.shutdown()
        finally:
            self._redaction.__exit__(exc_type, exc, tb)

    async def idle(self) -> None:
        """Wait until every turn in this process is answered and every notice sent."""
        await self._manager.wait_idle()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run(self) -> None:
        async with self:
            if self._settings.mode == "webhook":
                await self._serve_webhook()
            else:
                await self._poll()

    async def deliver(self, key: ConversationKey, chunks: AsyncIterator[str]) -> None:
        target = Target(int(key.chat_id), int(key.thread_id) if key.thread_id else None)
        s = self._settings
        stream = ReplyStream(self.bot, target, interval_s=s.stream_interval_s, drafts=s.use_drafts)
        await stream.play(chunks)

    async def handle_update(self, update: Update) -> None:
        """Act on one update; returns once a message for the bot is recorded in SQL.
        Raises StorageError when it could not be recorded (the caller lets Telegram retry)."""
        action = translate(update, self.me, self._settings)
        if isinstance(action, Submit):
            await self._manager.submit(action.incoming)
        elif isinstance(action, Fetch):
            await self._submit_document(action)
        elif isinstance(action, Notice):
            self._spawn(self._notify(action))
        elif isinstance(action, AnswerCallback):
            self._spawn(self.bot.answer_callback_query(action.query_id))
        elif isinstance(action, Ignore):
            log.debug("update %d ignored: %s", update.update_id, action.reason)

    async def _submit_document(self, fetch: Fetch) -> None:
        try:
            content = await read_document(self.bot, fetch, self._settings.max_document_bytes)
        except Unreadable as exc:
            chat, thread = fetch.incoming.key.chat_id, fetch.incoming.key.thread_id
            self._spawn(self._notify(Notice(int(chat), int(thread) if thread else None, str(exc))))
            return
        except TelegramError as exc:
            log.warning("document %s could not be downloaded: %s", fetch.file_name, exc)
            self._spawn(self._notify(Notice(int(fetch.incoming.key.chat_id), None, _NO_DOWNLOAD)))
            return
        text = request_text(fetch, content)
        await self._manager.submit(dataclasses.replace(fetch.incoming, text=text))

    async def _notify(self, notice: Notice) -> None:
        try:
            await self.bot.send_message(
                notice.chat_id, notice.text, message_thread_id=notice.thread_id
            )
        except TelegramError as exc:
            log.warning("chat %s: notice not sent: %s", notice.chat_id, exc)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self) -> None:
        app = self.application
        app.add_handler(TypeHandler(Update, self._on_polled))
        app.add_error_handler(self._on_error)
        await app.start()
        updater = app.updater
        assert updater is not None  # built with one in polling mode
        await updater.start_polling(allowed_updates=ALLOWED_UPDATES)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await updater.stop()
            await app.stop()

    async def _on_polled(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        # Polling has already confirmed the update to Telegram: keep it in memory and retry
        # until the database takes it (the updates after it wait, so order is kept).
        delay = 1.0
        while True:
            try:
                await self.handle_update(update)
                return
            except StorageError as exc:
                log.error(
                    "update %d not recorded, retrying in %.0f s: %s", update.update_id, delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX_S)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram update failed", exc_info=context.error)

    async def _serve_webhook(self) -> None:
        s = self._settings
        assert s.webhook_public_url is not None and s.webhook_secret_token is not None
        secret = s.webhook_secret_token.get_secret_value()
        await self.bot.set_webhook(
            s.webhook_public_url, secret_token=secret, allowed_updates=ALLOWED_UPDATES
        )
        path = urlsplit(s.webhook_public_url).path or "/"
        app = webhook_app(self.handle_update, self.bot, secret, path)
        server = server_for(app, s.webhook_listen_host, s.webhook_listen_port)
        serving = asyncio.create_task(server.serve())
        try:
            await asyncio.shield(serving)
        finally:
            server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)


_NO_DOWNLOAD = "I could not download that document from Telegram. Please try again."
