"""The Chatwoot adapter: Parley as a Chatwoot agent bot.

In: Chatwoot's webhooks (adapters.chatwoot.webhook) on Parley's HTTP host, read by a pure
function (adapters.chatwoot.payloads) into actions done here. Out: the core's answers, each
posted as one outgoing message (Chatwoot has no edits to stream into, so the stream is
collected first), and the desk's events through the bridge (adapters.chatwoot.bridge).

Conversation key: platform "chatwoot", chat id "<account id>:<conversation display id>";
idempotency key: "chatwoot:<account id>:<message id>", so a webhook Chatwoot re-sends is
recorded and answered once, and another Chatwoot's (or account's) message 101 is not taken for
a repeat.

Who has a conversation is the core's desk (bot.handoff); Chatwoot's status is its mirror:
pending or resolved means the bot, open or snoozed a person. Status webhooks move the desk
(an agent opening a conversation takes it; pending or resolved gives it back). A contact's
message carries the conversation's status too: where it disagrees with the desk and is newer
than the desk's last change (a status webhook that never came), the desk follows it first.
A contact's message is always handed to the core: with the bot it is answered; with a person
it is recorded and reaches the agent as a translation note. A photo or a file sent alone is
not read: with the bot the contact is told the bot reads text only, with a person nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from adapters.kit.actions import Ignore
from adapters.kit.split import split_text
from bot import phrases
from bot.conversation.manager import OutputAway
from bot.conversation.sink import still_showing
from bot.errors import AdapterError, ConfigError
from bot.handoff.types import Desk, HandoffError, HandoffState
from bot.outage import Outage
from bot.types import ConversationKey, Incoming

from .bridge import ChatwootBridge, conversation_ref, from_chatwoot
from .client import NOT_APPLIED_STATUS, ChatwootClient, ChatwootError
from .doctor import check_reachable
from .markdown import without_images, without_liquid
from .payloads import (
    PLATFORM,
    Action,
    AgentAnswered,
    AgentReply,
    CustomerAttachment,
    CustomerMessage,
    StatusChange,
)
from .settings import ChatwootSettings
from .webhook import webhook_routes

if TYPE_CHECKING:
    from adapters.kit.runner import AdapterHost

log = logging.getLogger(__name__)

# Chatwoot refuses message content over 150,000 characters (Message validation).
MESSAGE_LIMIT = 150_000
HUMAN_STATUSES = frozenset({"open", "snoozed"})
BOT_STATUSES = frozenset({"pending", "resolved"})
# While Chatwoot is out of reach: one look at it (GET /api) at most this often.
LOOK_S = 2.0
# A status webhook's give-back may wait for the agent's replies (up to delivery_grace_s plus
# lock_ttl_s, 21 s by default). Chatwoot waits 5 s for a webhook's answer and never sends it
# again after a timeout (lib/webhooks/trigger.rb, RestClient `timeout: 5`, the error rescued;
# its agent bot job retries 429 and 500 only): answered within this, the give-back applied by
# the desk once the replies are delivered.
ANSWER_WITHIN_S = 2.0


def create(host: AdapterHost, settings: ChatwootSettings) -> ChatwootAdapter:
    if (problem := settings.missing()) is not None:
        raise ConfigError(problem)
    return ChatwootAdapter(host, settings)


class ChatwootAdapter:
    platform = PLATFORM
    # The help desk itself: agents read every message of the customer in Chatwoot, so the bot
    # says nothing while one has the conversation (bot.conversation.sink.DeskHeld).
    desk_shows_messages: Literal[True] = True

    def __init__(
        self,
        host: AdapterHost,
        settings: ChatwootSettings,
        *,
        client: ChatwootClient | None = None,
    ) -> None:
        self._host = host
        self._settings = settings
        if host.desk is None:
            raise ConfigError("the chatwoot adapter needs the core's handoff desk")
        self._desk: Desk = host.desk
        self.client = client or ChatwootClient(settings)
        self.bridge = ChatwootBridge(self.client)
        # Chatwoot out of reach: answers wait (pending) without a model call, one look at
        # Chatwoot every LOOK_S, until a post goes through.
        self._away = Outage(LOOK_S, meanwhile="answers wait", logger=log, service="Chatwoot")
        # The user whose token Parley posts with (None: an agent bot's token, as meant): its
        # public messages are Parley's answers, never an agent's.
        self._own_user: int | None = None

    async def __aenter__(self) -> Self:
        # Chatwoot answers and takes the token, or start-up ends with one line (exit 3), as
        # for Telegram and Discord: it started with Chatwoot out of reach and said nothing.
        try:
            self._own_user = await check_reachable(self.client, self._settings)
        except BaseException:
            await self.client.aclose()  # __aexit__ is not called when this fails
            raise
        self._desk.attach(self.bridge)
        for route in webhook_routes(self._settings, self.act):
            self._host.http.mount(route)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.aclose()

    async def run(self) -> None:
        """Webhooks arrive on the HTTP host; this input only waits for the stop."""
        await asyncio.Event().wait()

    async def idle(self) -> None:
        await self._host.intake.idle()

    async def is_admin(self, incoming: Incoming) -> bool:
        return False  # one contact per conversation: no groups, no admins

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        """One outgoing message per answer (split only past Chatwoot's limit).

        Chatwoot out of reach, so that it surely created nothing (no connection, 429, 503,
        after the client's retries): OutputAway, the answer stays pending and is made again
        once Chatwoot is back; meanwhile a turn waits without asking the model, but for one
        look at Chatwoot every LOOK_S. Any other failure, or one after a part of a long
        answer was shown, is logged: the answer is recorded, and the log says why it was not
        (all) shown."""
        await self.ensure_reachable(key)
        text = without_liquid(without_images("".join([chunk async for chunk in chunks])))
        if not text.strip():
            return
        ref = conversation_ref(key.chat_id)
        shown = 0
        try:
            for piece in split_text(text, MESSAGE_LIMIT):
                await still_showing()  # a worker paused past its lease posts nothing more
                await self.client.post_message(ref, piece, private=False)
                shown += 1
        except ChatwootError as exc:
            if shown == 0 and not exc.maybe_applied:
                self._away.failed(exc)
                raise OutputAway(PLATFORM) from exc
            log.warning("%s: reply not shown: %s", key, exc)
        except AdapterError as exc:
            log.warning("%s: reply not shown: %s", key, exc)
        else:
            self._away.succeeded()

    async def ensure_reachable(self, key: ConversationKey) -> None:
        """While Chatwoot is out of reach (a post surely failed): OutputAway, so that a turn
        waits without asking the model; one look at Chatwoot (GET /api) every LOOK_S."""
        if not self._away.down:
            return
        if not self._away.should_try():
            raise OutputAway(PLATFORM)
        try:
            status, _ = await self.client.probe("/api")
        except ChatwootError as exc:
            self._away.failed(exc)
            raise OutputAway(PLATFORM) from exc
        if status in NOT_APPLIED_STATUS or status >= 500:
            self._away.failed(ChatwootError(f"chatwoot GET /api: HTTP {status}", status=status))
            raise OutputAway(PLATFORM)

    async def act(self, action: Action) -> None:
        """What a webhook asks for (adapters.chatwoot.webhook calls it before its 200)."""
        if isinstance(action, CustomerMessage):
            try:
                await self._follow_status(action)
            except HandoffError:  # open in Chatwoot before Parley ever saw it: the agents'
                log.debug("%s: not Parley's conversation", action.incoming.key)
                return
            await self._host.intake.submit(action.incoming)
        elif isinstance(action, CustomerAttachment):
            await self._attachment(action)
        elif isinstance(action, AgentReply):
            await self._agent_reply(action)
        elif isinstance(action, AgentAnswered):
            try:
                await self._agent_answered(action)
            except HandoffError:  # a conversation Parley never had: nothing to take
                log.debug("%s: an agent's reply in a conversation Parley never had", action.key)
        elif isinstance(action, StatusChange):
            try:
                await self._status_changed(action)
            except HandoffError:  # a conversation Parley never had: nothing to move
                log.debug("%s: status of a conversation Parley never had", action.key)
        elif isinstance(action, Ignore):
            log.debug("chatwoot webhook ignored: %s", action.reason)

    async def _attachment(self, message: CustomerAttachment) -> None:
        """A photo or a file alone: while the bot has the conversation, one sentence (once a
        window) that it reads text only; while a person has it (or one was asked for),
        nothing: the agent sees the attachment in Chatwoot. Nothing recorded."""
        key = message.incoming.key
        try:
            await self._follow_status(message)
        except HandoffError:  # open in Chatwoot before Parley ever saw it: the agents'
            log.debug("%s: not Parley's conversation", key)
            return
        if (await self._desk.status(key)).state is HandoffState.BOT:
            self._host.intake.notice(message.incoming, phrases.TEXT_ONLY)

    async def _follow_status(self, message: CustomerMessage | CustomerAttachment) -> None:
        key = message.incoming.key
        current = await self._desk.status(key)
        if current.since is not None and message.incoming.sent_at <= current.since:
            return  # a message older than the desk's last change: its status is stale
        # Made at the message's time in Chatwoot, not when Parley reads it: with the webhook
        # delivered late, a status changed in Chatwoot after the message looked older.
        at = message.incoming.sent_at.timestamp()
        if message.status in HUMAN_STATUSES and current.state is HandoffState.BOT:
            await self._desk.take(key, PLATFORM, made_at=at)
        elif message.status in BOT_STATUSES and current.state is HandoffState.HUMAN:
            # Not while waiting: that request is Parley's own, and Chatwoot may not show it yet.
            await self._desk.give_back(key, PLATFORM, made_at=at)

    async def _agent_reply(self, reply: AgentReply) -> None:
        """Answering is taking it (the desk takes it from the queue itself; from the bot,
        here); a reply delivered again changes nothing, even after the agent gave it back.
        Taken at the note's time in Chatwoot (_agent_answered says why)."""
        at = reply.sent_at.timestamp() if reply.sent_at is not None else None
        send = functools.partial(
            self._desk.agent_message, reply.key, reply.text, agent=reply.agent,
            idempotency_key=reply.idempotency_key, made_at=at,
        )  # fmt: skip
        try:
            await send()
        except HandoffError:  # the bot has it (or no one: then take raises as well)
            await self._desk.take(reply.key, reply.agent, made_at=at)
            await send()
            await self._opened(reply.key)

    async def _agent_answered(self, answered: AgentAnswered) -> None:
        """An agent answered the customer in public: answering is taking it, as a `/reply`
        note is, so the bot stops answering (it talked over the agent; Chatwoot itself opens
        a conversation its own bot has when a person answers). Not a word after resolving (the
        conversation is the bot's again), nor a delivery older than the desk's last change."""
        taking = answered.status == "pending" or answered.status in HUMAN_STATUSES
        if answered.user_id == self._own_user or not taking:
            return
        current = await self._desk.status(answered.key)
        if current.state is HandoffState.HUMAN:
            return
        if current.since is not None and answered.sent_at <= current.since:
            return
        # Made at the answer's time in Chatwoot: at Parley's, a resolution made just after the
        # answer and delivered after it (Chatwoot's job queue late) looked older, ignored.
        await self._desk.take(answered.key, answered.agent, made_at=answered.sent_at.timestamp())
        if answered.status == "pending":
            await self._opened(answered.key)

    async def _opened(self, key: ConversationKey) -> None:
        """Mark in Chatwoot a conversation an agent took by answering it: a reply note leaves
        its status `pending`, which the customer's next message carries, and that gave the
        conversation back to the bot, which answered the message meant for the agent (a
        helper's review). A change made in Chatwoot is never mirrored by the bridge, since
        Chatwoot made it; this one Chatwoot did not."""
        try:
            await self.client.toggle_status(conversation_ref(key.chat_id), "open")
        except ChatwootError as exc:
            log.warning("%s: taken by an agent's reply, not marked open in Chatwoot: %s",
                        key, exc)  # fmt: skip

    async def _status_changed(self, change: StatusChange) -> None:
        # Chatwoot sends its webhooks from a job queue and retries them: an update older than
        # one applied (resolved, then a late "open") would overwrite the newer state. A change
        # is checked against the newest time recorded, and records its own, in the change's
        # transaction (one round trip, the row locked); an update that changes nothing only
        # records its time.
        at = change.updated_at
        current = await self._desk.status(change.key)
        agent = change.agent or PLATFORM
        if change.status in BOT_STATUSES and current.state is not HandoffState.BOT:
            await self._desk.give_back(
                change.key, agent, updated_at=at, answer_within_s=ANSWER_WITHIN_S
            )
            return
        if change.status in HUMAN_STATUSES:
            # Opened by an agent while the bot had it; or assigned while waiting for a person.
            # Reassigned in Chatwoot while an agent there has it: the desk's agent (and its
            # audit row) follow Chatwoot's assignee. Unassigned: it stays with the agents, as
            # it was; taken elsewhere (not from Chatwoot): Chatwoot's assignee is not its agent.
            bot_had_it = current.state is HandoffState.BOT
            waiting = current.state is HandoffState.WAITING
            reassigned = (
                current.state is HandoffState.HUMAN
                and from_chatwoot(current.agent)
                and change.agent != current.agent
            )
            if bot_had_it or (change.agent and (waiting or reassigned)):
                await self._desk.take(change.key, agent, updated_at=at)
                return
        if at is None:
            return
        if not await self._desk.newer_update(change.key, at):
            log.debug("%s: a status older than one applied, ignored", change.key)
            return
        # An older update handled at once may have changed the state since it was read (its
        # change made, this one recorded): this one, the newest, is then a change after all.
        if await self._desk.status(change.key) != current:
            await self._status_changed(change)
