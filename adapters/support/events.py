"""Each conversation's event log: what its SSE streams send, shared by every worker.

    append(conversation, name, data)   -> the event's id ("<ms>-<seq>", increasing)
    read(conversation, after)          the events after that id, oldest first
    waiter(conversation)               a wake-up for a stream waiting for new events
    erase(conversation)

With Redis (`[redis] url`): one Stream per conversation (XADD with MAXLEN ~ events_kept and a
TTL of events_ttl_s, renewed by each append), and one pub/sub channel per deployment. An append
is one script (atomic): the XADDs, the TTL, and a PUBLISH carrying the events with the id of
the event before them. Each worker holds one subscription and hands the events to its own
streams of that conversation; a stream takes them when they follow on from the last id it
sent, and otherwise (a gap, a reconnect with Last-Event-ID, a lost subscription) reads the
Stream with XRANGE after that id. So nothing is lost or repeated, and the usual case costs no
read. Without Redis: the same in this process's memory.

The answer of one turn is appended by one worker at a time (the core's turn lock), so the
order of appends is the order of the answer.

An answer is appended once: its appends carry the delivery's key (`once`, noted in SQL with
the core's delivery before the `answer` event is sent), and an append under a key whose
`answer` is in the log already is refused (AlreadyAnswered), atomically. So an append that
timed out but landed, or a worker killed right after its answer landed, is never followed by
a second answer to the same messages: the next attempt finds the first (`answered`), and the
core records it instead of asking the model again. The `answer` event is kept with its key
(its id and data), so it is found even after MAXLEN trimmed it out of the stream.

A `notice` (said instead of an answer) carries the delivery's key too: the same notice, alone,
under a key it was appended under already is refused (AlreadyNoticed: the visitor has it),
so a notice whose append timed out but landed is not said twice when its turn runs again.
Another notice, or an answer, under that key is appended (the model may answer by then); a
notice does not make the key answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bot.conversation.sink import still_showing
from bot.outage import is_outage
from bot.storage.keys import support_answered, support_events, support_wake

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

# ASCII digits, the whole text: \d takes "١" and $ a trailing newline, which Redis refuses.
EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# Events read per XRANGE; a stream catching up reads again until it has them all.
READ_BATCH = 200
# How long a start waits for the subscription before it goes on without it (RedisEventLog).
SUBSCRIBE_WAIT_S = 5.0
# Seconds the subscription may hear nothing before it asks Redis (PING); twice that without a
# reply and it is taken for lost. It waits for messages with no read timeout (it is idle
# between them), so a Redis that stops answering without closing the connection (frozen, a
# network that drops packets) left it waiting for good, with not a line in the log, and
# every open stream was woken only by its RECHECK_S re-read (an operator's trial).
SILENCE_S = 15.0
# Wake-ups with events a stream keeps before it reads them; past this it reads the log.
MAX_CARRIED_BATCHES = 64
# Conversations whose events the in-memory log keeps (least recently used ones go first).
MEMORY_CONVERSATIONS = 50_000
# Answer keys kept per conversation (only the newest delivery's is ever asked for); past
# this the record starts again.
ANSWER_KEYS_KEPT = 64
# The event that ends an answer, and marks its key answered.
ANSWER = "answer"
# The event said instead of an answer; the same one is not appended twice under one key.
NOTICE = "notice"
# Redis: the answers hash holds, per key, the `answer` event's id (field: the key, as earlier
# releases wrote and read it) and its data (the key and this suffix), and the data of the
# notice appended under it (the key and NOTICE_FIELD): at most this many fields per key.
ANSWER_FIELD = "|answer"
NOTICE_FIELD = "|notice"
FIELDS_PER_KEY = 3


class LogUnreachable(Exception):
    """An append failed because the log (Redis) is out of reach or did not answer in time;
    raised from the driver's error. Events of that append may or may not be in the log."""


class AlreadyAnswered(Exception):
    """An append under an answer key whose `answer` is in the log already: refused, nothing
    appended (an earlier attempt at the same delivery landed; see `EventLog.answered`)."""


class AlreadyNoticed(Exception):
    """An append of a notice alone, under a key the same notice was appended under already:
    refused, nothing appended (an earlier attempt's notice landed; the visitor has it)."""


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    name: str
    data: str  # JSON

    def sse(self) -> bytes:
        return f"id: {self.id}\nevent: {self.name}\ndata: {self.data}\n\n".encode()


