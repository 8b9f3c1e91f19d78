"""The Telegram adapter: holds a PTB `Application`, translates updates into `Incoming`
messages for the manager and streams replies back (`deliver`).

Polling (default): `getUpdates` in a loop of our own (not PTB's Updater, which confirms a
batch to Telegram by fetching the next one, before its updates are handled): the offset moves
past an update only once it is recorded, so a crash re-fetches it, and the idempotency key
makes that a no-op if it was recorded after all. Webhook: Parley's HTTP server receives them
(see `webhook`). Both end in `handle_update`, whose return means "recorded in SQL". Every Bot
API call goes through the `FloodGate`.

In groups, changing what the whole chat gets (/keep, /autotranslate with an argument) is for
the group's Telegram admins and the configured admin_ids only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from telegram import BotCommand, ChatMember, Message, ReplyParameters, Update
from telegram.constants import ChatType
from telegram.error import Forbidden, InvalidToken, TelegramError

from bot import phrases
from bot.conversation.manager import ConversationManager
from bot.errors import ConfigError, StorageError
from bot.lru import Lru
from bot.settings import TelegramSettings
from bot.skills.router import parse_command
from bot.types import ConversationKey, Incoming

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
    Observe,
    Submit,
    say,
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
# getUpdates long-polls this long; failures back off up to POLL_RETRY_MAX_S.
POLL_TIMEOUT_S = 30
POLL_RETRY_MAX_S = 60.0
# Commands that change what a whole group gets: admins only when given an argument.
ADMIN_COMMANDS = frozenset({"keep", "autotranslate"})
ADMIN_STATUSES = frozenset({ChatMember.OWNER, ChatMember.ADMINISTRATOR})
ADMIN_CACHE_S = 300.0
ADMIN_CACHE_SIZE = 10_000


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
        # (chat, user) -> (is admin, checked at): getChatMember is asked once per ADMIN_CACHE_S.
        self._admins: Lru[tuple[bool, float]] = Lru(ADMIN_CACHE_SIZE)

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

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        chat_id = int(key.chat_id)
        # In a group the answer quotes the message it answers (who asked what); a private chat
        # has one asker, so it stays unthreaded. The quote is dropped if that message is gone.
        quote = None
        if reply_to and chat_id < 0:
            quote = ReplyParameters(int(reply_to), allow_sending_without_reply=True)
        target = Target(chat_id, int(key.thread_id) if key.thread_id else None, quote)
        s = self._settings
        stream = ReplyStream(self.bot, target, interval_s=s.stream_interval_s, drafts=s.use_drafts)
        await stream.play(chunks)

    async def handle_update(self, update: Update) -> None:
        """Act on one update; returns once a message for the bot is recorded in SQL.
        Raises StorageError when it could not be recorded (the caller lets Telegram retry)."""
        action = translate(update, self.me, self._settings)
        if isinstance(action, Submit):
            if await self._refused(action.incoming, update.message):
                return
            await self._manager.submit(action.incoming)
        elif isinstance(action, Observe):
            await self._manager.observe(action.incoming)
        elif isinstance(action, Fetch):
            await self._submit_document(action)
        elif isinstance(action, Notice):
            self._spawn(self._notify(action))
        elif isinstance(action, AnswerCallback):
            self._spawn(self.bot.answer_callback_query(action.query_id))
        elif isinstance(action, Ignore):
            log.debug("update %d ignored: %s", update.update_id, action.reason)

    async def _refused(self, incoming: Incoming, message: Message | None) -> bool:
        """A group-wide setting changed by someone who is not an admin: refused with a notice."""
        parsed = parse_command(incoming.text)
        if message is None or message.chat.type == ChatType.PRIVATE or parsed is None:
            return False
        name, args = parsed
        if name not in ADMIN_COMMANDS or not args:  # asking for the state is for everyone
            return False
        if await self._is_admin(message.chat.id, int(incoming.user.user_id or 0)):
            return False
        thread = int(incoming.key.thread_id) if incoming.key.thread_id else None
        notice = Notice(message.chat.id, thread, say(message, phrases.ADMINS_ONLY))
        self._spawn(self._notify(notice))
        return True

    async def _is_admin(self, chat_id: int, user_id: int) -> bool:
        if user_id in self._settings.admin_ids:
            return True
        now = asyncio.get_running_loop().time()
        known = self._admins.get((chat_id, user_id))
        if known is not None and now - known[1] < ADMIN_CACHE_S:
            return known[0]
        try:
            member = await self.bot.get_chat_member(chat_id, user_id)
        except TelegramError as exc:
            log.warning("chat %s: admin rights of a user not checked: %s", chat_id, exc)
            return False
        is_admin = member.status in ADMIN_STATUSES
        self._admins.put((chat_id, user_id), (is_admin, now))
        return is_admin

    async def _submit_document(self, fetch: Fetch) -> None:
        try:
            content = await read_document(self.bot, fetch, self._settings.max_document_bytes)
        except Unreadable as exc:
            chat, thread = fetch.incoming.key.chat_id, fetch.incoming.key.thread_id
            self._spawn(self._notify(Notice(int(chat), int(thread) if thread else None, str(exc))))
            return
        except TelegramError as exc:
            log.warning("document %s could not be downloaded: %s", fetch.file_name, exc)
            text = phrases.say(phrases.NO_DOWNLOAD, fetch.incoming.user.language)
            self._spawn(self._notify(Notice(int(fetch.incoming.key.chat_id), None, text)))
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
        """Fetch, record, and only then confirm (the next getUpdates' offset), until cancelled."""
        await self.bot.delete_webhook()  # polling and a webhook exclude each other
        offset: int | None = None
        delay = 1.0
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=offset,
                    timeout=POLL_TIMEOUT_S,
                    allowed_updates=ALLOWED_UPDATES,
                    read_timeout=POLL_TIMEOUT_S + 10,
                )
            except (InvalidToken, Forbidden):
                raise  # the token is wrong or revoked: no retry helps
            except TelegramError as exc:  # network, Conflict (another poller), 5xx, ...
                log.warning("getUpdates failed, retrying in %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_RETRY_MAX_S)
                continue
            delay = 1.0
            for update in updates:
                await self._record(update)
                offset = update.update_id + 1

    async def _record(self, update: Update) -> None:
        """handle_update until the database takes the update (later ones wait: order kept).
        Anything else that goes wrong with one update is logged and the update skipped, so one
        bad update cannot stop a chat's bot."""
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
            except Exception:
                log.exception("update %d could not be handled; skipped", update.update_id)
                return

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
