"""The Telegram adapter: holds a PTB `Application`, translates updates into `Incoming`
messages for the core's intake and streams replies back (`deliver`).

Polling (default): `getUpdates` in a loop of our own (not PTB's Updater, which confirms a
batch to Telegram by fetching the next one, before its updates are handled): the offset moves
past an update only once it is recorded, so a crash re-fetches it, and the idempotency key
makes that a no-op if it was recorded after all. Chats are recorded at once, each chat's
updates in order (`polling.Backlog`), so one chat's document stalls no other chat; the offset stops
at the oldest update not yet recorded, and one that getUpdates re-sends while it is in hand is
not taken twice. Updates are fetched as JSON and parsed one by one, so one that PTB cannot
parse (an older Bot API server's shapes) is logged and skipped instead of ending the loop.
Webhook: the route mounts on Parley's HTTP server (`webhook`). Both end in `act`, whose
return means "recorded in SQL". Every Bot API call goes through the `FloodGate`.

Policy (who may talk, admin-only commands, documents, notices) is the core's
(bot.conversation.intake); this adapter answers the one question only the platform can: is
this user an admin of this chat (`getChatMember`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.routing import Route
from telegram import Bot, BotCommand, ChatFullInfo, ChatMember, ReplyParameters, Update
from telegram.error import ChatMigrated, Forbidden, InvalidToken, NetworkError, TelegramError
from telegram.warnings import PTBUserWarning

from adapters.kit.actions import Edit, Ignore, Notice, Observe, Submit
from adapters.kit.away import PlatformWatch
from adapters.kit.http import HttpHost
from bot import phrases
from bot.documents import DocumentSource
from bot.errors import AdapterError, ConfigError, PlatformAway, StorageError
from bot.lru import Lru
from bot.settings import HttpSettings
from bot.skills.router import Command
from bot.storage import keys
from bot.storage.redis_client import client_for
from bot.types import ConversationKey, Incoming

from .build import TelegramApp, build_application, redacting
from .limits import FloodGate, Limits, unreachable
from .moves import FormerChats
from .polling import WINDOW_MAX, Backlog
from .settings import TelegramSettings
from .stream import ReplyStream, Target
from .translate import (
    PLATFORM,
    Action,
    AnswerCallback,
    BotIdentity,
    Fetch,
    Moved,
    Refetch,
    translate,
)
from .webhook import read_update, webhook_route

if TYPE_CHECKING:
    from adapters.kit.runner import AdapterHost

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
STORAGE_RETRY_MAX_S = 30.0
# getUpdates long-polls this long; failures back off up to POLL_RETRY_MAX_S.
POLL_TIMEOUT_S = 30
POLL_RETRY_MAX_S = 60.0
ADMIN_STATUSES = frozenset({ChatMember.OWNER, ChatMember.ADMINISTRATOR})
ADMIN_CACHE_S = 300.0
ADMIN_CACHE_SIZE = 10_000
# Tries of an update that the database refuses while it answers, before it is set aside.
POISON_AFTER = 3
# While the Bot API does not answer, turns wait (no model call) but for one look (getMe)
# this often.
LOOK_S = 5.0


@dataclass(frozen=True, slots=True)
class Received:
    update_id: int
    action: Action


# Telegram's limits on the command menu (setMyCommands).
MENU_DESCRIPTION_MAX = 256


def create(host: AdapterHost, settings: TelegramSettings) -> TelegramAdapter:
    return TelegramAdapter(host, settings)


async def doctor(settings: TelegramSettings) -> str:
    """`parley doctor`: the webhook's path is free on Parley's HTTP server, and the token
    works (getMe)."""
    if settings.token is None:
        raise ConfigError("PARLEY_TELEGRAM__TOKEN is not set")
    if settings.mode == "webhook":
        # The rule `parley run` applies when the route mounts (/healthz, /readyz are taken).
        HttpHost(HttpSettings()).mount(Route(webhook_path(settings), Response()))
    with redacting(settings.token.get_secret_value()):
        bot = Bot(settings.token.get_secret_value(), base_url=settings.base_url)
        try:
            async with bot:  # initialize() calls getMe
                me = bot.bot
        except InvalidToken:
            raise AdapterError("the Bot API refused the token (401 Unauthorized)") from None
        except NetworkError as exc:
            raise AdapterError(f"the Bot API cannot be reached: {unreachable(exc)}") from None
        except TelegramError as exc:  # an answer that is not JSON, a 429 ...
            raise AdapterError(f"getMe failed: {exc.message}") from None
    return f"bot @{me.username} (id {me.id}), {settings.mode}"


def webhook_path(settings: TelegramSettings) -> str:
    """Where Parley's HTTP server takes the webhook's posts: the public URL's path."""
    return urlsplit(settings.webhook_public_url or "").path or "/"


