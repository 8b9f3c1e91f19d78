"""The core's desk (types.Desk): state changes in SQL, then events to the attached bridges.

Each bridge has its own queue and publisher task, so events reach it in the order they
happened and a slow or failing bridge holds up no other. An event is handed on only after its
SQL change committed; a bridge that raises is retried (tenacity, exponential back-off) and,
after the last try, the event is logged as dropped (kind and conversation, never text).

Events live in memory, so a stop or a crash between the SQL change and the delivery loses
them: `start` hands every conversation still waiting for a person its `handoff.requested`
again, to each bridge as it attaches (with the first event's time, so the same event id:
receivers dedupe). Delivery is at least once. Each such request is claimed in SQL by the
first bridge's publisher that would hand it on (HandoffRepository.claim_request): of several
workers starting at once, one hands it on; the others look again every CLAIM_TTL_S and take
it over once its claim lapsed or was let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Protocol, runtime_checkable

from backends.base import estimate_tokens
from bot.budget import outside_turn
from bot.errors import StorageError
from bot.outage import error_types
from bot.storage.base import MessageKind, Store
from bot.types import ConversationKey, Incoming, User, utcnow

from .note import NoteWriter
from .repo import Change, HandoffRepository
from .types import (
    DeskAway,
    DeskBridge,
    DeskEvent,
    EventKind,
    HandoffError,
    HandoffState,
    HandoffStatus,
    Reason,
    reaches,
)

log = logging.getLogger(__name__)

BOT, WAITING, HUMAN = HandoffState.BOT, HandoffState.WAITING, HandoffState.HUMAN
PUBLISH_ATTEMPTS = 5
PUBLISH_WAIT_MAX_S = 5.0
# The longest wait between two tries while a bridge's help desk is away (DeskAway).
AWAY_WAIT_MAX_S = 30.0
# The platform of the users rows agents are recorded under (users.platform).
AGENT_PLATFORM = "desk"
# Prefix of an agent reply's idempotency key, so it never meets a platform's own keys.
AGENT_KEY_PREFIX = "desk:"
# A worker's claim on re-sending an undelivered request at its start holds this long unless
# renewed (every third of it while the worker lives); a request another worker claimed is
# looked at again this often, and taken over once that claim lapsed or was let go.
CLAIM_TTL_S = 30.0
# A help desk's update stamped further ahead of this clock is applied without its time being
# recorded: recorded, a wrong clock's stamp made every later update look older, ignored for
# good (the conversation stuck with the bot or the agents).
DESK_AHEAD_S = 60.0


# A conversation found waiting for a person: (id, key, status, the customer's language).
Found = tuple[int, ConversationKey, HandoffStatus, str]


class HandoffCounter(Protocol):
    def handoff(self, platform: str, reason: str) -> None: ...


class _NoCount:
    def handoff(self, platform: str, reason: str) -> None:
        return None


@runtime_checkable
class Draining(Protocol):
    """A bridge with queues of its own (the webhooks' lanes): the desk's drain waits for them."""

    async def idle(self) -> None: ...


class _Item:
    """One event for every bridge serving it; a handoff request's note is written once, in the
    background (`start`), or when the first bridge needs it."""

    def __init__(
        self,
        event: DeskEvent,
        write: Callable[[DeskEvent], Coroutine[None, None, DeskEvent]] | None = None,
    ) -> None:
        self.event = event
        self._write = write
        self._task: asyncio.Task[DeskEvent] | None = None
        # Bridges still to take it, and whether one gave up on it: a handoff request is
        # marked delivered (handoff_states.request_delivered) once every one took it.
        self.owed = 0
        self.dropped = False
        # A request found waiting at start (CoreDesk.start): its row, and whether this worker
        # claimed it, once asked (False: another worker's; None: delivered meanwhile, gone).
        self.found: Found | None = None
        self.asked = False
        self.claimed: bool | None = None

    def start(self) -> None:
        if self._write is not None and self._task is None:
            # Not the turn's: the note's model call is the desk's, not the customer's budget.
            self._task = asyncio.create_task(
                self._write(self.event), name="parley-note", context=outside_turn()
            )

    async def get(self) -> DeskEvent:
        self.start()
        return self.event if self._task is None else await self._task


def _given_back_later(key: ConversationKey, task: asyncio.Task[HandoffStatus]) -> None:
    """The end of a give-back applied after its caller was answered: nobody else reads it."""
    if task.cancelled():
        log.warning("%s: give-back not applied (this worker stopped first): give the "
                    "conversation back again", key)  # fmt: skip
    elif isinstance(exc := task.exception(), StorageError):
        log.error("%s: give-back not applied: %s; give the conversation back again", key, exc)
    elif exc is not None:
        log.error("%s: give-back not applied", key, exc_info=exc)


class CoreDesk:
    """types.Desk over SQL. `schedule(conversation_id, key)` runs the conversation's turn
    (the manager's): an agent's reply is delivered by it like any answer. `stop_reply(
    conversation_id)` stops the bot's reply being written when an agent takes the
    conversation (on any worker where they share Redis: the manager's `stop_turn`).
    `replies_delivered(conversation_id, key)` waits until the agent replies recorded so far
    were delivered (the manager's `agent_replies_delivered`): a give-back waits for it."""

    def __init__(
        self,
        store: Store,
        repo: HandoffRepository,
        notes: NoteWriter,
        schedule: Callable[[int, ConversationKey], None],
        *,
        counter: HandoffCounter | None = None,
        publish_wait_s: float = 0.2,
        stop_reply: Callable[[int], Awaitable[None]] | None = None,
        replies_delivered: Callable[[int, ConversationKey], Awaitable[bool]] | None = None,
        claim_ttl_s: float = CLAIM_TTL_S,
    ) -> None:
        self._store = store
        self._stop_reply = stop_reply
        self._replies_delivered = replies_delivered
        self.repo = repo
        self._notes = notes
        self._schedule = schedule
        self._counter = counter or _NoCount()
        self._wait_s = publish_wait_s
        self._bridges: list[DeskBridge] = []
        self._queues: list[asyncio.Queue[_Item]] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Handoff requests a bridge queued of its own, waiting for its word that they arrived.
        self._receipts: set[asyncio.Task[None]] = set()
        # The requests of conversations found waiting at start: each bridge gets them on attach.
        self._recovered: list[_Item] = []
        # Who claims those requests (one worker hands each on), for how long; the requests
        # another worker claimed, looked at again until delivered or taken over.
        self._owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._claim_ttl_s = claim_ttl_s
        self._watched: list[Found] = []
        self._claims: asyncio.Task[None] | None = None
        # The conversations of this worker's claimed requests that its help desk cannot take
        # now (out of reach): their claims are not renewed, so another worker may take over.
        self._away: set[int] = set()
        # The bridges (by id) whose help desk was away while events queued behind: those
        # events are checked for a later change before their first try (_superseded).
        self._behind_away: set[int] = set()
        # Give-backs applied after the caller was answered (give_back's answer_within_s).
        self._giving_back: set[asyncio.Task[HandoffStatus]] = set()

    async def start(self) -> None:
        """Read the conversations waiting for a person: their requests may never have been
        handed on (bot/app.py calls this before any adapter attaches its bridge)."""
        for found in await self.repo.waiting():
            self._recovered.append(self._recovered_item(found))
        if self._recovered:
            log.info("%d conversations wait for a person: their requests go out again",
                     len(self._recovered))  # fmt: skip

    def _recovered_item(self, found: Found, *, claimed: bool | None = None) -> _Item:
        cid, key, status, language = found
        since = status.since or utcnow()
        event = DeskEvent(EventKind.REQUESTED, key, cid, status.state, since, reason=status.reason)
        change = Change(status, status, language)
        item = _Item(event, functools.partial(self._with_note, change=change))
        item.found, item.asked, item.claimed = found, claimed is not None, claimed
        return item

    async def _ours(self, item: _Item) -> bool:
        """Whether this worker hands on a request found waiting at its start: claimed in SQL
        by the first of its bridges that would (workers that start at once each found it:
        one hands it on, or agents see its note once per worker; a worker with no bridge for
        it never claims it). Claimed by another worker (or not known: the database away): it
        is looked at again every claim_ttl_s and taken over once that claim lapsed."""
        found = item.found
        if found is None:
            return True
        if not item.asked:
            cid, since = found[0], item.event.at
            try:
                claimed = await self.repo.claim_request(cid, since, self._owner, self._claim_ttl_s)
            except StorageError as exc:
                log.warning("conversation %d: handoff request not claimed: %s", cid, exc)
                claimed = False
            if not item.asked:  # another bridge's publisher may have asked meanwhile
                item.asked, item.claimed = True, claimed
                if claimed is False:
                    self._watched.append(found)
                self._keep_claiming()
        return item.claimed is True

    def _keep_claiming(self) -> None:
        if self._claims is None or self._claims.done():
            self._claims = asyncio.create_task(self._keep_claims(), name="parley-desk-claims")

    async def _keep_claims(self) -> None:
        """Renew this worker's claims while they are undelivered; look again at the requests
        another worker claimed, and hand on those whose claim lapsed (its worker died) or was
        let go (it stopped) before they were delivered."""
        beat = self._claim_ttl_s / 3
        waited = 0.0
        while True:
            await asyncio.sleep(beat)
            waited += beat
            try:
                held = await self.repo.renew_claims(self._owner, self._claim_ttl_s,
                                                    sorted(self._away))  # fmt: skip
                if waited >= self._claim_ttl_s and self._watched:
                    waited = 0.0
                    watched, self._watched = self._watched, []
                    while watched:
                        found = watched.pop(0)
                        try:
                            held += await self._take_over(found)
                        except Exception:  # still watched, all of them
                            self._watched += [found, *watched]
                            raise
            except StorageError as exc:  # the database away: tried again at the next beat
                log.warning("handoff requests' claims not renewed: %s", exc)
                continue
            except Exception:  # not the end of the claims (they would lapse while handed on)
                log.exception("handoff requests' claims not renewed; tried again")
                continue
            if not held and not self._watched and not self._away:
                return

    async def _take_over(self, found: Found) -> int:
        """Claim a request another worker had claimed; 1: claimed and handed to this worker's
        bridges (it stays watched while that claim holds)."""
        item = self._recovered_item(found, claimed=True)
        if not any(_serves(bridge, item.event) for bridge in self._bridges):
            self._watched.append(found)  # no bridge here for it (yet): never claimed here
            return 0
        cid, since = found[0], item.event.at
        try:
            claimed = await self.repo.claim_request(cid, since, self._owner, self._claim_ttl_s)
        except StorageError as exc:  # looked at again next time
            log.warning("conversation %d: handoff request not claimed: %s", cid, exc)
            claimed = False
        if claimed is False:
            self._watched.append(found)
        if not claimed:
            return 0
        self._recovered.append(item)
        for bridge, queue in zip(self._bridges, self._queues, strict=True):
            if _serves(bridge, item.event):
                item.owed += 1
                queue.put_nowait(item)
        self._start_publishers()
        return 1

    # -- types.Desk ------------------------------------------------------------------------

    def reachable(self, key: ConversationKey) -> bool:
        """Whether an agent can get this conversation: some attached bridge puts it before
        one. Without one (no help desk configured for its platform), handing it off would
        leave the customer talking to nobody, so the triggers do not."""
        return any(reaches(bridge, key) for bridge in self._bridges)

    def attach(self, bridge: DeskBridge) -> None:
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._bridges.append(bridge)
        self._queues.append(queue)
        for item in self._recovered:
            if _serves(bridge, item.event):
                item.owed += 1
                queue.put_nowait(item)
        if not queue.empty():
            self._start_publishers()

    async def status(self, key: ConversationKey) -> HandoffStatus:
        # From the database as the writes are (_conversation): a take checks it first (the
        # agent API's 409), and a tombstone's state, the bot's, would let it take from a person.
        # Not on a turn's path: the manager reads the state by the turn's conversation id.
        cid = await self._store.conversation_id(key, fresh=True)
        return await self.repo.status(cid) if cid is not None else HandoffStatus(BOT)

    async def request(
        self, key: ConversationKey, reason: Reason, detail: str = ""
    ) -> HandoffStatus:
        return await self.escalate(await self._conversation(key), key, reason, detail)

    async def take(
        self,
        key: ConversationKey,
        agent: str,
        *,
        updated_at: float | None = None,
        made_at: float | None = None,
    ) -> HandoffStatus:
        cid = await self._conversation(key)
        change = await self.repo.change(
            cid, HUMAN, Reason.AGENT, allowed_from=(BOT, WAITING, HUMAN), agent=agent,
            desk_updated_at=updated_at, record_desk_time=self._recordable(key, updated_at),
            made_at=self._own_time(key, made_at),
        )  # fmt: skip
        if change.changed:
            if self._stop_reply is not None:  # the bot stops answering: its reply too
                await self._stop_reply(cid)
            self._emit(EventKind.TAKEN, key, cid, change.after, agent=agent)
        return change.after

    async def give_back(
        self,
        key: ConversationKey,
        agent: str,
        *,
        updated_at: float | None = None,
        made_at: float | None = None,
        answer_within_s: float | None = None,
    ) -> HandoffStatus:
        cid = await self._conversation(key)
        applying = self._give_back(cid, key, agent, updated_at=updated_at, made_at=made_at)
        if answer_within_s is None:
            return await applying
        # A caller that must answer sooner than the replies may take (a help desk's webhook,
        # whose sender hangs up): the give-back is the desk's own task, never cancelled with
        # the caller; not done in time, it goes on here (idle and aclose wait for it, and a
        # stop ends its wait: the manager's agent_replies_delivered) and the caller gets the
        # conversation's status as it is now.
        task = asyncio.create_task(applying, name="parley-give-back")
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)
        try:
            done, _ = await asyncio.wait({task}, timeout=answer_within_s)
        except asyncio.CancelledError:  # the caller is gone: the give-back goes on
            task.add_done_callback(functools.partial(_given_back_later, key))
            raise
        if task in done:
            return task.result()
        task.add_done_callback(functools.partial(_given_back_later, key))
        return await self.repo.status(cid)

    async def _give_back(
        self,
        cid: int,
        key: ConversationKey,
        agent: str,
        *,
        updated_at: float | None,
        made_at: float | None,
    ) -> HandoffStatus:
        # After the agent's replies sent before it, which their turns deliver (under the
        # conversation's lease, on any worker): applied at once, "back to the bot" reached
        # the visitor's stream and the history before them.
        if self._replies_delivered is not None and not await self._replies_delivered(cid, key):
            log.warning("%s: given back before the agent's replies were delivered (their "
                        "turn is held up); they follow", key)  # fmt: skip
        change = await self.repo.change(
            cid, BOT, Reason.RESOLVED, allowed_from=(WAITING, HUMAN), agent=agent,
            desk_updated_at=updated_at, record_desk_time=self._recordable(key, updated_at),
            made_at=self._own_time(key, made_at),
        )  # fmt: skip
        if change.changed:
            self._emit(EventKind.RETURNED, key, cid, change.after, agent=agent)
        return change.after

    async def newer_update(self, key: ConversationKey, updated_at: float) -> bool:
        cid = await self._conversation(key)
        if not self._recordable(key, updated_at):
            return True
        return await self.repo.newer_update(cid, updated_at)

    @classmethod
    def _own_time(cls, key: ConversationKey, made_at: float | None) -> float | None:
        """A help desk's message's time for a change it asks for; None (this clock's time)
        when stamped too far ahead to be kept (_recordable)."""
        return made_at if made_at is not None and cls._recordable(key, made_at) else None

    @staticmethod
    def _recordable(key: ConversationKey, updated_at: float | None) -> bool:
        """Whether a help desk's update time is kept to order later ones: not when stamped
        over DESK_AHEAD_S ahead of this clock (applied, said in the log)."""
        ahead = 0.0 if updated_at is None else updated_at - utcnow().timestamp()
        if ahead > DESK_AHEAD_S:
            log.warning("%s: a help desk's update stamped %.0f s ahead of this clock: applied, "
                        "not used to order later ones", key, ahead)  # fmt: skip
        return ahead <= DESK_AHEAD_S

    async def agent_message(
        self,
        key: ConversationKey,
        text: str,
        *,
        agent: str,
        idempotency_key: str,
        made_at: float | None = None,
    ) -> int:
        if not text.strip():
            raise HandoffError("an agent's message needs some text")
        cid = await self._conversation(key)
        stored_key = AGENT_KEY_PREFIX + idempotency_key
        found = await self._store.message_by_key(stored_key)
        if found is not None and found.conversation_id == cid:
            # A repeat (a help desk's webhook delivered again) changes no state, whatever the
            # state is now; scheduled, since its first delivery may have been cut by a crash.
            self._schedule(cid, key)
            return found.id
        status = await self.repo.status(cid)
        if status.state is BOT:
            raise HandoffError(f"conversation {key} is with the bot: take it over first")
        if status.state is WAITING:  # replying is taking it
            await self.take(key, agent, made_at=made_at)
        incoming = Incoming(
            key, User(AGENT_PLATFORM, agent, agent), text,
            idempotency_key=stored_key,
        )  # fmt: skip
        recorded = await self._store.record_incoming(
            incoming, kind=MessageKind.AGENT, token_count=estimate_tokens(text)
        )
        # A repeat is scheduled too: its first delivery may have been cut by a crash.
        self._schedule(recorded.conversation_id, key)
        return recorded.message_id

    # -- the core's side -------------------------------------------------------------------

    async def escalate(
        self,
        conversation_id: int,
        key: ConversationKey,
        reason: Reason,
        detail: str = "",
        *,
        language: str | None = None,
        trigger_message_id: int | None = None,
    ) -> HandoffStatus:
        """bot -> waiting, with the note for the agent; nothing when a person has it already.
        `trigger_message_id`: the customer message whose turn asked for a person."""
        change = await self.repo.change(
            conversation_id, WAITING, reason, allowed_from=(BOT,), detail=detail,
            language=language or "", trigger_message_id=trigger_message_id,
        )  # fmt: skip
        if change.changed:
            self._counter.handoff(key.platform, reason.value)
            self._emit(EventKind.REQUESTED, key, conversation_id, change.after, change=change)
        return change.after

    def publish(self, event: DeskEvent, *, change: Change | None = None) -> None:
        """Queue an event for every bridge that serves its platform. With `change` (a
        handoff request), the note is written here, in the background: the customer's turn
        does not wait for a summary, and the bridges still get the events in order."""
        serving = [
            queue
            for bridge, queue in zip(self._bridges, self._queues, strict=True)
            if _serves(bridge, event)
        ]
        if not serving:
            return
        write = functools.partial(self._with_note, change=change) if change is not None else None
        item = _Item(event, write)
        item.owed = len(serving)
        item.start()
        for queue in serving:
            queue.put_nowait(item)
        self._start_publishers()

    async def idle(self) -> None:
        """Wait until every queued event was handed on (or dropped after its tries), and
        delivered by the bridges that queue events of their own."""
        for queue in self._queues:
            await queue.join()
        for bridge in self._bridges:
            if isinstance(bridge, Draining):
                await bridge.idle()
        await asyncio.gather(*self._receipts, return_exceptions=True)
        # Give-backs waiting for the agents' replies, then the events they queue.
        while giving_back := [task for task in self._giving_back if not task.done()]:
            await asyncio.gather(*giving_back, return_exceptions=True)
            for queue in self._queues:
                await queue.join()

    async def aclose(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.idle()
        # A request still without its receipt stays unmarked: the next start sends it again.
        claims = [self._claims] if self._claims is not None else []
        giving_back = list(self._giving_back)  # each says in the log that it was not applied
        for task in [*self._tasks, *self._receipts, *claims, *giving_back]:
            task.cancel()
        await asyncio.gather(
            *self._tasks, *self._receipts, *claims, *giving_back, return_exceptions=True
        )
        self._tasks.clear()
        self._claims = None
        if self._recovered:  # let go: the next start (or a worker watching) hands them on
            try:
                await self.repo.release_claims(self._owner)
            except StorageError as exc:
                log.warning("handoff requests' claims not let go (they lapse): %s", exc)

    async def _with_note(self, event: DeskEvent, change: Change) -> DeskEvent:
        cid, after = event.conversation_id, change.after
        try:
            reason = after.reason or Reason.ASKED
            note = await self._notes.write(cid, reason, after.detail, change.language)
        except Exception:  # the handoff stands without its note; the agent reads the history
            log.exception("conversation %d: handoff note not written", cid)
            return event
        return dataclasses.replace(event, note=note)

    def _emit(
        self,
        kind: EventKind,
        key: ConversationKey,
        conversation_id: int,
        status: HandoffStatus,
        *,
        agent: str = "",
        change: Change | None = None,
    ) -> None:
        event = DeskEvent(
            kind, key, conversation_id, status.state, status.since or utcnow(),
            reason=status.reason, agent=agent,
        )  # fmt: skip
        self.publish(event, change=change)

    async def _conversation(self, key: ConversationKey) -> int:
        # From the database, not this worker's memory: a conversation erased on another
        # worker (a tombstone) must not take a handoff a later erase would not find.
        cid = await self._store.conversation_id(key, fresh=True)
        if cid is None:
            raise HandoffError(f"no conversation {key}")
        return cid

    def _start_publishers(self) -> None:
        while len(self._tasks) < len(self._bridges):
            n = len(self._tasks)
            task = asyncio.create_task(self._publisher(n), name=f"parley-desk-bridge-{n}")
            self._tasks.append(task)

    async def _publisher(self, n: int) -> None:
        bridge, queue = self._bridges[n], self._queues[n]
        while True:
            item = await queue.get()
            try:
                if not await self._ours(item):
                    continue
                event = await item.get()
                behind = id(bridge) in self._behind_away
                if queue.empty():  # the events after this one did not wait
                    self._behind_away.discard(id(bridge))
                if behind and await self._superseded(event):
                    log.info("desk bridge %s: %s for %s not tried: the conversation changed "
                             "while it waited", type(bridge).__name__, event.kind.value,
                             event.key)  # fmt: skip
                    taken: bool | Awaitable[bool] = True
                else:
                    taken = await self._hand_on(bridge, event, item)
                if event.kind is not EventKind.REQUESTED:
                    continue
                if isinstance(taken, bool):
                    await self._request_taken(item, event, taken)
                else:  # queued by the bridge: its receipt says later, the next events go on
                    task = asyncio.create_task(self._on_receipt(item, event, taken))
                    self._receipts.add(task)
                    task.add_done_callback(self._receipts.discard)
            finally:
                queue.task_done()

    async def _on_receipt(self, item: _Item, event: DeskEvent, receipt: Awaitable[bool]) -> None:
        await self._request_taken(item, event, await receipt)

    async def _request_taken(self, item: _Item, event: DeskEvent, taken: bool) -> None:
        """Count a bridge's answer to a handoff request; once every bridge took it, it is
        marked delivered, and a start does not hand it on again (Chatwoot would show its
        note twice). Not marked (the database away): handed on again at the next start."""
        item.owed -= 1
        item.dropped = item.dropped or not taken
        if item.owed > 0 or item.dropped:
            return
        try:
            await self.repo.request_delivered(event.conversation_id, event.at)
        except StorageError as exc:
            log.warning("conversation %d: handoff request not marked delivered: %s",
                        event.conversation_id, exc)  # fmt: skip

    async def _hand_on(
        self, bridge: DeskBridge, event: DeskEvent, item: _Item | None = None
    ) -> bool | Awaitable[bool]:
        """`event` to `bridge`: tried until the help desk took it while it is away (DeskAway:
        it surely did not get it, so trying again shows nothing twice), and PUBLISH_ATTEMPTS
        times on any other failure, then dropped with an error line (False). True: taken;
        or the bridge's receipt, where it delivers from queues of its own. A request this
        worker claimed at its start (`item`) is not held while its help desk is away: the
        claim is left to lapse, and given up (False) once another worker claimed it."""
        claimed = item is not None and item.found is not None
        try:
            return await self._trying(bridge, event, claimed)
        finally:
            if claimed:
                self._away.discard(event.conversation_id)

    async def _trying(
        self, bridge: DeskBridge, event: DeskEvent, claimed: bool
    ) -> bool | Awaitable[bool]:
        name = type(bridge).__name__
        failed = tries = 0  # failures other than DeskAway; every try so far
        away_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                receipt = await bridge.publish(event)
            except DeskAway as exc:
                self._behind_away.add(id(bridge))
                if away_since is None:
                    away_since = loop.time()
                    log.warning(
                        "desk bridge %s: the help desk is out of reach (%s); %s for %s and "
                        "what follows wait, trying again until it is back", name,
                        error_types(exc), event.kind.value, event.key,
                    )  # fmt: skip
                wait = min(self._wait_s * 2 ** min(tries, 16), AWAY_WAIT_MAX_S)
            except Exception as exc:
                failed += 1
                log.warning(
                    "desk bridge %s: %s for %s failed (try %d): %s", name, event.kind.value,
                    event.key, failed, type(exc).__name__,
                )  # fmt: skip
                if failed >= PUBLISH_ATTEMPTS:
                    log.error("desk bridge %s: %s for %s dropped after %d tries", name,
                              event.kind.value, event.key, PUBLISH_ATTEMPTS)  # fmt: skip
                    return False
                wait = min(self._wait_s * 2 ** (failed - 1), PUBLISH_WAIT_MAX_S)
            else:
                if away_since is not None:
                    log.info("desk bridge %s: the help desk is back after %.1fs", name,
                             loop.time() - away_since)  # fmt: skip
                return True if receipt is None else receipt
            tries += 1
            if claimed and away_since is not None:
                self._away.add(event.conversation_id)
                self._keep_claiming()
            await asyncio.sleep(wait)
            if claimed and away_since is not None and await self._claimed_elsewhere(event):
                log.info("desk bridge %s: %s for %s left to the worker that claimed it while "
                         "the help desk was away", name, event.kind.value, event.key)  # fmt: skip
                return False
            if await self._superseded(event):
                log.info("desk bridge %s: %s for %s not tried again: the conversation changed "
                         "since (a resolution wins over a late retry)", name, event.kind.value,
                         event.key)  # fmt: skip
                return True

    async def _claimed_elsewhere(self, event: DeskEvent) -> bool:
        """Whether another worker claimed (or the desk delivered) a request this worker
        claimed at its start and could not hand on; not known (the database away): not."""
        try:
            elsewhere = await self.repo.claimed_elsewhere(
                event.conversation_id, event.at, self._owner
            )
        except StorageError:
            return False
        return elsewhere is not False

    async def _superseded(self, event: DeskEvent) -> bool:
        """Whether a request or a taking being tried again was overtaken by a later change
        of its conversation (an agent resolved it while the help desk was away): trying it
        again would reopen what the agent closed. The state as committed, past the cache; not
        known (the database away): not superseded, tried again as before."""
        if event.kind not in (EventKind.REQUESTED, EventKind.TAKEN):
            return False
        try:
            status, _ = await self.repo.status_and_language(event.conversation_id, fresh=True)
        except StorageError:
            return False
        return status.since is None or status.since > event.at


def _serves(bridge: DeskBridge, event: DeskEvent) -> bool:
    return bridge.platforms is None or event.key.platform in bridge.platforms