def valid_event_id(text: str) -> bool:
    """An id as Redis Streams make them: two unsigned 64-bit numbers."""
    if not EVENT_ID.fullmatch(text):
        return False
    return all(int(part) < 2**64 for part in text.split("-"))


def event_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


class Waiter:
    """Set when a conversation may have new events; cleared by the stream before it reads.
    `closed`: the worker is stopping; the stream ends (its client reconnects elsewhere).
    `batches`: events the wake-up carried, each batch with the id of the event before it,
    so the stream can prove it misses nothing and skip a read (see `take`)."""

    def __init__(self, closed: bool = False) -> None:
        self.event = asyncio.Event()
        self.closed = closed
        self.batches: list[tuple[str, list[Event]]] = []

    def offer(self, previous: str, events: list[Event]) -> None:
        if len(self.batches) >= MAX_CARRIED_BATCHES:  # a slow reader: it reads the log
            self.batches.clear()
        self.batches.append((previous, events))
        self.event.set()

    def take(self, after: str) -> list[Event] | None:
        """The carried events after `after`, if they follow on from it without a gap; None
        when the log must be read (nothing carried, or something may be missing)."""
        batches, self.batches = self.batches, []
        if not batches:
            return None
        taken: list[Event] = []
        current = event_key(after)
        for previous, events in batches:
            keys = [event_key(e.id) for e in events]
            if keys[-1] <= current:
                continue  # already sent
            if event_key(previous) != current and current not in keys:
                return None  # a gap: read the log
            fresh = [e for e, k in zip(events, keys, strict=True) if k > current]
            taken += fresh
            current = keys[-1]
        return taken


class _Waiters:
    def __init__(self) -> None:
        self._by_conversation: dict[str, set[Waiter]] = defaultdict(set)
        self.closed = False

    @contextlib.contextmanager
    def hold(self, conversation: str) -> Any:
        waiter = Waiter(self.closed)
        self._by_conversation[conversation].add(waiter)
        try:
            yield waiter
        finally:
            held = self._by_conversation[conversation]
            held.discard(waiter)
            if not held:
                del self._by_conversation[conversation]

    def wake(self, conversation: str) -> None:
        for waiter in self._by_conversation.get(conversation, ()):
            waiter.event.set()

    def carry(self, conversation: str, previous: str, events: list[Event]) -> None:
        for waiter in self._by_conversation.get(conversation, ()):
            waiter.offer(previous, events)

    def wake_all(self, *, close: bool = False) -> None:
        self.closed = self.closed or close
        for waiters in self._by_conversation.values():
            for waiter in waiters:
                waiter.closed = self.closed
                waiter.event.set()