class TelegramAdapter:
    platform = PLATFORM

    def __init__(
        self, host: AdapterHost, settings: TelegramSettings, *, limits: Limits | None = None
    ) -> None:
        if (problem := settings.missing()) is not None:
            raise ConfigError(problem)
        self._host = host
        self._intake = host.intake
        self._settings = settings
        assert settings.token is not None  # missing() said so
        self._token = settings.token.get_secret_value()
        self._redaction = redacting(self._token)
        self._redaction.__enter__()  # building the bot already logs its URL at DEBUG
        # Telegram's limits are per bot: workers of one bot share the windows through Redis.
        self._redis = client_for(host.settings.redis)
        self._bot_id = bot_id = self._token.partition(":")[0]
        prefix = keys.platform_gate(host.settings.redis.key_prefix, "telegram", bot_id)
        self.gate = FloodGate(
            limits, redis=self._redis, key_prefix=prefix,
            retry_after_failure_s=host.settings.redis.retry_after_failure_s,
        )  # fmt: skip
        self.application: TelegramApp = build_application(settings, self.gate)
        self._me: BotIdentity | None = None
        # (chat, user) -> (is admin, checked at): getChatMember is asked once per ADMIN_CACHE_S.
        self._admins: Lru[tuple[bool, float]] = Lru(ADMIN_CACHE_SIZE)
        # update_id -> times the database refused it while answering here (see act_on).
        self._failures: Lru[int] = Lru(ADMIN_CACHE_SIZE)
        self.set_aside = 0
        # Groups that became supergroups: where a late message of theirs goes, and, for
        # groups the access rules name, their old id as a scope.
        rules = settings.access
        self._former = FormerChats([*rules.allowed_chats, *rules.blocked_chats], self._get_chat)
        # The Bot API not answering answers (PlatformAway): turns wait for it.
        self._away = PlatformWatch(
            PLATFORM, self._look, service="Bot API", look_s=LOOK_S, logger=log
        )

    @property
    def bot(self) -> Any:
        return self.application.bot

    @property
    def me(self) -> BotIdentity:
        if self._me is None:
            raise RuntimeError("TelegramAdapter used before start()")
        return self._me

    async def __aenter__(self) -> Self:
        try:
            await self.application.initialize()  # getMe: checks the token
        except InvalidToken:
            self._redaction.__exit__(None, None, None)
            raise AdapterError(
                "the Bot API refused the token (401 Unauthorized): check PARLEY_TELEGRAM__TOKEN"
            ) from None
        except NetworkError as exc:
            self._redaction.__exit__(None, None, None)
            raise AdapterError(f"the Bot API cannot be reached: {unreachable(exc)}") from None
        user = self.application.bot.bot
        self._me = BotIdentity(user.id, user.username or "")
        await self._set_menu(self._host.router.commands)
        if self._settings.mode == "webhook":
            self._host.http.mount(self._webhook_route())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._former.aclose()
            await self.application.shutdown()
            if self._redis is not None:
                await self._redis.aclose()
        finally:
            self._redaction.__exit__(exc_type, exc, tb)

    async def idle(self) -> None:
        """Wait until every turn in this process is answered and every notice sent."""
        await self._intake.idle()

    async def run(self) -> None:
        if self._settings.mode == "webhook":
            await self._await_webhook()
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
        stream = ReplyStream(
            self.bot,
            target,
            interval_s=s.stream_interval_s,
            drafts=s.use_drafts,
            link_previews=s.link_previews,
        )
        try:
            await stream.play(chunks)
        except PlatformAway as exc:
            # Not recorded as shown: the turn waits, and is made again and finished in the
            # messages it showed (if any) once the Bot API answers (adapters.kit.away).
            await self._away.away(key, exc)
            return
        self._away.shown(key)

    async def ensure_reachable(self, key: ConversationKey) -> None:
        """While the Bot API does not answer, a turn waits without asking the model: one look
        (getMe) every LOOK_S (bot.conversation.sink.Reachable)."""
        await self._away.ensure_reachable()

    async def _look(self) -> None:
        await self.bot.get_me()

    def edits_marked(self) -> bool:
        """TellsEdits: an edited_message may be taken before its message is recorded
        (concurrent updates, a document still read)."""
        return True

    async def is_admin(self, incoming: Incoming) -> bool:
        chat_id, user_id = int(incoming.key.chat_id), int(incoming.user.user_id or 0)
        now = asyncio.get_running_loop().time()
        known = self._admins.get((chat_id, user_id))
        if known is not None and now - known[1] < ADMIN_CACHE_S:
            return known[0]
        try:
            member = await self.bot.get_chat_member(chat_id, user_id)
        except ChatMigrated as exc:
            # The group became a supergroup since the command was sent (an update handled
            # late): Telegram refuses the old id, and the supergroup has the group's admins.
            member = await self.bot.get_chat_member(exc.new_chat_id, user_id)
        is_admin = member.status in ADMIN_STATUSES
        self._admins.put((chat_id, user_id), (is_admin, now))
        return is_admin

    async def handle_update(self, update: Update) -> None:
        """Act on one update; returns once a message for the bot is recorded in SQL.
        Raises StorageError when it could not be recorded (the caller lets Telegram retry)."""
        await self.act_on(Received(update.update_id, translate(update, self.me)))

    async def act_on(self, received: Received) -> None:
        """`act`, except that an update the database keeps refusing while it answers is set
        aside (logged and counted) after POISON_AFTER tries, so it blocks no later update: a
        database that is down, by contrast, keeps the update for as long as it takes. The
        tries are counted by every worker of the bot together (in Redis, where configured:
        Telegram re-sends a webhook update to any of them), and by this one where the shared
        count is not to be had."""
        try:
            await self.act(await self._placed(received.action))
        except StorageError:
            if not await self._intake.database_answers():
                raise
            here = (self._failures.get(received.update_id) or 0) + 1
            self._failures.put(received.update_id, here)
            update = f"{self._bot_id}:{received.update_id}"
            failures = max(here, await self._intake.refusals(PLATFORM, update))
            if failures < POISON_AFTER:
                raise
            self.set_aside += 1
            log.error(
                "update %d refused %d times while the database answers; set aside",
                received.update_id,
                failures,
            )

    async def act(self, action: Action) -> None:
        if isinstance(action, Submit):
            await self._intake.submit(action.incoming)
        elif isinstance(action, Observe):
            await self._intake.observe(action.incoming)
        elif isinstance(action, Edit):
            await self._intake.edit(
                action.incoming,
                observed=action.observed,
                edited_at=action.edited_at,
                document=action.document,
            )
        elif isinstance(action, Fetch):
            await self._intake.submit_document(action.incoming, self._document(action))
        elif isinstance(action, Refetch):
            await self._intake.edit_document(
                action.fetch.incoming, self._document(action.fetch), edited_at=action.edited_at
            )
        elif isinstance(action, Notice):
            mb = self._host.settings.documents.max_bytes // 10**6
            self._intake.notice(action.incoming, action.sentence, mb=mb)
        elif isinstance(action, AnswerCallback):
            await self._answer_callback(action.query_id)
        elif isinstance(action, Moved):
            self._former.moved(action.old_chat_id, action.new_chat_id)
            await self._intake.move_chat(PLATFORM, str(action.old_chat_id), str(action.new_chat_id))
        elif isinstance(action, Ignore):
            log.debug("update ignored: %s", action.reason)

    async def _placed(self, action: Action) -> Action:
        """A group's message where the group is now (`_where_now`)."""
        if isinstance(action, Refetch):
            if not action.fetch.incoming.group:
                return action
            incoming = await self._where_now(action.fetch.incoming)
            return dataclasses.replace(
                action, fetch=dataclasses.replace(action.fetch, incoming=incoming)
            )
        if isinstance(action, Submit | Observe | Notice | Edit | Fetch) and action.incoming.group:
            return dataclasses.replace(action, incoming=await self._where_now(action.incoming))
        return action

    async def _where_now(self, incoming: Incoming) -> Incoming:
        """A message of a group that has become a supergroup, handled after Telegram told of
        it (the chats' updates are handled at once, a webhook update comes again), goes to
        the supergroup's conversation, where the group's went, unquoted (the old group's
        message ids mean nothing there). And a supergroup's message has the group's former
        id among its scopes, where the access rules name that id (moves.FormerChats)."""
        chat = int(incoming.key.chat_id)
        if (new := self._former.now(chat)) is not None:
            key = ConversationKey(PLATFORM, str(new), incoming.key.thread_id)
            incoming = dataclasses.replace(incoming, key=key, platform_message_id="")
            chat = new
        former = await self._former.of(chat)
        if not former:
            return incoming
        return dataclasses.replace(incoming, scopes=(*incoming.scopes, *former))

    async def _get_chat(self, chat_id: int) -> ChatFullInfo:
        chat: ChatFullInfo = await self.bot.get_chat(chat_id)
        return chat

    def read_webhook_body(self, body: bytes) -> Received:
        """A webhook body as an action; MalformedUpdate when it is not a readable update."""
        return Received(*read_update(body, self.bot, self.me))

    def _document(self, fetch: Fetch) -> DocumentSource:
        async def download() -> bytes:
            file = await self.bot.get_file(fetch.file_id)
            return bytes(await file.download_as_bytearray())

        return DocumentSource(fetch.file_name, fetch.mime_type, fetch.size, download)

    async def _answer_callback(self, query_id: str) -> None:
        try:
            await self.bot.answer_callback_query(query_id)
        except TelegramError as exc:  # an old button: nothing to stop spinning
            log.info("callback query not answered: %s", exc)

    async def _set_menu(self, commands: Sequence[Command]) -> None:
        """The command menu from the registered commands, in each language Parley speaks
        (Telegram shows the one matching the user's app language, else the default)."""
        for language in ("", *phrases.LANGUAGES):
            menu = [
                BotCommand(c.name, phrases.say(c.summary, language)[:MENU_DESCRIPTION_MAX])
                for c in commands
            ]
            await self.bot.set_my_commands(menu, language_code=language or None)

    def _webhook_route(self) -> Any:
        s = self._settings
        assert s.webhook_public_url is not None and s.webhook_secret_token is not None
        secret = s.webhook_secret_token.get_secret_value()
        return webhook_route(self.read_webhook_body, self.act_on, secret, webhook_path(s))

    async def _await_webhook(self) -> None:
        s = self._settings
        assert s.webhook_public_url is not None and s.webhook_secret_token is not None
        await self.bot.set_webhook(
            s.webhook_public_url,
            secret_token=s.webhook_secret_token.get_secret_value(),
            allowed_updates=ALLOWED_UPDATES,
        )
        await asyncio.Event().wait()  # updates arrive on the HTTP server until we are stopped

    async def _poll(self) -> None:
        """Fetch, record (chats at once, each chat in order), and confirm (the next
        getUpdates' offset) only up to the oldest update not yet recorded, until cancelled."""
        await self.bot.delete_webhook()  # polling and a webhook exclude each other
        # PTB suggests its own get_updates, which parses a batch as a whole: one update it
        # cannot read would fail them all. Its warning about the raw call is silenced.
        warnings.filterwarnings(
            "ignore", message=r".*Bot\.getUpdates", category=PTBUserWarning, module=__name__
        )
        backlog = Backlog(self._record)
        delay = 1.0
        try:
            while True:
                try:
                    batch = await self._fetch(backlog.next_offset())
                except (InvalidToken, Forbidden) as exc:
                    raise AdapterError(f"the Bot API refused the token: {exc.message}") from None
                except TelegramError as exc:  # network, Conflict (another poller), 5xx, ...
                    log.warning("getUpdates failed, retrying in %.0f s: %s", delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, POLL_RETRY_MAX_S)
                    continue
                delay = 1.0
                backlog.take(batch, self._parse)
                if backlog.busy:
                    await backlog.settle()
        finally:
            await backlog.aclose()

    async def _fetch(self, offset: int | None) -> list[tuple[int, dict[str, Any]]]:
        """One getUpdates: (update_id, the update as JSON), oldest first."""
        raw = await self.bot.do_api_request(
            "getUpdates",
            api_kwargs={
                "offset": offset,
                "limit": WINDOW_MAX,
                "timeout": POLL_TIMEOUT_S,
                "allowed_updates": ALLOWED_UPDATES,
            },
            read_timeout=POLL_TIMEOUT_S + 10,
        )
        batch: list[tuple[int, dict[str, Any]]] = []
        for data in raw if isinstance(raw, list) else []:
            update_id = data.get("update_id") if isinstance(data, dict) else None
            if not isinstance(update_id, int):
                log.warning("getUpdates returned an entry without an update_id; skipped")
                continue
            batch.append((update_id, data))
        return batch

    def _parse(self, update_id: int, data: dict[str, Any]) -> Update | None:
        """One update alone: None (logged) for a shape this PTB does not know."""
        try:
            return Update.de_json(data, self.bot)
        except Exception as exc:
            log.warning("update %d could not be parsed (%s); skipped", update_id, exc)
            return None

    async def _record(self, update: Update) -> None:
        """handle_update until the database takes the update (the chat's later ones wait:
        order kept). Anything else that goes wrong with one update is logged and the update
        skipped, so one bad update cannot stop a chat's bot."""
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
