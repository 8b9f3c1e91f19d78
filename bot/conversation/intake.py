"""The door every adapter's messages come in by: the core's policy, then the manager.

    submit(incoming)                  allowed?  admin-only command in a group by a non-admin?
                                      -> one notice (rate-limited), nothing recorded
                                      -> else manager.submit (recorded, scheduled)
    submit_document(incoming, doc)    the same, then: recorded already (a repeat), or being
                                      read for a delivery of it in flight -> not
                                      downloaded again; over the rate limit -> recorded as a
                                      stub, never downloaded; too big, unreadable, too slow
                                      -> one sentence; else the message is its caption
                                      and its text, fenced as quoted data
    refusal(incoming)                 why it would be refused now (not allowed, over the
                                      rate limit, counted once), or None; admits: None
    observe(incoming)                 a group message not for the bot: kept where allowed
    move_chat(platform, old, new)     a chat's new id (a group became a supergroup): its
                                      conversations follow it
    notify(incoming, sentence)        a sentence outside a turn, at most one per sender and
                                      rate window, from a bounded set of tasks
    notice(incoming, sentence)        notify, for a message the bot does not take (media it
                                      cannot read): a sender not allowed gets the refusal

Adapters translate events and call these; they hold no product rules (docs/adapters.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from bot import phrases
from bot.documents import DocumentReader, DocumentRefused, DocumentSource
from bot.policy import AccessRules, is_allowed, is_operator
from bot.settings import ConversationSettings
from bot.skills.router import CommandRouter, parse_command
from bot.storage import keys
from bot.storage.base import Cache, Recorded
from bot.text.quoting import fenced_document
from bot.types import Incoming

from .manager import ConversationManager, document_question, not_kept, sender_key
from .sink import Platform, once

log = logging.getLogger(__name__)

# Notices in flight at once; past this a notice is dropped (and counted in the log): a flood
# of refused messages must not become a queue of sends.
MAX_NOTICES_IN_FLIGHT = 64
# A flood of dropped notices is logged once per this many, not once each.
DROPS_PER_LOG_LINE = 100
# How long an update's refusals are remembered: longer than a platform goes on re-sending it
# (Telegram gives up on a webhook update within hours).
REFUSALS_WINDOW_S = 86_400.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Door:
    platform: Platform
    access: AccessRules


class Intake:
    def __init__(
        self,
        manager: ConversationManager,
        cache: Cache,
        router: CommandRouter,
        settings: ConversationSettings,
        documents: DocumentReader,
    ) -> None:
        self._manager = manager
        self._cache = cache
        self._router = router
        self._settings = settings
        self.documents = documents
        self._doors: dict[str, _Door] = {}
        self._notices: set[asyncio.Task[None]] = set()
        self._noticed: set[str] = set()  # senders with a notice in flight
        # Idempotency keys of documents being read and recorded in this process.
        self._reading: dict[str, asyncio.Event] = {}
        self.dropped_notices = 0

    def register(self, name: str, platform: Platform, access: AccessRules) -> None:
        """Attach an adapter: its replies go to `platform`, its senders meet `access`."""
        self._doors[name] = _Door(platform, access)
        self._manager.attach(name, platform)

    async def submit(self, incoming: Incoming, *, quiet: bool = False) -> Recorded | None:
        """Record and schedule an allowed message; None when it was refused. `quiet`: a
        message read back from the platform's log (a backfill) is refused without a word:
        nothing records a refused message, so every later read would say it again."""
        if not await self._admitted(incoming, quiet=quiet):
            return None
        return await self._manager.submit(incoming)

    async def admits(self, incoming: Incoming) -> bool:
        """Whether `incoming` would be taken as a message for the bot now: its sender is
        allowed and within the rate limit (counted once per message, so the `submit` that
        follows does not count it again). For a platform that does something visible before
        submitting (Discord's auto_thread opens a thread): a refused sender gets none."""
        return await self.refusal(incoming) is None

    async def refusal(self, incoming: Incoming) -> str | None:
        """Why `incoming` would not be taken now (`admits`): the sentence that says it
        (phrases.NOT_ALLOWED, phrases.RATE_LIMITED), or None. For a platform that can answer
        the sender alone before submitting (Discord's ephemeral response to a command): the
        `submit(quiet=True)` that follows records what it records for any refused message."""
        if not is_allowed(self._door(incoming).access, incoming):
            return phrases.NOT_ALLOWED
        if await self._manager.over_rate_limit(incoming):
            return phrases.RATE_LIMITED
        return None

    async def observe(self, incoming: Incoming) -> Recorded | None:
        door = self._door(incoming)
        if not is_allowed(door.access, incoming):
            return None  # chatter of someone not allowed: not kept, and no notice
        return await self._manager.observe(incoming)

    async def move_chat(self, platform: str, old_chat_id: str, new_chat_id: str) -> None:
        """A chat with a new id on its platform: see ConversationManager.move_chat."""
        await self._manager.move_chat(platform, old_chat_id, new_chat_id)

    async def edit(
        self,
        incoming: Incoming,
        *,
        observed: bool = False,
        edited_at: datetime | None = None,
        document: str = "",
    ) -> bool:
        """A message its sender edited (`incoming`: the new text, the original's key): see
        ConversationManager.edit. Nothing for a sender not allowed (never recorded), and
        no notice: an edit is never answered."""
        if not is_allowed(self._door(incoming).access, incoming):
            return False
        return await self._manager.edit(
            incoming, observed=observed, edited_at=edited_at, document=document
        )

    async def edit_document(
        self, incoming: Incoming, source: DocumentSource, *, edited_at: datetime | None = None
    ) -> bool:
        """A document's message its sender edited (`incoming.text`: the caption): the
        document is read again, for the edit may have replaced the file (Telegram sends the
        same edit for a new caption and for a new file, and which file a message was recorded
        with is not kept), and its text replaces the message's whole, as an edited text does
        (ConversationManager.edit). A document that cannot be read leaves a stub in place of
        the old one's text, after the question. Not read where no chat message is recorded
        (a document refused, a stub over the rate limit, a document recorded by another
        worker later, a group's kept chatter: its caption is the edit), nor where the read
        failed for the moment (DocumentRefusedForNow: a download that failed, a
        reader too slow or killed by the kernel; the file may be the one recorded: its caption
        is the edit). No notice: an edit is never answered."""
        if not is_allowed(self._door(incoming).access, incoming):
            return False
        key = incoming.idempotency_key
        while (first := self._reading.get(key)) is not None:
            await first.wait()  # its first delivery still being read here
        caption_only = functools.partial(
            self._manager.edit, incoming, edited_at=edited_at, document=source.name
        )
        if not await self._manager.edits_as_chat(incoming):
            return await caption_only()  # nothing to read the file for
        # Counted before the download: over the limit, the message is a stub all the same.
        announced = f"{source.name}\0{source.mime_type}\0{source.size}\0{incoming.text}"
        hit = hashlib.sha256(announced.encode()).hexdigest()[:16]
        if await self._manager.over_edit_limit(incoming, hit):
            return await self._manager.edit(incoming, edited_at=edited_at, over_limit=True)
        asked = document_question(incoming.text, source.name)
        try:
            text = await self.documents.read(source, sender_key(incoming))
        except DocumentRefused as exc:
            if exc.for_the_moment:  # nothing said of the file: the text recorded stays
                return await caption_only(over_limit=False)  # counted above
            unread = not_kept(f"document {source.name!r}, {source.size} bytes,", "not readable")
            limit = self._settings.max_message_chars + 2 + len(unread)
            stub = dataclasses.replace(incoming, text=f"{asked}\n\n{unread}")
            return await self._manager.edit(
                stub, edited_at=edited_at, max_chars=limit, over_limit=False
            )
        message, limit = self._with_document(incoming, asked, text)
        return await self._manager.edit(
            message, edited_at=edited_at, max_chars=limit, over_limit=False
        )

    def _with_document(self, incoming: Incoming, asked: str, text: str) -> tuple[Incoming, int]:
        """`incoming` carrying the question and the document's text, fenced after it, and the
        size limit that allows: a message's cap is for the caption only (and the fence lines
        around the text, two newlines each)."""
        # The document is data, never the user's words: its text travels fenced after the
        # caption (a chat turn's prompt quotes it; a skill takes the fenced block as its
        # material without the fence: bot.text.quoting.unfenced).
        quoted = fenced_document(text)
        extra = len(quoted) - len(text)
        limit = self._settings.max_message_chars + 2 + extra + self.documents.settings.max_chars
        return dataclasses.replace(incoming, text=f"{asked}\n\n{quoted}"), limit

    async def mark_deleted(self, idempotency_key: str) -> None:
        """A message deleted on the platform, before anything looks for it: see
        ConversationManager.mark_deleted."""
        await self._manager.mark_deleted(idempotency_key)

    async def redact(self, idempotency_key: str, *, marked: bool = False) -> bool:
        """A message deleted on the platform after it was recorded: see
        ConversationManager.redact."""
        return await self._manager.redact(idempotency_key, marked=marked)

    async def submit_document(
        self, incoming: Incoming, source: DocumentSource, *, quiet: bool = False
    ) -> Recorded | None:
        """A document for the bot: its text (after the caption) becomes the message.
        `quiet`: as for `submit`, a document refused is not said."""
        if not await self._admitted(incoming, quiet=quiet):
            return None
        key = incoming.idempotency_key
        while (first := self._reading.get(key)) is not None:
            # The same document delivered twice at once (an update redelivered while the
            # first was downloading): the first reads it; this one then finds it recorded.
            await first.wait()
        self._reading[key] = done = asyncio.Event()
        try:
            return await self._read_document(incoming, source, quiet=quiet)
        finally:
            del self._reading[key]
            done.set()

    async def _read_document(
        self, incoming: Incoming, source: DocumentSource, *, quiet: bool
    ) -> Recorded | None:
        if await self._manager.recorded(incoming):
            # A platform's repeat (a replayed gateway event, an update delivered again): its
            # first delivery has the document's text, and its turn. Not downloaded again.
            return await self._manager.submit(incoming, limited=False)
        if await self._manager.over_rate_limit(incoming):
            stub = not_kept(
                f"document {source.name!r}, {source.size} bytes,", "over the rate limit"
            )
            return await self._manager.submit(
                dataclasses.replace(incoming, text=stub), limited=True
            )
        try:
            text = await self.documents.read(source, sender_key(incoming))
        except DocumentRefused as exc:
            if not quiet:
                self.notify(incoming, exc.sentence, **exc.fields)
            return None
        # The document's text met the document caps.
        asked = document_question(incoming.text, source.name)
        message, limit = self._with_document(incoming, asked, text)
        return await self._manager.submit(message, limited=False, max_chars=limit)

    async def refusals(self, platform: str, update: str) -> int:
        """Times the database refused the platform's `update` while answering, this time
        included, counted by every worker (in Redis, where configured: a platform re-sends an
        update to any of them) for REFUSALS_WINDOW_S; 0 where the cache cannot count."""
        return await self._cache.count(keys.refused(platform, update), REFUSALS_WINDOW_S)

    async def seen_before(self, platform: str, update: str, window_s: float) -> bool:
        """Whether a worker saw the platform's `update` before, within `window_s`: this
        delivery is counted (in Redis, where configured: a platform may deliver it again to
        any worker). False where the cache cannot count: telling twice beats not telling."""
        return await self._cache.count(keys.delivered(platform, update), window_s) > 1

    async def database_answers(self) -> bool:
        """Whether the database answers at all (an outage, as opposed to one bad message)."""
        return await self._manager.database_answers()

    async def wait_until_answered(self, recorded: Recorded) -> bool:
        """Wait until the message is answered, by a turn that may have to wait for another
        run's unfinished answer first; False: it was not, in the time such an answer may hold
        its conversation (ConversationManager.wait_answered)."""
        return await self._manager.wait_answered(recorded)

    def notify(self, incoming: Incoming, sentence: str, **fields: object) -> None:
        """Say `sentence` to the sender outside a turn (a refusal, a document that cannot be
        read): at most once per sender and rate window, never queued without bound."""
        sender = sender_key(incoming)
        if sender in self._noticed:  # one at a time per sender: a flood makes no queue
            return
        if len(self._notices) >= MAX_NOTICES_IN_FLIGHT:
            if self.dropped_notices % DROPS_PER_LOG_LINE == 0:
                log.warning("notices dropped: %d in flight", len(self._notices))
            self.dropped_notices += 1
            return
        self._noticed.add(sender)
        self._spawn(self._notify(incoming, sentence, fields), sender)

    def notice(self, incoming: Incoming, sentence: str, **fields: object) -> None:
        """`notify` for a message the bot does not take (a photo, a sticker): a sender not
        allowed, or in a chat the bot must not talk in, gets the refusal their texts get
        instead of a word on what the bot can read."""
        if not is_allowed(self._door(incoming).access, incoming):
            self._manager.observer.refused(incoming.key.platform)
            sentence, fields = phrases.NOT_ALLOWED, {}
        self.notify(incoming, sentence, **fields)

    async def idle(self) -> None:
        """Wait until every turn in this process is answered and every notice sent."""
        await self._manager.wait_idle()
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for the notices in flight (the caller bounds the wait)."""
        while self._notices:
            await asyncio.gather(*self._notices, return_exceptions=True)

    async def _admitted(self, incoming: Incoming, *, quiet: bool = False) -> bool:
        door = self._door(incoming)
        if not is_allowed(door.access, incoming):
            refusal = phrases.NOT_ALLOWED
        elif await self._needs_admin(incoming, door):
            refusal = phrases.ADMINS_ONLY
        else:
            return True
        self._manager.observer.refused(incoming.key.platform)
        if not quiet:
            self.notify(incoming, refusal)
        return False

    async def _needs_admin(self, incoming: Incoming, door: _Door) -> bool:
        """An admin-only command (with arguments, unless it is so always), in a group, from
        someone who is not one."""
        parsed = parse_command(incoming.text)
        if not incoming.group or parsed is None:
            return False
        command = self._router.get(parsed[0])
        if command is None or is_operator(door.access, incoming):
            return False
        if not (command.group_admin_only or (command.admin_only and parsed[1])):
            return False
        try:
            return not await door.platform.is_admin(incoming)
        except Exception as exc:  # the platform could not tell: refuse, never guess "admin"
            log.warning("%s: admin rights not checked: %s", incoming.key, type(exc).__name__)
            return True

    def _door(self, incoming: Incoming) -> _Door:
        door = self._doors.get(incoming.key.platform)
        if door is None:
            raise LookupError(f"no adapter registered for platform {incoming.key.platform!r}")
        return door

    async def _notify(self, incoming: Incoming, sentence: str, fields: dict[str, object]) -> None:
        told = await self._cache.count(
            keys.told(sender_key(incoming)), self._settings.rate_limit_window_s
        )
        if told > 1:  # 0: the cache is unreachable; telling twice beats not telling
            return
        text = phrases.say(sentence, incoming.user.language, **fields)
        try:
            await self._door(incoming).platform.deliver(
                incoming.key, once(text), reply_to=incoming.platform_message_id
            )
        except Exception as exc:
            log.warning("%s: notice not sent: %s", incoming.key, type(exc).__name__)

    def _spawn(self, work: Coroutine[Any, Any, None], sender: str) -> None:
        task = asyncio.create_task(work)
        self._notices.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._notices.discard(finished)
            self._noticed.discard(sender)

        task.add_done_callback(done)