class EventLog(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def append(
        self,
        conversation: str,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        once: str | None = None,
    ) -> None:
        """Append (name, data) events in order, in one round trip. `once`: the answer's key;
        AlreadyAnswered (nothing appended) when an `answer` under it is in the log, and an
        `answer` among `events` marks it so. AlreadyNoticed (nothing appended) when `events`
        is one `notice`, the same as the one last appended under `once`."""
        ...

    async def answered(self, conversation: str, once: str) -> Event | None:
        """The `answer` event appended under the key `once`, even where the stream no longer
        holds it (trimmed); None: none is kept (none landed, or the log expired or was
        erased)."""
        ...

    async def read(self, conversation: str, after: str | None) -> list[Event]: ...

    async def latest(self, conversation: str) -> str | None:
        """The id of the newest event kept (None: none)."""
        ...

    def waiter(self, conversation: str) -> contextlib.AbstractContextManager[Waiter]: ...

    async def erase(self, conversation: str) -> None: ...

    def end_streams(self) -> None:
        """End every open stream of this worker (it is stopping) and refuse none: a stream
        opened from now on ends after sending what is there."""
        ...


class MemoryEventLog:
    def __init__(self, *, kept: int, ttl_s: float) -> None:
        self._kept = kept
        self._ttl_s = ttl_s
        self._logs: OrderedDict[str, tuple[deque[Event], float]] = OrderedDict()
        # conversation -> answer key -> its `answer` event, and key + NOTICE_FIELD -> its
        # notice: the events themselves, kept after the deque dropped them (as Redis does).
        self._answered: dict[str, dict[str, Event]] = {}
        self._last = (0, 0)
        self._waiters = _Waiters()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    async def append(
        self,
        conversation: str,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        once: str | None = None,
    ) -> None:
        keys = self._answered.get(conversation, {}) if self._live(conversation) is not None else {}
        if once is not None and once in keys:
            raise AlreadyAnswered(once)
        if once is not None and len(events) == 1 and events[0][0] == NOTICE:
            noticed = keys.get(once + NOTICE_FIELD)
            if noticed is not None and noticed.data == json.dumps(events[0][1], ensure_ascii=False):
                raise AlreadyNoticed(once)
        kept, _ = self._logs.pop(conversation, (deque(maxlen=self._kept), 0.0))
        for name, data in events:
            event = Event(self._next_id(), name, json.dumps(data, ensure_ascii=False))
            kept.append(event)
            if once is not None and name in (ANSWER, NOTICE):
                if len(keys) >= 2 * ANSWER_KEYS_KEPT:  # an answer and a notice per key
                    keys = {}
                keys[once if name == ANSWER else once + NOTICE_FIELD] = event
        self._answered[conversation] = keys
        self._logs[conversation] = (kept, time.monotonic() + self._ttl_s)
        while len(self._logs) > MEMORY_CONVERSATIONS:
            gone, _ = self._logs.popitem(last=False)
            self._answered.pop(gone, None)
        self._waiters.wake(conversation)

    async def answered(self, conversation: str, once: str) -> Event | None:
        if self._live(conversation) is None:
            return None
        return self._answered.get(conversation, {}).get(once)

    def _live(self, conversation: str) -> deque[Event] | None:
        """The conversation's events; None: none, or they expired (then dropped, keys too)."""
        found = self._logs.get(conversation)
        if found is None:
            return None
        events, expires = found
        if expires < time.monotonic():
            del self._logs[conversation]
            self._answered.pop(conversation, None)
            return None
        return events

    async def read(self, conversation: str, after: str | None) -> list[Event]:
        events = self._live(conversation)
        if events is None:
            return []
        if after is None:
            return list(events)
        start = event_key(after)
        return [e for e in events if event_key(e.id) > start]

    async def latest(self, conversation: str) -> str | None:
        events = self._live(conversation)
        return events[-1].id if events else None

    def waiter(self, conversation: str) -> contextlib.AbstractContextManager[Waiter]:
        return self._waiters.hold(conversation)  # type: ignore[no-any-return]

    async def erase(self, conversation: str) -> None:
        self._logs.pop(conversation, None)
        self._answered.pop(conversation, None)

    def end_streams(self) -> None:
        self._waiters.wake_all(close=True)


# KEYS[1]: the stream, KEYS[2]: its answers' keys (a hash: key -> the `answer` event's id,
# key|answer -> its data, key|notice -> the data of the notice appended under it); ARGV:
# channel, MAXLEN, TTL, conversation, the appending worker's id, the answer's key ("": none),
# the number of fields kept, then name, data pairs. Returns the id of the event before them,
# the events added, "" (appended) or the id of the `answer` already appended under that key
# (refused: nothing appended), and "" or "notice" (refused: the same notice, alone, was
# appended under that key already).
APPEND_SCRIPT = """
local once = ARGV[6]
if once ~= '' then
  local landed = redis.call('HGET', KEYS[2], once)
  if landed then return {'', {}, landed, ''} end
  if #ARGV == 9 and ARGV[8] == 'notice'
      and redis.call('HGET', KEYS[2], once .. '|notice') == ARGV[9] then
    return {'', {}, '', 'notice'}
  end
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local previous = '0-0'
if #newest > 0 then previous = newest[1][1] end
local added, marks = {}, {}
for i = 8, #ARGV, 2 do
  local name, data = ARGV[i], ARGV[i + 1]
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', name, 'd', data)
  added[#added + 1] = {id, name, data}
  if once ~= '' and name == 'answer' then
    marks[#marks + 1] = once
    marks[#marks + 1] = id
    marks[#marks + 1] = once .. '|answer'
    marks[#marks + 1] = data
  elseif once ~= '' and name == 'notice' then
    marks[#marks + 1] = once .. '|notice'
    marks[#marks + 1] = data
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #marks > 0 then
  if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[7]) then redis.call('DEL', KEYS[2]) end
  redis.call('HSET', KEYS[2], unpack(marks))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
local wake = cjson.encode({c = ARGV[4], p = previous, e = added})
redis.call('PUBLISH', ARGV[1], ARGV[5] .. '|' .. wake)
return {previous, added, '', ''}
"""


class RedisEventLog:
    """`listener`: a client without a read timeout, for the subscription alone."""

    def __init__(
        self, redis: Redis, prefix: str, *, kept: int, ttl_s: int, listener: Redis | None = None
    ) -> None:
        self._redis = redis
        self._listener_client = listener or redis
        self._prefix = prefix
        self._channel = support_wake(prefix)
        self._kept = kept
        self._ttl_s = ttl_s
        self._waiters = _Waiters()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # A warning of the subscription's outage was logged: the next is when it is back.
        self._outage_told = False
        self._append_script = redis.register_script(APPEND_SCRIPT)
        # Marks this worker's wake-ups: its own streams have them already (see append).
        self._me = uuid.uuid4().hex.encode()

    def _key(self, conversation: str) -> str:
        return support_events(self._prefix, conversation)

    def _answers_key(self, conversation: str) -> str:
        return support_answered(self._prefix, conversation)

    async def start(self) -> None:
        """Subscribes; a Redis that is down does not stop the start (a restart during an
        outage crash-looped): the subscription keeps being tried, every stream reads once it
        is up, and answers wait to be appended until Redis is back (nothing is lost)."""
        self._listener = asyncio.create_task(self._listen(), name="parley-support-events")
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT_S):
                await self._subscribed.wait()
        except TimeoutError:
            self._outage_told = True
            log.warning(
                "support events: Redis is not answering; the API starts, and event streams "
                "deliver once the subscription is up"
            )

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def append(
        self,
        conversation: str,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        once: str | None = None,
    ) -> None:
        """XADD, EXPIRE and PUBLISH in one script (atomic): the wake-up carries the events
        and the id of the event before them, so a stream that sent that one needs no read.
        This worker's own streams get the events from the script's answer at once, not a
        round trip later through the subscription (which skips this worker's wake-ups).
        The script refuses an append under an answer key already answered, or the same
        notice again under its key, in the same step (a timed-out append of an earlier
        attempt may land at any moment)."""
        args: list[str | int | bytes] = [
            self._channel, self._kept, self._ttl_s, conversation, self._me, once or "",
            FIELDS_PER_KEY * ANSWER_KEYS_KEPT,
        ]  # fmt: skip
        for name, data in events:
            args += [name, json.dumps(data, ensure_ascii=False)]
        keys = [self._key(conversation), self._answers_key(conversation)]
        previous, added, landed, noticed = await self._append_script(keys=keys, args=args)
        if landed:
            raise AlreadyAnswered(once)
        if noticed:
            raise AlreadyNoticed(once)
        fresh = [Event(_text(i), _text(n), _text(d)) for i, n, d in added]
        self._waiters.carry(conversation, _text(previous), fresh)

    async def read(self, conversation: str, after: str | None) -> list[Event]:
        start = f"({after}" if after is not None else "-"
        events: list[Event] = []
        while True:
            rows = await self._redis.xrange(self._key(conversation), start, "+", count=READ_BATCH)
            for raw_id, fields in rows:
                event_id = raw_id.decode()
                events.append(Event(event_id, fields[b"n"].decode(), fields[b"d"].decode()))
            if len(rows) < READ_BATCH:
                return events
            start = f"({events[-1].id}"

    async def latest(self, conversation: str) -> str | None:
        rows = await self._redis.xrevrange(self._key(conversation), "+", "-", count=1)
        return rows[0][0].decode() if rows else None

    async def answered(self, conversation: str, once: str) -> Event | None:
        """From the answers hash, which keeps the event after MAXLEN trimmed the stream."""
        answers = self._answers_key(conversation)
        landed, data = await self._redis.hmget(answers, [once, once + ANSWER_FIELD])
        if landed is None:
            return None
        event_id = _text(landed)
        if data is not None:
            return Event(event_id, ANSWER, _text(data))
        # Noted by an earlier release, with the id alone: the event is read from the stream.
        rows = await self._redis.xrange(self._key(conversation), event_id, event_id)
        if not rows:  # trimmed: the key goes too, so that the next attempt may answer
            await self._redis.hdel(answers, once)
            return None
        fields = rows[0][1]
        return Event(event_id, fields[b"n"].decode(), fields[b"d"].decode())

    def waiter(self, conversation: str) -> contextlib.AbstractContextManager[Waiter]:
        return self._waiters.hold(conversation)  # type: ignore[no-any-return]

    async def erase(self, conversation: str) -> None:
        await self._redis.delete(self._key(conversation), self._answers_key(conversation))

    def end_streams(self) -> None:
        self._waiters.wake_all(close=True)

    async def _listen(self) -> None:
        """One subscription per worker; reconnects after a failure, and then wakes every
        stream (what was published meanwhile was missed: each stream reads to be sure).
        An outage is one warning line: a subscription lost says so once, and once it is back;
        the tries in between are debug lines (and before the first subscription, `start`
        says it once)."""
        delay = 0.5
        while True:
            try:
                async with self._listener_client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if self._outage_told:
                        log.info("support events: subscription back")
                        self._outage_told = False
                    self._subscribed.set()
                    self._waiters.wake_all()
                    delay = 0.5
                    await self._listen_on(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: streams keep their ids, nothing is lost
                # Before the first subscription, `start` tells of the outage (once).
                quiet = self._outage_told or not self._subscribed.is_set()
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "support events: subscription lost (%s); trying again every %.1f-10 s",
                    type(exc).__name__, delay,
                )  # fmt: skip
                self._outage_told = self._outage_told or self._subscribed.is_set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _listen_on(self, pubsub: PubSub) -> None:
        """Each message published to the channel, until Redis is heard from no more: after
        SILENCE_S of silence it is asked (PING), and a reply not come SILENCE_S later raises
        TimeoutError (the caller subscribes again, on a new connection)."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=SILENCE_S)
            silent = loop.time() - heard
            if message is not None:  # a published message, or the reply to a PING
                heard = loop.time()
                if message.get("type") == "message":
                    self._woken(message["data"])
            elif silent >= 2 * SILENCE_S:
                raise TimeoutError(f"no reply from Redis in {silent:.0f} s")
            elif silent >= SILENCE_S:
                await pubsub.ping()

    def _woken(self, payload: bytes) -> None:
        # "<worker>|<json>"; a worker of an earlier release publishes the JSON alone.
        sender, _, body = payload.partition(b"|") if payload[:1] != b"{" else (b"", b"", payload)
        if sender == self._me:
            return  # appended here: this worker's streams have these events already
        data = json.loads(body)
        events = [Event(str(i), str(n), str(d)) for i, n, d in data["e"]]
        self._waiters.carry(str(data["c"]), str(data["p"]), events)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def build_event_log(
    redis: Redis | None, prefix: str, *, kept: int, ttl_s: int, listener: Redis | None = None
) -> EventLog:
    if redis is None:
        return MemoryEventLog(kept=kept, ttl_s=ttl_s)
    return RedisEventLog(redis, prefix, kept=kept, ttl_s=ttl_s, listener=listener)


RECHECK_S = 5.0  # how often an open stream asks whether its caller may still read it


async def stream(
    log_: EventLog,
    conversation: str,
    after: str | None,
    keepalive_s: float,
    still_allowed: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """The SSE body: the events after `after` (None: after the newest kept, i.e. only new
    ones), then each new one as it is appended, and a `keep-alive` event (no id) when it opens
    and after keepalive_s of silence: proxies close idle connections, and a client that has
    heard nothing for a few intervals knows its connection was dropped without a word (a
    network gone, a laptop that slept) and opens another. It says the interval (`every_s`):
    EventSource hides SSE comments, which earlier releases sent. Every RECHECK_S it asks
    `still_allowed` whether the caller may still read the conversation (a key revoked, a site
    removed, a token expired since the stream opened) and ends when not: the client's
    reconnection is then refused like any other request."""
    keepalive = f'event: keep-alive\ndata: {{"every_s": {keepalive_s:g}}}\n\n'.encode()
    yield b"retry: 2000\n\n" + keepalive
    loop, recheck_s = asyncio.get_running_loop(), RECHECK_S
    checked = written = loop.time()
    with log_.waiter(conversation) as waiter:
        try:
            # The newest id the log had at the last look (the waiter held already, so an
            # append after the look sets it): the log is read only when that id is past the
            # stream's last one, or when a wake-up came without the events it brought. So an
            # idle stream costs one look (XREVRANGE) per RECHECK_S, not a look and a read.
            opened = await log_.latest(conversation) or "0-0"
            if after is None or event_key(after) > event_key(opened):
                # No id: only new events. An id past the newest (made up, or from a log that
                # has expired since) would hide every event until the clock passes it.
                after = opened
            newest: str | None = opened
            while True:
                if loop.time() - checked >= recheck_s:
                    if not await still_allowed():
                        log.info("support events: stream ended, its caller may no longer read")
                        return
                    # A wake-up the subscription missed (another worker's append) shows here:
                    # the newest id is past the stream's, and the log is read below.
                    after, newest = await _below_the_log(log_, conversation, after)
                    checked = loop.time()
                # Set since it was last cleared: an append landed, maybe after the look above
                # (which then did not show it), or the subscription came back and what was
                # published meanwhile is unknown; either way the log is read if nothing
                # carried the events. Cleared before reading: an append from now on sets it.
                woken = waiter.event.is_set()
                waiter.event.clear()
                events = waiter.take(after)
                if events is None and (woken or _past(newest, after)):
                    events = await log_.read(conversation, after)
                    newest = None  # read up to the newest: nothing more is owed until a look
                if events:  # one write for what came together: fewer small TCP segments
                    yield b"".join(event.sse() for event in events)
                    after, written = events[-1].id, loop.time()
                if waiter.closed:
                    return
                now = loop.time()
                # Until the next keep-alive or re-check, whichever comes first; a wake-up in
                # between (a timer a little early) reads nothing, so no re-check is put off.
                quiet = min(keepalive_s - (now - written), recheck_s - (now - checked))
                try:
                    async with asyncio.timeout(max(0.0, quiet)):
                        await waiter.event.wait()
                except TimeoutError:
                    if loop.time() - written >= keepalive_s:
                        yield keepalive
                        written = loop.time()
        except Exception as exc:  # any failure of the log ends the stream alike
            # The log is unreachable: end the stream (never a 500 mid-stream); the client
            # reconnects with the id of the last event it has, and loses nothing.
            log.warning("support events: stream ended, the log is unreachable (%s)", exc)


async def _below_the_log(log_: EventLog, conversation: str, after: str) -> tuple[str, str | None]:
    """`after`, or "0-0" where the log's newest event is older: the log started again (it
    expired, or Redis lost it) while its clock was behind this stream's last id, so none of
    its events was sent here, and reading after that id would send none until the clock
    passed it. With the newest id (None: the log is empty), which is then past "0-0"."""
    newest = await log_.latest(conversation)
    if newest is not None and event_key(newest) < event_key(after):
        return "0-0", newest
    return after, newest


def _past(newest: str | None, after: str) -> bool:
    """Whether the log held an event after `after` at its last look."""
    return newest is not None and event_key(newest) > event_key(after)


class Outbox:
    """One answer's events on their way to the log, in order, without waiting on each other:
    while one append is in flight, the next events gather and go in the following one, with
    consecutive deltas merged (a delta is "the new text", however many pieces it holds). So a
    fast model costs a few round trips per answer, not one per piece, and the first piece
    still leaves at once."""

    def __init__(self, log_: EventLog, conversation: str, *, once: str | None = None) -> None:
        self._log = log_
        self._conversation = conversation
        # The answer's key (EventLog.append): every append from the one it is set on.
        self.once = once
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._sending: asyncio.Task[None] | None = None

    def put(self, name: str, data: dict[str, Any]) -> None:
        """Queue an event; raises what an earlier append raised (LogUnreachable: the log is
        out of reach), so that the answer stops being streamed into nowhere."""
        last = self._pending[-1] if self._pending else None
        if name == "delta" and last is not None and last[0] == "delta":
            last[1]["text"] += data["text"]
        else:
            self._pending.append((name, dict(data)))
        if self._sending is None or self._sending.done():
            if self._sending is not None:
                self._sending.result()  # a failed append fails the answer's delivery
            self._sending = asyncio.create_task(self._send())

    async def close(self) -> None:
        """Wait until every event is appended (raises what an append raised)."""
        while self._sending is not None:
            sending = self._sending
            await sending
            if sending is self._sending:
                self._sending = None

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await still_showing()  # a worker paused past its lease appends no more
                await self._log.append(self._conversation, batch, once=self.once)
            except Exception as exc:
                if is_outage(exc):
                    raise LogUnreachable(type(exc).__name__) from exc
                raise
